"""Training and evaluation (`netspec train`, `netspec eval`). The training loop reads top to bottom:

process group and device → model (init.from, torch.compile, DDP) → data → optimiser and per-step
LR schedule → resume → epochs of [train on every loss term, evaluate every exit (every train.eval_every epochs), log,
checkpoint]
→ the per-exit table (exit, depth, params, FLOPs, top-1, top-5).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netspec.compiler import Compiled
from netspec.compiler.lower import param_groups
from netspec.compiler.summary import summarise
from netspec.errors import UserError
from netspec.project import atomic_write
from netspec.solver import LRPolicy
from netspec.spec import MAIN_HEAD, Spec
from netspec.runtime import checkpoint as ckpt
from netspec.runtime import distributed, runs
from netspec.runtime.data import Batches, Dataset
from netspec.runtime.data.stream import StreamData, load_data, stream_batches
from netspec.runtime.metrics import MetricsLog, Progress, TensorBoard, check_logs, exit_rows, format_exit_table
from netspec.runtime.objective import Objective
from netspec.runtime.plots import plot_curves


@dataclass
class Result:
    """What a finished run leaves: the trained model (unwrapped, on its device), the per-exit rows, the run dir."""

    model: nn.Module
    rows: list[dict]
    run: Path


class Interrupted(Exception):
    """SIGINT or SIGTERM during training: a checkpoint was saved at the current step (the message says which)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def train(compiled: Compiled, *, resume: bool = False, overrides: list[str] = (), command: list[str] | None = None,
          allow_change: bool = False) -> Result:
    """Train a compiled spec with all its losses, in this process or as one rank of a torchrun job.

    A new run gets a directory of its own (`<train.out or runs/NAME>/<train.run_name or start time>/`); `resume`
    continues the newest run (or `train.run_name`) from its last checkpoint, or starts afresh in it when nothing
    was saved. `overrides` and `command` (the netspec command line, without `netspec`) go into the run's record
    and the resume hint; `allow_change` lets a resume change schedule settings (logged in the run)."""
    ctx = distributed.setup(compiled.spec.train.device)
    opened = None
    try:
        opened = _open_run(compiled, ctx, resume, list(overrides), command, allow_change)
        return _train(compiled, ctx, opened, list(overrides), command)
    finally:
        if opened is not None and opened.lock is not None:
            opened.lock.release()
        distributed.teardown(ctx)


@dataclass
class Opened:
    """The run directory a training process works in, what it resumes from, and its lock (rank 0)."""

    run: Path
    start: dict | None
    lock: ckpt.RunLock | None
    changes: list[str]
    fresh_record: bool


def _open_run(compiled: Compiled, ctx: distributed.Context, resume: bool, overrides: list[str],
              command: list[str] | None, allow_change: bool) -> Opened:
    """Rank 0 picks (or makes) the run directory and locks it; every rank gets its path and the checkpoint."""
    say = functools.partial(print, file=sys.stderr, flush=True)
    choice: list = [None, False, [], True]  # run path, has a checkpoint, settings changes, write a new record
    lock = None
    try:
        if ctx.is_main:
            lock = _pick_run(compiled, resume, allow_change, choice, say)
    except UserError as err:
        distributed.broadcast(ctx, ["error", str(err)])
        raise
    run_path, has_start, changes, fresh = distributed.broadcast(ctx, choice)
    if run_path == "error":
        raise UserError(has_start.removeprefix("netspec: "))
    run = Path(run_path)
    start = ckpt.load_checkpoint(ckpt.checkpoint_dir(run) / ckpt.LAST, resume=True) if has_start else None
    try:
        if start is not None:
            ckpt.check_heads(start, compiled, list(compiled.heads), ckpt.checkpoint_dir(run) / ckpt.LAST, "resume")
            check_logs(run)  # a damaged log is an error before anything is loaded or written
    except UserError:
        if lock is not None:
            lock.release()
        raise
    return Opened(run, start, lock, changes, fresh)


