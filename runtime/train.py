"""Training and evaluation (`netspec train`, `netspec eval`). `_train` reads top to bottom:

data → the record → model, objective and solver (a new run, or a resume) → epochs → steps → a snapshot when due
(a signal, train.checkpoint_every_steps) → evaluate every exit on the validation and test splits → log and
checkpoint → every exit's results (exits.json).

The runtime reports progress through `say` (rank 0 only) and returns results; the commands
(netspec/commands/train.py) print the exit table, turn `Interrupted` into its message and the resume command,
and choose the exit status.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netspec.compiler import Compiled
from netspec.compiler.checkpoint_format import load_checkpoint
from netspec.compiler.lower import param_groups
from netspec.compiler.summary import summarise
from netspec.errors import UserError, did_you_mean, plural
from netspec.project import atomic_write
from netspec.solver import LRPolicy, TrainSpec
from netspec.spec import Spec
from netspec.runtime import checkpoint as ckpt
from netspec.runtime import distributed
from netspec.runtime.data import Batches, Dataset
from netspec.runtime.data.stream import StreamData, load_data, stream_batches
from netspec.runtime.metrics import MetricsLog, Progress, TensorBoard, check_logs, exit_rows
from netspec.runtime.objective import Objective
from netspec.runtime.plots import plot_curves
from netspec.runtime.report import QUIET
from netspec.runtime.run import Run, data_identity, make_record, resume_changes, runs_root, spec_yaml


@dataclass
class Result:
    """What a finished run leaves: the trained model (unwrapped, on its device), the per-exit rows (val and test
    top-1/top-5 after the last epoch), the run, and the best value of the metric best.pt was chosen on."""

    model: nn.Module
    rows: list[dict]
    run: Run
    best: float
    selection: str  # val_top1/main, or top1/main without a validation split
    epochs: int


class Interrupted(Exception):
    """SIGINT or SIGTERM during training: every rank stopped at the same step and rank 0 saved it."""

    def __init__(self, signum: int, run: Run, epoch: int, batch: int, steps: int, step: int):
        self.signum, self.run, self.epoch, self.batch, self.steps, self.step = signum, run, epoch, batch, steps, step
        super().__init__(f"{signal.Signals(signum).name}: saved {run.checkpoints / ckpt.LAST} (epoch {epoch + 1}, "
                         f"step {batch} of {steps}; {plural(step, 'step')} so far)")


def train(compiled: Compiled, *, resume: bool = False, run: Run | None = None, allow_change: bool = False,
          command: list[str] = (), say: Callable[[str], None] | None = None) -> Result:
    """Train a compiled spec with all its losses, in this process or as one rank of a torchrun job.

    A new run gets a directory of its own (`<train.out or runs/NAME>/<train.run_name or start time>/`). `run`
    (or `resume`: the latest run of the spec, or train.run_name) continues from its last checkpoint, or starts
    afresh in it when nothing was saved; a spec that differs from the run's record is refused unless
    `allow_change` accepts the change (recorded in the run, and applied: the solver is set from the spec at every
    resume). The spec file, its overrides and `command` go into the run's record. `say` prints progress (rank 0 only)."""
    say = say or functools.partial(print, file=sys.stderr, flush=True)
    if resume and run is None:
        run = Run.latest(compiled.spec)
        if run is None:
            say(f"--resume: no run in {runs_root(compiled.spec)} yet: starting a new one")
        else:
            for line in run.check():
                say(f"{run}: {line}")
    changes = resume_changes(run, compiled.spec, allow_change) if run is not None and run.saved else []
    previous_threads = torch.get_num_threads()
    threads = distributed.set_threads(compiled.spec.train.threads)
    ctx = distributed.setup(compiled.spec.train.device)
    say = say if ctx.is_main else QUIET.say  # ranks other than 0 say nothing
    opened = None
    try:
        opened = _open(compiled, ctx, run, say)
        return _train(compiled, ctx, opened, list(changes), list(command), threads, say)
    except BaseException:
        if opened is not None and opened.fresh and ctx.is_main and not opened.run.saved:
            opened.run.remove_unused()  # a start that failed before its first checkpoint leaves no empty run
        raise
    finally:
        if opened is not None and opened.lock is not None:
            opened.lock.release()
        distributed.teardown(ctx)
        torch.set_num_threads(previous_threads)  # the caller's setting again (the Python API)


