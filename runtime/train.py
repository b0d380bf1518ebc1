"""Training and evaluation (`netspec train`, `netspec eval`). The training loop reads top to bottom:

process group and device → model (init.from, torch.compile, DDP) → data → optimiser and per-step
LR schedule → resume → epochs of [train on every loss term, evaluate every exit, log, checkpoint]
→ the per-exit table (exit, depth, params, FLOPs, top-1, top-5).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from netspec.compiler import Compiled
from netspec.compiler.summary import summarise
from netspec.errors import UserError
from netspec.project import atomic_write
from netspec.solver import LRPolicy
from netspec.spec import MAIN_HEAD, Spec
from netspec.runtime import checkpoint as ckpt
from netspec.runtime import distributed
from netspec.runtime.data import Batches, Dataset, load_dataset
from netspec.runtime.metrics import MetricsLog, Progress, exit_rows, format_exit_table
from netspec.runtime.objective import Objective
from netspec.runtime.plots import plot_curves


@dataclass
class Result:
    """What a finished run leaves: the trained model (unwrapped, on its device), the per-exit rows, the run dir."""

    model: nn.Module
    rows: list[dict]
    run: Path


def train(compiled: Compiled, *, resume: bool = False) -> Result:
    """Train a compiled spec with all its losses, in this process or as one rank of a torchrun job."""
    ctx = distributed.setup(compiled.spec.train.device)
    try:
        return _train(compiled, ctx, resume)
    finally:
        distributed.teardown(ctx)


def _train(compiled: Compiled, ctx: distributed.Context, resume: bool) -> Result:
    spec, cfg = compiled.spec, compiled.spec.train
    say = functools.partial(print, file=sys.stderr, flush=True) if ctx.is_main else _silent
    run = ckpt.run_dir(spec)
    folder = ckpt.checkpoint_dir(spec)
    heads = list(compiled.heads)

    # --- model: the compiled GraphModule, parameters named as in the spec
    raw = compiled.module.to(ctx.device)
    start = ckpt.load_checkpoint(folder / ckpt.LAST, resume=True) if resume else None
    if start is None and spec.init.from_:
        source = Path(spec.init.from_)
        copied, new = ckpt.load_weights(raw, ckpt.load_checkpoint(source)["model"], source,
                                        missing_ok=True, unused_ok=True)
        say(f"init.from {source}: copied {ckpt.layers(copied)}; new: {ckpt.layers(new) or 'none'}")
    net = torch.compile(raw) if cfg.compile else raw
    model = distributed.wrap(net, ctx, cfg.sync_bn)
    objective = Objective(compiled.network)
    autocast = _autocast(ctx, cfg.amp)

    # --- data: whole splits in memory, each rank its shard of every global batch
    if cfg.batch_size % ctx.world_size:
        raise UserError(f"train.batch_size {cfg.batch_size} does not split evenly over {ctx.world_size} processes",
                        f"use a multiple of {ctx.world_size}")
    data = distributed.main_first(ctx, lambda: load_dataset(spec.data, spec.input.shape))
    _check_classes(spec, data)
    train_batches, test_batches = make_batches(spec, data, ctx)
    steps = min(len(train_batches), cfg.steps_per_epoch or len(train_batches))
    if steps == 0:
        raise UserError(f"the training split ({len(data.train_y)} examples) is smaller than one batch of "
                        f"{cfg.batch_size}", "lower train.batch_size, or raise data.train_limit")

    # --- optimiser and learning rate, set every step
    optimizer = cfg.optimizer.build(raw.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.lr_schedule, cfg.optimizer.lr,
                                                                         cfg.epochs, steps))

    # --- resume, or start afresh
    epoch, step, best = 0, 0, -1.0
    if start is not None:
        ckpt.load_weights(raw, start["model"], folder / ckpt.LAST)
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
        epoch, step, best = start["epoch"], start["step"], start["best"]
        if len(start["rng"]) == ctx.world_size:
            ckpt.set_rng_state(start["rng"][ctx.rank])
        else:
            _seed(cfg.seed, ctx.rank, epoch)
            say(f"note: the checkpoint was written by {len(start['rng'])} process(es), this run has "
                f"{ctx.world_size}: random draws (dropout) differ from an uninterrupted run")
        if start["spec_hash"] != compiled.spec_hash:
            say("note: the spec changed since the checkpoint was written; continuing with the new one")
        say(f"resuming {folder / ckpt.LAST}: {epoch} of {cfg.epochs} epochs done, step {step}")
    else:
        _seed(cfg.seed, ctx.rank, 0)
        if (folder / ckpt.LAST).exists():
            say(f"note: starting afresh, replacing the checkpoints in {folder} (use --resume to continue)")

    # --- epochs
    log = MetricsLog(run, keep_until_epoch=epoch)
    progress = Progress(cfg.epochs * steps, epoch * steps, sys.stderr if ctx.is_main else None)
    accuracy = None
    say(f"training {spec.name} for {cfg.epochs} epochs of {steps} steps, batch {cfg.batch_size} on "
        f"{ctx.world_size} × {ctx.device}; run directory {run}")
    for epoch in range(epoch, cfg.epochs):
        model.train()
        train_batches.set_epoch(epoch)
        sums = np.zeros(len(objective.names))
        started = time.perf_counter()
        for i, (x, y) in enumerate(itertools.islice(train_batches, steps)):
            with autocast():
                logits = model(x)
            loss, terms = objective(logits, y, epoch + i / steps)
            values = (distributed.all_sum(ctx, terms) / ctx.world_size).tolist()  # global means, same on every rank
            _stop_if_diverged(objective.names, values, epoch, step, folder)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            sums += values
            progress.step(f"epoch {epoch + 1}/{cfg.epochs}", i + 1, steps, sum(values))
        seconds = time.perf_counter() - started

        distributed.sync_buffers(ctx, raw)
        accuracy = evaluate(net, test_batches, heads, ctx, autocast)
        means = dict(zip(objective.names, (sums / steps).tolist()))
        record = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3),
                  "loss": sum(means.values()), **{f"loss/{k}": v for k, v in means.items()},
                  **{f"top{k}/{h}": accuracy[h][j] for h in heads for j, k in enumerate((1, 5))}}
        progress.end_epoch(_epoch_line(record, cfg.epochs, means, accuracy))

        improved = accuracy[MAIN_HEAD][0] > best
        best = max(best, accuracy[MAIN_HEAD][0])
        due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        if due or improved:
            state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": distributed.all_gather(ctx, ckpt.rng_state()),
                     "epoch": epoch + 1, "step": step, "best": best,
                     "spec_name": spec.name, "spec_hash": compiled.spec_hash}
        if ctx.is_main:
            log.append(record)
            plot_curves(log.records, run)
            if due or improved:
                ckpt.save(folder, state, best=improved)

    # --- the per-exit table: every exit as a compact model of its own (MW-BP)
    if accuracy is None:  # resumed a finished run
        accuracy = evaluate(net, test_batches, heads, ctx, autocast)
    rows = exit_rows(summarise(compiled.network), accuracy)
    if ctx.is_main:
        atomic_write(run / "exits.json", json.dumps({"epoch": cfg.epochs, "exits": rows}, indent=1) + "\n")
        print(f"\n{spec.name}: test accuracy of every exit after {cfg.epochs} epochs (best main top-1 "
              f"{100 * best:.2f}%, checkpoints in {folder})")
        print(format_exit_table(rows))
    return Result(raw, rows, run)


def make_batches(spec: Spec, data: Dataset, ctx: distributed.Context) -> tuple[Batches, Batches]:
    """This rank's training batches (shuffled, augmented, batch_size / world_size each) and test batches."""
    common = dict(mean=spec.input.mean, std=spec.input.std, device=ctx.device, seed=spec.train.seed,
                  rank=ctx.rank, world_size=ctx.world_size)
    train_batches = Batches(data.train_x, data.train_y, spec.train.batch_size // ctx.world_size, train=True,
                            augment=spec.data.augment, **common)
    test_batches = Batches(data.test_x, data.test_y, spec.train.eval_batch_size, train=False, **common)
    return train_batches, test_batches