def _pick_run(compiled: Compiled, resume: bool, allow_change: bool, choice: list, say) -> ckpt.RunLock:
    """Rank 0: the run directory (new, or the one to resume), locked; fills `choice` for the other ranks."""
    spec = compiled.spec
    run = ckpt.latest_run(spec) if resume else None
    if resume and run is None:
        say(f"--resume: no run in {ckpt.runs_root(spec)} yet: starting a new one")
        resume = False
    run = run or ckpt.new_run(spec)
    lock = ckpt.RunLock(run)
    try:
        ckpt.point_latest(run)
        folder = ckpt.checkpoint_dir(run)
        stale = ckpt.remove_stale_temps(folder) + ckpt.remove_stale_temps(run)
        if stale:
            say(f"removed {len(stale)} temp file(s) of interrupted writes in {run}")
        if resume:
            for line in ckpt.verify(folder):
                say(f"repaired {folder / ckpt.INDEX}: {line}")
            if (folder / ckpt.LAST).is_file():
                recorded = runs.read_spec(run)
                changes = runs.settings_changes(recorded, spec) if recorded else []
                if changes and not allow_change:
                    raise UserError(f"--resume: this run was started with other settings: {'; '.join(changes)}",
                                    "these change the run's schedule: add --allow-change to continue with them "
                                    "(they are logged in the run), or start a new run without --resume")
                choice[1:] = [True, changes, False]
            else:
                say(f"--resume: nothing saved yet in {run}: starting afresh in it")
    except BaseException:
        lock.release()
        raise
    choice[0] = str(run)
    return lock