@dataclass
class Opened:
    """The run a training process works in, its lock (rank 0), and the checkpoint it resumes from."""

    run: Run
    lock: object
    start: dict | None
    fresh: bool  # a new record is written (a new run, or a resume of a run that saved nothing)


def _open(compiled: Compiled, ctx: distributed.Context, run: Run | None, say) -> Opened:
    """Rank 0 makes (or locks) the run directory and repairs what a kill left; every rank gets the run and its
    last checkpoint. An error on rank 0 is raised on every rank."""
    lock, error = None, None
    if ctx.is_main:
        try:
            if run is None:
                run = Run.create(compiled.spec)  # and points `latest` at it
                lock = run.lock()
            else:
                lock = run.lock()
                run.point_latest()
            stale = ckpt.remove_stale_temps(run.checkpoints) + ckpt.remove_stale_temps(run.path)
            if stale:
                say(f"removed {len(stale)} temp file(s) of interrupted writes in {run}")
            if run.saved:
                for line in ckpt.verify(run.checkpoints):
                    say(f"repaired {run.checkpoints / ckpt.INDEX}: {line}")
        except UserError as err:
            error = err
            if lock is not None:
                lock.release()
    path, problem = distributed.broadcast(ctx, (str(run.path) if run else "", error and (error.what, error.fix)))
    if problem:
        raise error or UserError(*problem)
    run = Run(path)
    start = load_checkpoint(run.checkpoints / ckpt.LAST, resume=True) if run.saved else None
    try:
        if start is not None:
            ckpt.check_heads(start, compiled, list(compiled.heads), run.checkpoints / ckpt.LAST, "resume")
            check_logs(run.path)  # a damaged log is an error before anything is loaded or written
    except UserError:
        if lock is not None:
            lock.release()
        raise
    return Opened(run, lock, start, start is None)


def _train(compiled: Compiled, ctx: distributed.Context, opened: Opened, changes: list[str], command: list[str],
           threads: int, say) -> Result:
    spec, run, start = compiled.spec, opened.run, opened.start

    # --- data: this rank's shard of every global batch; validation and test splits
    data = distributed.main_first(ctx, lambda: load_data(spec, sys.stderr if ctx.is_main else None, compiled.limits))
    _check_classes(spec, data)
    train_batches, val_batches, test_batches = make_batches(spec, data, ctx)
    steps = _steps_per_epoch(spec, data, train_batches, ctx)
    cfg = spec.train
    if cfg.max_steps:  # Caffe's max_iter: as many epochs as the steps take, the last one cut short
        cfg = cfg.model_copy(update={"epochs": math.ceil(cfg.max_steps / steps)})

    # --- the record (written when a run starts; a resume says when the data differ, and records a change)
    if ctx.is_main:
        _write_record(compiled, opened, changes, command, data, ctx, threads, say)
        if val_batches is None:
            say("note: no validation split (data.val_split): best.pt is selected on the test split")

    # --- model, objective, solver: set from the spec; a resume restores weights, solver state and generators
    loop = _loop(compiled, ctx, cfg, run, start, steps, val_batches, test_batches, say)
    epoch, step, done, best, sums, seconds = _resume(loop.raw, run, start, ctx, cfg, loop.selection,
                                                     len(loop.objective.names) + len(loop.heads), steps, say)
    loop.open_logs(epoch, step, done)
    say(f"training {spec.name} for {plural(cfg.epochs, 'epoch')} of {plural(steps, 'step')}, batch {cfg.batch_size} on "
        f"{ctx.world_size} × {ctx.device} ({plural(threads, 'thread')}); run directory {run}")

    # --- epochs → steps → a snapshot when due (a signal, train.checkpoint_every_steps) → evaluate, log, checkpoint
    evaluated = None
    with _Signals() as signals:
        for epoch in range(epoch, cfg.epochs):
            loop.model.train()
            train_batches.set_epoch(epoch, skip=done)
            started = time.perf_counter()
            window = (started, step)  # throughput since the last step record
            todo = min(steps - done, cfg.max_steps - step) if cfg.max_steps else steps - done
            for i, (x, y) in enumerate(itertools.islice(train_batches, todo), start=done):
                logged = cfg.log_every_steps and (step + 1) % cfg.log_every_steps == 0 and ctx.is_main
                values, grads, caught = _step(loop, x, y, epoch, i, step, signals.caught, logged)
                step += 1
                sums += values
                loop.progress.step(f"epoch {epoch + 1}/{cfg.epochs}", i + 1, steps,
                                   sum(values[:len(loop.objective.names)]))
                if logged:
                    window = _log_step(loop, values, grads, epoch + i / steps, step, window)
                due = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and i + 1 < steps
                if caught or due:
                    _check_finite(loop.raw, epoch, step, run.checkpoints)
                    state = loop.snapshot(epoch, i + 1, step, best, sums, seconds + time.perf_counter() - started)
                    if ctx.is_main:
                        ckpt.save(run.checkpoints, state, best=False, keep=cfg.keep_snapshots)
                    if caught:
                        raise Interrupted(caught, run, epoch, i + 1, steps, step)
            seconds += time.perf_counter() - started
            best, evaluated = _end_epoch(loop, epoch, step, sums / steps, seconds, best, evaluated)
            done, sums, seconds = 0, np.zeros_like(sums), 0.0
    loop.close()

    # --- every exit as a compact model of its own (MW-BP), in the run's exits.json
    val, accuracy = evaluated or _evaluate_splits(loop.net, val_batches, test_batches, loop.heads, ctx,
                                                  loop.autocast)  # evaluated is None: resumed a finished run
    rows = exit_rows(summarise(compiled.network), accuracy, val)
    if ctx.is_main:
        atomic_write(run.path / "exits.json", json.dumps({"epoch": cfg.epochs, "selected_on": loop.selection,
                                                          "exits": rows}, indent=1) + "\n")
    return Result(loop.raw, rows, run, best, loop.selection, cfg.epochs)