def lr_factor(policy: LRPolicy, base_lr: float, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each optimiser step: the policy at epoch step/steps_per_epoch,
    times a linear warm-up from 1/warm-up steps to 1 over the first `warmup_epochs`."""
    warmup_steps = policy.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        value = policy.factor(step / steps_per_epoch, epochs, base_lr)
        return value * min(1.0, (step + 1) / warmup_steps) if warmup_steps else value

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, heads: list[str], ctx: distributed.Context,
             autocast: Callable) -> dict[str, tuple[float, float]]:
    """Top-1 and top-5 accuracy of every exit on this rank's test shard, summed over ranks."""
    model.eval()
    hits = torch.zeros(len(heads) * 2 + 1, dtype=torch.float64, device=ctx.device)  # (top1, top5) per head, count
    for x, y in batches:
        with autocast():
            logits = model(x)
        for i, head in enumerate(heads):
            top = logits[head].topk(min(5, logits[head].shape[1]), dim=1).indices == y[:, None]
            hits[2 * i] += top[:, 0].sum()
            hits[2 * i + 1] += top.any(dim=1).sum()
        hits[-1] += len(y)
    hits = distributed.all_sum(ctx, hits).tolist()
    count = max(hits[-1], 1.0)
    return {head: (hits[2 * i] / count, hits[2 * i + 1] / count) for i, head in enumerate(heads)}


def evaluate_checkpoint(compiled: Compiled, path: str | None = None) -> list[dict]:
    """`netspec eval`: load a checkpoint (default: the run's best) and print the per-exit table on the test split."""
    spec = compiled.spec
    path = Path(path) if path else ckpt.best_checkpoint(spec)
    state = ckpt.load_checkpoint(path)
    ctx = distributed.Context(0, 1, 0, distributed.pick_device(spec.train.device))
    model = compiled.module.to(ctx.device)
    ckpt.load_weights(model, state["model"], path)
    if state.get("spec_hash") != compiled.spec_hash:
        print(f"note: {path} was written for another version of the spec '{state.get('spec_name')}'", file=sys.stderr)
    _, test_batches = make_batches(spec, load_dataset(spec.data, spec.input.shape), ctx)
    autocast = _autocast(ctx, spec.train.amp)
    rows = exit_rows(summarise(compiled.network), evaluate(model, test_batches, list(compiled.heads), ctx, autocast))
    print(f"{spec.name}: {path} (epoch {state.get('epoch')}), test split")
    print(format_exit_table(rows))
    return rows


def _autocast(ctx: distributed.Context, amp: str) -> Callable[[], torch.autocast]:
    """A context factory for the forward pass: bf16 autocast when `train.amp` says so, else a no-op."""
    return functools.partial(torch.autocast, ctx.device.type, torch.bfloat16, enabled=amp == "bf16")


def _check_classes(spec: Spec, data: Dataset) -> None:
    if len(data.classes) > spec.classes:
        raise UserError(f"the data has {len(data.classes)} classes but the spec has classes: {spec.classes}",
                        f"set classes: {len(data.classes)} in the spec")


def _seed(seed: int, rank: int, epoch: int) -> None:
    """Seed the global generators (dropout and the like); each rank and epoch differently."""
    value = seed + 1000 * rank + 1_000_003 * epoch
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)