def _train(compiled: Compiled, ctx: distributed.Context, opened: Opened, overrides: list[str],
           command: list[str] | None) -> Result:
    spec, cfg = compiled.spec, compiled.spec.train
    say = functools.partial(print, file=sys.stderr, flush=True) if ctx.is_main else _silent
    run, start = opened.run, opened.start
    folder = ckpt.checkpoint_dir(run)
    heads = list(compiled.heads)

    # --- model: the compiled GraphModule, parameters named as in the spec
    raw = compiled.module.to(ctx.device)
    if start is None and spec.init.from_:
        source = Path(spec.init.from_)
        copied, new, changed = ckpt.copy_unchanged(raw, ckpt.load_checkpoint(source), compiled, source)
        why = "".join(f"; {node} changed ({what})" for node, what in changed.items())
        say(f"init.from {source}: copied {ckpt.layers(copied) or 'nothing'}; new: {ckpt.layers(new) or 'none'}{why}")
    net = torch.compile(raw) if cfg.compile else raw
    model = distributed.wrap(net, ctx, cfg.sync_bn)
    objective = Objective(compiled.network)
    autocast = _autocast(ctx, cfg.amp)

    # --- data: whole splits in memory, each rank its shard of every global batch
    if cfg.batch_size % ctx.world_size:
        raise UserError(f"train.batch_size {cfg.batch_size} does not split evenly over {ctx.world_size} processes",
                        f"use a multiple of {ctx.world_size}")
    data = distributed.main_first(ctx, lambda: load_data(spec, sys.stderr if ctx.is_main else None))
    _check_classes(spec, data)
    train_batches, test_batches = make_batches(spec, data, ctx)
    steps = min(len(train_batches), cfg.steps_per_epoch or len(train_batches))
    if steps == 0:
        raise UserError(f"the training split ({len(data.train_y)} examples) is smaller than one batch of "
                        f"{cfg.batch_size}", "lower train.batch_size, or raise data.train_limit")
    if cfg.max_steps:  # Caffe's max_iter: as many epochs as the steps take, the last one cut short
        cfg = cfg.model_copy(update={"epochs": math.ceil(cfg.max_steps / steps)})
        objective.epochs = cfg.epochs

    # --- the run's record: written when it starts; a resume that changed settings logs them
    if ctx.is_main:
        if opened.fresh_record:
            runs.write_record(run, compiled, overrides, command, data, ctx.world_size)
        else:
            recorded = (runs.read_record(run) or {}).get("data", {})
            identity = runs.data_identity(spec, data)
            if recorded.get("checksum") not in (None, identity["checksum"]) and not opened.changes:
                say(f"note: the data differ from those {run.name} started with ({recorded.get('path')}, "
                    f"{recorded.get('train')}/{recorded.get('test')} examples → {identity['path']}, "
                    f"{identity['train']}/{identity['test']})")
            if opened.changes:
                runs.log_changes(run, opened.changes, command)
                runs.write_record(run, compiled, overrides, command, data, ctx.world_size)
                say(f"--allow-change: continuing with {'; '.join(opened.changes)} (logged in {run / runs.CHANGES})")

    # --- optimiser and learning rate, set every step
    optimizer = cfg.optimizer.build(param_groups(compiled.network, raw))  # lr_mult / decay_mult groups
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.lr_schedule, cfg.optimizer.lr,
                                                                         cfg.epochs, steps))

    def base_lr() -> float:
        """The learning rate the schedule gives now (each group's is this × its lr_mult)."""
        return cfg.optimizer.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)

    # --- resume, or start afresh
    epoch, step, done, best = 0, 0, 0, -1.0  # done: steps already taken in `epoch` (a mid-epoch snapshot)
    sums = np.zeros(len(objective.names) + len(heads))
    seconds = 0.0
    if start is not None:
        ckpt.load_weights(raw, start["model"], folder / ckpt.LAST)
        try:
            optimizer.load_state_dict(start["optimizer"])
        except (KeyError, ValueError):
            say("note: the optimizer changed: its state (momentum, moments) starts afresh")
        scheduler.load_state_dict(start["scheduler"])
        epoch, step, best = start["epoch"], start["step"], start["best"]
        done = start.get("batch", 0)
        if done and "epoch_sums" in start and len(start["epoch_sums"]) == len(sums):
            sums, seconds = start["epoch_sums"].numpy().copy(), float(start.get("epoch_seconds", 0.0))
        if len(start["rng"]) == ctx.world_size:
            ckpt.set_rng_state(start["rng"][ctx.rank])
        else:
            _seed(cfg.seed, ctx.rank, epoch)
            say(f"note: the checkpoint was written by {len(start['rng'])} process(es), this run has "
                f"{ctx.world_size}: random draws (dropout) differ from an uninterrupted run")
        at = f"epoch {epoch + 1}, step {done} of {steps}" if done else f"{epoch} of {cfg.epochs} epochs done"
        say(f"resuming {folder / ckpt.LAST}: {at} (step {step})")
    else:
        _seed(cfg.seed, ctx.rank, 0)

    # --- epochs
    log = MetricsLog(run, keep_until_epoch=epoch, keep_until_step=step)
    board = TensorBoard(run, step) if ctx.is_main else None
    progress = Progress(cfg.epochs * steps, epoch * steps + done, sys.stderr if ctx.is_main else None)
    accuracy = None
    term_heads = {t.name: t.student for t in objective.terms}
    resume_hint = _resume_command(compiled, overrides, command, run, ctx.world_size)
    say(f"training {spec.name} for {cfg.epochs} epochs of {steps} steps, batch {cfg.batch_size} on "
        f"{ctx.world_size} × {ctx.device}; run directory {run}")

    def snapshot(epoch: int, batch: int, sums: np.ndarray, seconds: float) -> dict:
        return {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": distributed.all_gather(ctx, ckpt.rng_state()),
                "epoch": epoch, "step": step, "batch": batch, "best": best,
                "epoch_sums": torch.from_numpy(sums.copy()), "epoch_seconds": seconds,
                "spec_name": spec.name, "spec_hash": compiled.spec_hash,
                "structure": ckpt.compiled_structure(compiled)}

    with _Signals() as signals:
        for epoch in range(epoch, cfg.epochs):
            model.train()
            train_batches.set_epoch(epoch, skip=done)
            started = time.perf_counter()
            window = (started, step)  # throughput since the last step record
            todo = min(steps - done, cfg.max_steps - step) if cfg.max_steps else steps - done
            for i, (x, y) in enumerate(itertools.islice(train_batches, todo), start=done):
                with autocast():
                    logits = model(x)
                loss, terms = objective(logits, y, epoch + i / steps)
                raw_ce = torch.stack([F.cross_entropy(logits[h].detach().float(), y) for h in heads])
                stats = torch.cat([terms, raw_ce, torch.tensor([float(signals.caught)], device=terms.device)])
                stats = (distributed.all_sum(ctx, stats) / ctx.world_size).tolist()  # same on every rank
                values, stop = stats[:len(sums)], stats[-1] > 0
                _stop_if_diverged(objective.names, values[:len(objective.names)], epoch, step, folder)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                log_step = cfg.log_every_steps and (step + 1) % cfg.log_every_steps == 0 and ctx.is_main
                grads = grad_magnitudes(raw) if log_step and cfg.log_gradients else {}
                optimizer.step()
                scheduler.step()
                step += 1
                sums += values
                progress.step(f"epoch {epoch + 1}/{cfg.epochs}", i + 1, steps, sum(values[:len(objective.names)]))
                if log_step:
                    now = time.perf_counter()
                    speed = (step - window[1]) * cfg.batch_size / max(now - window[0], 1e-9)
                    record = {**_step_record(objective, heads, values, epoch + i / steps, step, base_lr(), speed),
                              **grads}
                    log.append_step(record)
                    board.scalars(record, step, "step")
                    window = (now, step)
                snap_due = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and i + 1 < steps
                if stop or snap_due:
                    _check_finite(raw, epoch, step, folder)
                    state = snapshot(epoch, i + 1, sums, seconds + time.perf_counter() - started)
                    if ctx.is_main:
                        ckpt.save(folder, state, best=False)
                    if stop:
                        name = signal.Signals(signals.caught or signal.SIGTERM).name
                        message = (f"netspec: {name}: saved {folder / ckpt.LAST} (epoch {epoch + 1}, step {i + 1} of "
                                   f"{steps}; {step} steps in all); resume with: {resume_hint}")
                        raise Interrupted(message, signals.caught or signal.SIGTERM)
            seconds += time.perf_counter() - started
            _check_finite(raw, epoch, step, folder)

            distributed.sync_buffers(ctx, raw)
            evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            accuracy = evaluate(net, test_batches, heads, ctx, autocast) if evaluated else None
            means = sums / steps
            record = {"epoch": epoch + 1, "step": step, "lr": base_lr(), "seconds": round(seconds, 3),
                      "examples_per_second": round(steps * cfg.batch_size / max(seconds, 1e-9), 1),
                      "loss": float(means[:len(objective.names)].sum()),
                      **{f"loss/{k}": float(v) for k, v in zip(objective.names, means)},
                      **{f"ce/{h}": float(v) for h, v in zip(heads, means[len(objective.names):])},
                      **{f"alpha/{t.name}": t.factor(epoch + 1 - 1e-9, cfg.epochs) for t in objective.terms},
                      **{f"top{k}/{h}": accuracy[h][j] for h in heads for j, k in enumerate((1, 5)) if evaluated}}
            progress.end_epoch(_epoch_line(record, cfg.epochs, dict(zip(objective.names, means.tolist())), accuracy))

            improved = evaluated and accuracy[MAIN_HEAD][0] > best
            best = max(best, accuracy[MAIN_HEAD][0]) if evaluated else best
            due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
            done, sums, seconds = 0, np.zeros_like(sums), 0.0
            if due or improved:
                state = snapshot(epoch + 1, 0, sums, 0.0)
            if ctx.is_main:
                log.append(record)
                board.scalars(record, step, "epoch")
                plot_curves(log.records, run, term_heads=term_heads, heads=heads)
                if due or improved:
                    ckpt.save(folder, state, best=improved)
    if board is not None:
        board.close()

    # --- the per-exit table: every exit as a compact model of its own (MW-BP)
    if accuracy is None:  # resumed a finished run
        accuracy = evaluate(net, test_batches, heads, ctx, autocast)
    rows = exit_rows(summarise(compiled.network), accuracy)
    if ctx.is_main:
        atomic_write(run / "exits.json", json.dumps({"epoch": cfg.epochs, "exits": rows}, indent=1) + "\n")
        print(f"\n{spec.name}: test accuracy of every exit after {cfg.epochs} epochs (best main top-1 "
              f"{100 * best:.2f}%, run {run})")
        print(format_exit_table(rows))
    return Result(raw, rows, run)