def _write_record(compiled: Compiled, opened: Opened, changes: list[str], command: list[str], data,
                  ctx: distributed.Context, threads: int, say) -> None:
    """Rank 0: a new run's record; on a resume, a note when the data differ and the change --allow-change made."""
    run, spec = opened.run, compiled.spec
    if opened.fresh:
        record = make_record(compiled, command, data, ctx.world_size, threads)
        run.start({**record, "run": run.path.name}, spec_yaml(spec))
    else:
        _note_other_data(run, spec, data, say)
    if changes:
        step = opened.start["step"]
        run.change(step, changes, command, {**run.record(), "spec": str(compiled.path),
                                            "overrides": list(compiled.overrides),
                                            "spec_hash": compiled.spec_hash}, spec_yaml(spec))
        say(f"--allow-change: from step {step} on, {'; '.join(changes)} (recorded in {run.path})")


@dataclass
class Loop:
    """What the steps and epochs of one training process share."""

    compiled: Compiled
    ctx: distributed.Context
    cfg: TrainSpec  # spec.train, with the epochs train.max_steps takes
    run: Run
    raw: nn.Module  # the module (its weights are what checkpoints hold)
    net: nn.Module  # raw, or torch.compile(raw): what evaluates
    model: nn.Module  # net, wrapped for DDP: what trains
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast: Callable[[], torch.autocast]
    val_batches: Batches | None
    test_batches: Batches
    steps: int  # optimizer steps per epoch
    heads: list[str]
    selection: str  # the metric best.pt is chosen on
    structure: dict = field(default_factory=dict)
    log: MetricsLog | None = None
    board: TensorBoard | None = None
    progress: Progress | None = None

    def open_logs(self, epoch: int, step: int, done: int) -> None:
        """metrics.jsonl / steps.jsonl (cut back to the checkpoint), TensorBoard (rank 0), the progress bar."""
        main, steps = self.ctx.is_main, self.steps
        self.log = MetricsLog(self.run.path, keep_until_epoch=epoch, keep_until_step=step)
        self.board = TensorBoard(self.run.path, step, wanted=self.cfg.tensorboard) if main else None
        self.progress = Progress(self.cfg.epochs * steps, epoch * steps + done, sys.stderr if main else None)

    def snapshot(self, epoch: int, batch: int, step: int, best: float, sums: np.ndarray, seconds: float) -> dict:
        """A checkpoint's content (every rank takes part: the generators of all ranks are gathered)."""
        return {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                "optimizer_type": self.cfg.optimizer.type, "scheduler": self.scheduler.state_dict(),
                "rng": distributed.all_gather(self.ctx, ckpt.rng_state()),
                "epoch": epoch, "step": step, "batch": batch, "best": best, "metric": self.selection,
                "epoch_sums": torch.from_numpy(sums.copy()), "epoch_seconds": seconds,
                "spec_name": self.compiled.spec.name, "spec_hash": self.compiled.spec_hash,
                "structure": self.structure}

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _loop(compiled: Compiled, ctx: distributed.Context, cfg: TrainSpec, run: Run, start: dict | None, steps: int,
          val_batches, test_batches, say) -> Loop:
    """The model (init.from on a new run; compiled and DDP-wrapped as the spec says), objective and solver."""
    raw = compiled.module.to(ctx.device)
    if start is None and compiled.spec.init.from_:
        _init_from(raw, Path(compiled.spec.init.from_), say)
    net = torch.compile(raw) if cfg.compile else raw
    objective = Objective(compiled.network)
    objective.epochs = cfg.epochs
    optimizer, scheduler = _solver(compiled, raw, cfg, steps, start, say)
    return Loop(compiled, ctx, cfg, run, raw, net, distributed.wrap(net, ctx, cfg.sync_bn), objective, optimizer,
                scheduler, _autocast(ctx, cfg.amp), val_batches, test_batches, steps, list(compiled.heads),
                "val_top1/main" if val_batches is not None else "top1/main", ckpt.compiled_structure(compiled))