def _stop_if_diverged(names: list[str], values: list[float], epoch: int, step: int, folder: Path) -> None:
    """A NaN/inf loss term stops the run before it touches the parameters; the last checkpoint stays as it was."""
    bad = [f"'{n}' = {v}" for n, v in zip(names, values) if not math.isfinite(v)]
    if bad:
        kept = f"the last good checkpoint is {folder / ckpt.LAST}" if (folder / ckpt.LAST).is_file() else \
            "no checkpoint had been written yet"
        raise UserError(f"training stopped at epoch {epoch + 1}, step {step + 1}: loss term {', '.join(bad)}; {kept}",
                        "lower train.optimizer.lr (or add lr_schedule.warmup_epochs, or lower that term's weight), "
                        "then train again or `netspec train --resume`")


def _epoch_line(record: dict, epochs: int, means: dict[str, float], accuracy: dict[str, tuple[float, float]]) -> str:
    terms = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
    exits = ", ".join(f"{h} {100 * a[0]:.2f}/{100 * a[1]:.2f}" for h, a in accuracy.items())
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f} ({terms})  top-1/top-5 % {exits}  "
            f"lr {record['lr']:.3g}  {record['seconds']:.1f}s")


def _silent(*args, **kwargs) -> None:
    """`say` on ranks other than 0."""