def make_batches(spec: Spec, data: Dataset | StreamData, ctx: distributed.Context) -> tuple[Batches, Batches]:
    """This rank's training batches (shuffled, augmented, batch_size / world_size each) and test batches:
    decoded on the fly by DataLoader workers for streamed data (data.stream), from memory otherwise."""
    if isinstance(data, StreamData):
        return stream_batches(spec, data, ctx.device, ctx.rank, ctx.world_size)
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
    ckpt.check_heads(state, compiled, list(compiled.heads), path, "evaluate")
    ctx = distributed.Context(0, 1, 0, distributed.pick_device(spec.train.device))
    model = compiled.module.to(ctx.device)
    ckpt.load_weights(model, state["model"], path)
    if state.get("spec_hash") != compiled.spec_hash and not state.get("structure"):
        print(f"note: {path} was written for another version of the spec '{state.get('spec_name')}'", file=sys.stderr)
    _, test_batches = make_batches(spec, load_data(spec), ctx)
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


def _check_finite(model: nn.Module, epoch: int, step: int, folder: Path) -> None:
    """Before any save: every parameter and buffer finite. The losses of each step were finite before its update,
    so a non-finite tensor now was made by the update of `step`; nothing of it is written."""
    bad = ckpt.non_finite(model.state_dict())
    if bad:
        kept = f"the last good checkpoint is {folder / ckpt.LAST}" if (folder / ckpt.LAST).is_file() else \
            "no checkpoint had been written yet"
        raise UserError(f"training stopped at epoch {epoch + 1}, step {step}: the update of step {step} made "
                        f"{ckpt.layers(bad)} non-finite (its loss was finite); nothing of it was saved, {kept}",
                        "lower train.optimizer.lr (or add lr_schedule.warmup_epochs), then train again or "
                        "`netspec train --resume`")