def _step(loop: Loop, x: torch.Tensor, y: torch.Tensor, epoch: int, i: int, step: int, signalled: int,
          logged: bool) -> tuple[list[float], dict, int]:
    """One optimizer step. Returns the step's loss terms and raw CE per head (the mean over ranks), the gradient
    magnitudes when `logged` and train.log_gradients, and the signal any rank caught (0: none)."""
    objective, heads, ctx = loop.objective, loop.heads, loop.ctx
    with loop.autocast():
        logits = loop.model(x)
    loss, terms = objective(logits, y, epoch + i / loop.steps)
    raw_ce = torch.stack([F.cross_entropy(logits[h].detach().float(), y) for h in heads])
    flags = [float(signalled == signal.SIGINT), float(signalled == signal.SIGTERM)]
    stats = torch.cat([terms, raw_ce, torch.tensor(flags, device=terms.device)])
    stats = (distributed.all_sum(ctx, stats) / ctx.world_size).tolist()  # the same on every rank
    values = stats[:len(objective.names) + len(heads)]
    caught = signal.SIGTERM if stats[-1] > 0 else signal.SIGINT if stats[-2] > 0 else 0
    _stop_if_diverged(objective.names, values[:len(objective.names)], epoch, step, loop.run.checkpoints)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = grad_magnitudes(loop.raw) if logged and loop.cfg.log_gradients else {}
    loop.optimizer.step()
    loop.scheduler.step()
    return values, grads, caught


def _log_step(loop: Loop, values: list[float], grads: dict, epoch: float, step: int,
              window: tuple[float, int]) -> tuple[float, int]:
    """Rank 0: a line of steps.jsonl (and TensorBoard) with the throughput since `window`; the next window."""
    now = time.perf_counter()
    speed = (step - window[1]) * loop.cfg.batch_size / max(now - window[0], 1e-9)
    record = {**_step_record(loop.objective, loop.heads, values, epoch, step, loop.scheduler, loop.cfg),
              "examples_per_second": round(speed, 1), **grads}
    loop.log.append_step(record)
    loop.board.scalars(record, step, "step")
    return now, step


