"""`netspec train` and `netspec eval`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from netspec.errors import UserError, plural
from netspec.project import split_args
from netspec.commands.common import (add_run_argument, add_spec_arguments, compile_recorded, find_run, load,
                                     load_for_weights)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    add_run_argument(parser)
    if name == "eval":
        parser.add_argument("--checkpoint", default=None, metavar="PATH",
                            help="checkpoint to evaluate (default: the run's best.pt, else last.pt)")
        parser.add_argument("--exit", action="append", metavar="NAME", dest="exits",
                            help="evaluate only this exit, cut out of the network (repeatable); exits whose "
                                 "structure is unchanged still evaluate after another branch moved")
    else:
        parser.add_argument("--resume", action="store_true",
                            help="continue the latest run (or --run DIR, or train.run_name) from its last checkpoint, "
                                 "with the spec and overrides it was started with; a spec that differs now is refused "
                                 "unless --allow-change")
        parser.add_argument("--allow-change", action="store_true",
                            help="with --resume: accept changes of the solver (optimizer, lr, momentum, weight decay), "
                                 "lr schedule, epochs/max_steps, loss weights and schedules; applied from the step the "
                                 "run resumes at and recorded in changes.jsonl")
        parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                            help="train in N processes on this machine (DDP through torchrun)")


def run(args: argparse.Namespace) -> int:
    return evaluate(args) if args.command == "eval" else train(args)


def evaluate(args: argparse.Namespace) -> int:
    from netspec.runtime.metrics import format_exit_table
    from netspec.runtime.train import evaluate_checkpoint

    compiled, run, path = load_for_weights(args, args.checkpoint)
    if path is None:
        raise UserError(f"no run of {compiled.spec.name} to evaluate", "train first (`netspec train`), or give "
                        "--checkpoint PATH")
    result = evaluate_checkpoint(compiled, path, args.exits)
    splits = ", ".join(f"{name} split: {n:,} examples" for name, n in sorted(result.examples.items(), reverse=True))
    print(f"{compiled.spec.name}: {path} (epoch {result.epoch}); {splits}")
    print(format_exit_table(result.rows))
    return 0


def train(args: argparse.Namespace) -> int:
    from netspec.runtime import distributed
    from netspec.runtime.metrics import format_exit_table
    from netspec.runtime.report import Report
    from netspec.runtime.train import Aborted, Interrupted, train as train_run

    if args.allow_change and not args.resume:
        raise UserError("--allow-change only goes with --resume", "add --resume, or leave out --allow-change")
    if args.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        return distributed.launch(args.nproc_per_node, ["train", *args.words, "--nproc-per-node",
                                                        str(args.nproc_per_node)] + _flags(args), Report.console().note)
    main = distributed.is_main_process()
    run = find_run(args) if args.resume else None
    if run is None:
        compiled, _ = load(args, announce=main)
    elif run.saved:
        compiled = _resumed(args, run)
    else:
        if main:
            print(f"--resume: nothing saved yet in {run}: starting afresh in it", file=sys.stderr)
        recorded = (run.path / "run.json").is_file()
        compiled = compile_recorded(run, split_args(args.words)[1], args.limits) if recorded else load(args, announce=main)[0]
    command = ["train", *args.words] + _flags(args)
    try:
        result = train_run(compiled, resume=args.resume, run=run, allow_change=args.allow_change, command=command)
    except Interrupted as stop:
        if main:
            world = f" --nproc-per-node {args.nproc_per_node}" if args.nproc_per_node > 1 else ""
            print(f"netspec: {stop}; resume with: netspec train --resume --run {shlex.quote(str(stop.run))}{world}"
                  + " --allow-custom" * args.allow_custom, file=sys.stderr)
        return 128 + stop.signum
    except Aborted as stop:
        if main:
            print(f"netspec: {stop}; the last checkpoint was kept", file=sys.stderr)
        return 128 + stop.signum
    if main:
        print(f"\n{compiled.spec.name}: every exit after {plural(result.epochs, 'epoch')} (best {result.selection} "
              f"{100 * result.best:.2f}% → best.pt; run {result.run})")
        print(format_exit_table(result.rows))
    return 0


def _flags(args: argparse.Namespace) -> list[str]:
    return (["--resume"] * args.resume + ["--allow-change"] * args.allow_change + ["--allow-custom"] * args.allow_custom
            + ["--run", args.run] * bool(args.run))


def _resumed(args: argparse.Namespace, run):
    """--resume of a run with a checkpoint: the spec named now, else the recorded spec file as it is now (else the
    run's spec.yaml), with the recorded overrides and those given now on top; the runtime refuses what differs
    from the record unless --allow-change accepts it."""
    from netspec.compiler import compile_spec
    from netspec.runtime.run import SPEC_FILE

    record = run.record()
    named, given = split_args(args.words)
    path = Path(named) if named else Path(record["spec"])
    overrides = [*record["overrides"], *given]
    if not path.is_file():
        path, overrides = run.path / SPEC_FILE, list(given)
    return compile_spec(path, overrides, args.limits)