def grad_magnitudes(model: nn.Module) -> dict[str, float]:
    """`grad/<node>`: each conv/fc weight's mean |gradient| (tensors of 2+ dimensions named `weight`)."""
    named = [(name.removesuffix(".weight"), p.grad) for name, p in model.named_parameters()
             if name.endswith(".weight") and p.dim() > 1 and p.grad is not None]
    if not named:
        return {}
    means = torch.stack([g.detach().float().abs().mean() for _, g in named]).tolist()
    return {f"grad/{name}": value for (name, _), value in zip(named, means)}


def _step_record(objective: Objective, heads: list[str], values: list[float], epoch: float, step: int, lr: float,
                 speed: float) -> dict:
    """One step's log: each weighted term, each head's raw cross-entropy, each term's schedule factor, lr, speed."""
    n = len(objective.names)
    return {"step": step, "epoch": round(epoch, 4), "lr": lr, "examples_per_second": round(speed, 1),
            "loss": sum(values[:n]), **{f"loss/{k}": v for k, v in zip(objective.names, values)},
            **{f"ce/{h}": v for h, v in zip(heads, values[n:])},
            **{f"alpha/{t.name}": t.factor(epoch, objective.epochs) for t in objective.terms}}


def _resume_command(compiled: Compiled, overrides: list[str], command: list[str] | None, run: Path,
                    world_size: int) -> str:
    """The command that continues this run: the one that started it, pinned to the run, with --resume."""
    words = list(command) if command is not None else ["train", str(compiled.path), *overrides]
    words = [w for w in words if w not in ("--resume", "--allow-change") and not w.startswith("train.run_name=")]
    if world_size > 1 and not any(w.startswith("--nproc-per-node") for w in words):
        words += ["--nproc-per-node", str(world_size)]
    return "netspec " + shlex.join([*words, f"train.run_name={run.name}", "--resume"])


class _Signals:
    """While training, SIGINT and SIGTERM (what schedulers send before preemption) only set `caught`: the loop
    saves a checkpoint at the end of the step and stops. A second signal stops at once."""

    def __enter__(self) -> "_Signals":
        self.caught, self.old = 0, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._catch)
        return self

    def _catch(self, signum, frame) -> None:
        if self.caught:
            raise KeyboardInterrupt
        self.caught = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _epoch_line(record: dict, epochs: int, means: dict[str, float],
                accuracy: dict[str, tuple[float, float]] | None) -> str:
    terms = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
    exits = ("top-1/top-5 % " + ", ".join(f"{h} {100 * a[0]:.2f}/{100 * a[1]:.2f}" for h, a in accuracy.items())
             if accuracy is not None else "(not evaluated: train.eval_every)")
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f} ({terms})  {exits}  "
            f"lr {record['lr']:.3g}  {record['seconds']:.1f}s")


def _silent(*args, **kwargs) -> None:
    """`say` on ranks other than 0."""