def _end_epoch(loop: Loop, epoch: int, step: int, means: np.ndarray, seconds: float, best: float,
               evaluated: tuple | None) -> tuple[float, tuple | None]:
    """Evaluate every exit (when due), log the epoch, save last.pt when due and best.pt when the selection metric
    improved. Returns the best value so far and the latest (val, test) accuracies."""
    cfg, ctx, run = loop.cfg, loop.ctx, loop.run
    _check_finite(loop.raw, epoch, step, run.checkpoints)
    distributed.sync_buffers(ctx, loop.raw)
    now = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    if now:
        evaluated = _evaluate_splits(loop.net, loop.val_batches, loop.test_batches, loop.heads, ctx, loop.autocast)
    val, accuracy = evaluated if now else (None, None)
    record = _epoch_record(loop.objective, loop.heads, means, epoch, step, loop.steps, seconds,
                           loop.scheduler, cfg, accuracy, val)
    loop.progress.end_epoch(_epoch_line(record, cfg.epochs, loop.objective.names, loop.heads, now))
    chosen = record.get(loop.selection)
    improved = chosen is not None and chosen > best
    best = max(best, chosen) if chosen is not None else best
    due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
    if due or improved:
        state = loop.snapshot(epoch + 1, 0, step, best, np.zeros_like(means), 0.0)
    if ctx.is_main:
        loop.log.append(record)
        loop.board.scalars(record, step, "epoch")
        plot_curves(loop.log.records, run.path, term_heads={t.name: t.student for t in loop.objective.terms},
                    heads=loop.heads)
        if due or improved:
            ckpt.save(run.checkpoints, state, best=improved, keep=cfg.keep_snapshots)
    return best, evaluated


def _steps_per_epoch(spec: Spec, data, train_batches, ctx: distributed.Context) -> int:
    cfg = spec.train
    if cfg.batch_size % ctx.world_size:
        raise UserError(f"train.batch_size {cfg.batch_size} does not split evenly over {ctx.world_size} processes",
                        f"use a multiple of {ctx.world_size}")
    steps = min(len(train_batches), cfg.steps_per_epoch or len(train_batches))
    if steps == 0:
        raise UserError(f"the training split ({len(data.train_y)} examples) is smaller than one batch of "
                        f"{cfg.batch_size}", "lower train.batch_size, or raise data.train_limit")
    return steps


def _init_from(model: nn.Module, source: Path, say) -> None:
    """init.from: copy every tensor whose name and shape match (a netspec checkpoint or a plain state dict), as
    Caffe's CopyTrainedLayersFrom copies layers by name; say what was copied, what is new and what changed."""
    copied, new, changed = ckpt.copy_matching(model, ckpt.read_weights(source))
    why = "".join(f"; {node} changed ({what})" for node, what in changed.items())
    say(f"init.from {source}: copied {ckpt.layers(copied) or 'nothing'}; new: {ckpt.layers(new) or 'none'}{why}")


def _solver(compiled: Compiled, raw: nn.Module, cfg, steps: int, start: dict | None, say):
    """The optimizer and per-step lr schedule, set from the spec. A resume restores the optimizer's state
    (momentum, moments) when its type is unchanged, then sets every hyperparameter from the spec (so a change
    accepted with --allow-change is applied; lr_mult/decay_mult kept); the schedule is rebuilt at the current
    step for the spec's epochs and policy."""
    optimizer = cfg.optimizer.build(param_groups(compiled.network, raw))  # lr_mult / decay_mult groups
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    if start is not None:
        was = start.get("optimizer_type")
        saved = start["optimizer"]["param_groups"]
        same = was == cfg.optimizer.type if was else all(set(g) - {"params", "initial_lr"} == set(f)
                                                         for g, f in zip(saved, fresh))
        if same and len(saved) == len(fresh):
            optimizer.load_state_dict(start["optimizer"])
            for group, values in zip(optimizer.param_groups, fresh):
                group.update(values)
        else:
            say(f"train.optimizer is now {cfg.optimizer.type}" + (f" (was {was})" if was else "")
                + ": a fresh optimizer, its state (momentum, moments) starts afresh")
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    factor = lr_factor(cfg.lr_schedule, cfg.optimizer.lr, cfg.epochs, steps)
    at = start["step"] if start is not None else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=at - 1)
    return optimizer, scheduler


def _resume(raw: nn.Module, run: Run, start: dict | None, ctx: distributed.Context, cfg, selection: str,
            n_sums: int, steps: int, say) -> tuple[int, int, int, float, np.ndarray, float]:
    """Where training starts: (epoch, step, steps done in that epoch, best, the epoch's loss sums, its seconds);
    a resume restores the weights and every generator."""
    sums = np.zeros(n_sums)
    if start is None:
        _seed(cfg.seed, ctx.rank, 0)
        return 0, 0, 0, -1.0, sums, 0.0
    ckpt.load_weights(raw, start["model"], run.checkpoints / ckpt.LAST)
    epoch, step, done, best, seconds = start["epoch"], start["step"], start.get("batch", 0), start["best"], 0.0
    if start.get("metric", "top1/main") != selection:
        best = -1.0  # selected on another split before: the selection starts afresh
    if done and "epoch_sums" in start and len(start["epoch_sums"]) == len(sums):
        sums, seconds = start["epoch_sums"].numpy().copy(), float(start.get("epoch_seconds", 0.0))
    if len(start["rng"]) == ctx.world_size:
        ckpt.set_rng_state(start["rng"][ctx.rank])
    else:
        _seed(cfg.seed, ctx.rank, epoch)
        say(f"note: the checkpoint was written by {len(start['rng'])} process(es), this run has "
            f"{ctx.world_size}: random draws (dropout) differ from an uninterrupted run")
    at = f"epoch {epoch + 1}, step {done} of {steps}" if done else f"{epoch} of {plural(cfg.epochs, 'epoch')} done"
    say(f"resuming {run.checkpoints / ckpt.LAST}: {at} (step {step})")
    return epoch, step, done, best, sums, seconds


def _base_lr(scheduler, cfg) -> float:
    """The learning rate the schedule gives now (each group's is this × its lr_mult)."""
    return cfg.optimizer.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)


def _evaluate_splits(model: nn.Module, val_batches, test_batches, heads: list[str], ctx: distributed.Context,
                     autocast) -> tuple[dict | None, dict]:
    """(validation accuracy, None without a validation split; test accuracy) of every exit."""
    val = evaluate(model, val_batches, heads, ctx, autocast) if val_batches is not None else None
    return val, evaluate(model, test_batches, heads, ctx, autocast)


def _note_other_data(run: Run, spec: Spec, data, say) -> None:
    """A resume on data other than the run's (same settings, other files): said, not refused."""
    was, now = run.record().get("data") or {}, data_identity(spec, data)
    if was.get("checksum") not in (None, now["checksum"]):
        say(f"note: the data differ from those {run.path.name} started with ({was.get('path')} → {now['path']}, "
            f"checksum {was['checksum'][:8]} → {now['checksum'][:8]})")


def _epoch_record(objective: Objective, heads: list[str], means: np.ndarray, epoch: int, step: int, steps: int,
                  seconds: float, scheduler, cfg, accuracy: dict | None, val: dict | None) -> dict:
    """One epoch's log: lr, time, speed, each term's mean, each head's raw CE, each term's schedule factor, and
    when evaluated top-1/top-5 of every exit on the test split (`top1/<exit>`) and the validation split
    (`val_top1/<exit>`)."""
    n = len(objective.names)
    return {"epoch": epoch + 1, "step": step, "lr": _base_lr(scheduler, cfg),
            "seconds": round(seconds, 3), "examples_per_second": round(steps * cfg.batch_size / max(seconds, 1e-9), 1),
            "loss": float(means[:n].sum()),
            **{f"loss/{k}": float(v) for k, v in zip(objective.names, means)},
            **{f"ce/{h}": float(v) for h, v in zip(heads, means[n:])},
            **{f"alpha/{t.name}": t.factor(epoch + 1 - 1e-9, cfg.epochs) for t in objective.terms},
            **{f"{prefix}top{k}/{h}": acc[h][j] for prefix, acc in (("", accuracy), ("val_", val)) if acc
               for h in heads for j, k in enumerate((1, 5))}}


def make_batches(spec: Spec, data: Dataset | StreamData, ctx: distributed.Context
                 ) -> tuple[Batches, Batches | None, Batches]:
    """This rank's training batches (shuffled, augmented, batch_size / world_size each), validation batches (None
    without data.val_split) and test batches: decoded on the fly by DataLoader workers for streamed data
    (data.stream), from memory otherwise."""
    if isinstance(data, StreamData):
        return stream_batches(spec, data, ctx.device, ctx.rank, ctx.world_size)
    common = dict(mean=spec.input.mean, std=spec.input.std, device=ctx.device, seed=spec.train.seed,
                  rank=ctx.rank, world_size=ctx.world_size)
    train_batches = Batches(data.train_x, data.train_y, spec.train.batch_size // ctx.world_size, train=True,
                            augment=spec.data.augment, **common)
    val_batches, test_batches = (Batches(x, y, spec.train.eval_batch_size, train=False, **common) if y is not None
                                 else None for x, y in ((data.val_x, data.val_y), (data.test_x, data.test_y)))
    return train_batches, val_batches, test_batches


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


@dataclass
class Evaluation:
    """`netspec eval`: the per-exit rows of one checkpoint, and the size of each split they were measured on."""

    path: Path
    epoch: int | None
    rows: list[dict]
    examples: dict[str, int]


def evaluate_checkpoint(compiled: Compiled, path: Path, exits: list[str] | None = None) -> Evaluation:
    """Every exit (or only `exits`, each as the module cut at it, so exits whose structure is unchanged can be
    evaluated after a branch moved) of a checkpoint, on the validation split (when the spec has one) and the
    test split."""
    spec = compiled.spec
    for name in exits or ():
        if name not in compiled.heads:
            raise UserError(f"there is no exit named '{name}'", did_you_mean(name, compiled.heads))
    state = load_checkpoint(path)
    heads = exits or list(compiled.heads)
    ckpt.check_heads(state, compiled, heads, path, "evaluate")
    ctx = distributed.Context(0, 1, 0, distributed.pick_device(spec.train.device))
    model = compiled.module.to(ctx.device)
    if exits:
        modules = {h: _OneExit(compiled.exit_module(h), h) for h in exits}
        for module in modules.values():
            ckpt.load_weights(module.module, state["model"], path, unused_ok=True)
    else:
        ckpt.load_weights(model, state["model"], path)
        modules = {None: model}
    _, val_batches, test_batches = make_batches(spec, load_data(spec, None, compiled.limits), ctx)
    autocast = _autocast(ctx, spec.train.amp)

    def accuracy(batches) -> dict:
        out = {}
        for head, module in modules.items():
            out.update(evaluate(module, batches, [head] if head else heads, ctx, autocast))
        return out

    val = accuracy(val_batches) if val_batches is not None else None
    rows = exit_rows(summarise(compiled.network), accuracy(test_batches), val)
    examples = {"test": len(test_batches.y)} | ({"val": len(val_batches.y)} if val_batches is not None else {})
    return Evaluation(path, state.get("epoch"), rows, examples)


class _OneExit(nn.Module):
    """A one-exit module whose output is `{head: logits}`, as the training module's."""

    def __init__(self, module: nn.Module, head: str):
        super().__init__()
        self.module, self.head = module, head

    def forward(self, x):
        return {self.head: self.module(x)}


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


def _step_record(objective: Objective, heads: list[str], values: list[float], epoch: float, step: int, scheduler,
                 cfg) -> dict:
    """One step's log: each weighted term, each head's raw cross-entropy, each term's schedule factor, lr."""
    n = len(objective.names)
    return {"step": step, "epoch": round(epoch, 4), "lr": _base_lr(scheduler, cfg),
            "loss": sum(values[:n]), **{f"loss/{k}": v for k, v in zip(objective.names, values)},
            **{f"ce/{h}": v for h, v in zip(heads, values[n:])},
            **{f"alpha/{t.name}": t.factor(epoch, objective.epochs) for t in objective.terms}}


class Aborted(Exception):
    """A second SIGINT/SIGTERM while the first was being handled: stopped at once, without saving this step."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} again: stopped at once, without saving this step")


class _Signals:
    """While training, SIGINT and SIGTERM (what schedulers send before preemption) only set `caught`: the loop
    saves a checkpoint at the end of the step and stops. A second signal stops at once (`Aborted`, with the first
    signal's number, so the exit status stays the first one's)."""

    def __enter__(self) -> "_Signals":
        self.caught, self.old = 0, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._catch)
        return self

    def _catch(self, signum, frame) -> None:
        if self.caught:
            raise Aborted(self.caught)
        self.caught = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _epoch_line(record: dict, epochs: int, names: list[str], heads: list[str], evaluated: bool) -> str:
    terms = ", ".join(f"{k} {record[f'loss/{k}']:.4f}" for k in names)
    splits = [(p, label) for p, label in (("val_", "val"), ("", "test")) if f"{p}top1/{heads[0]}" in record]
    exits = ("  ".join(f"{label} top-1/top-5 % " + ", ".join(
        f"{h} {100 * record[f'{p}top1/{h}']:.2f}/{100 * record[f'{p}top5/{h}']:.2f}" for h in heads)
        for p, label in splits) if evaluated else "(not evaluated: train.eval_every)")
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f} ({terms})  {exits}  "
            f"lr {record['lr']:.3g}  {record['seconds']:.1f}s")
