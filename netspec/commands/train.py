"""`netspec train` and `netspec eval`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netspec.project import split_args
from netspec.runtime import checkpoint as ckpt
from netspec.runtime import distributed, runs
from netspec.runtime.train import Interrupted, evaluate_checkpoint, train
from netspec.commands.common import add_spec_arguments, compile_words, load


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    if name == "eval":
        parser.add_argument("--checkpoint", default=None, metavar="PATH",
                            help="checkpoint to evaluate (default: the latest run's best.pt, else last.pt)")
    else:
        parser.add_argument("--resume", action="store_true",
                            help="continue the latest run (or train.run_name) from its last checkpoint, with the "
                                 "settings it was started with; starts afresh when nothing was saved yet")
        parser.add_argument("--allow-change", action="store_true",
                            help="with --resume: accept overrides that change the schedule (epochs, lr, losses, "
                                 "data, ...); they are logged in the run")
        parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                            help="train in N processes on this machine (DDP through torchrun)")


def run(args: argparse.Namespace) -> int:
    if args.command == "eval":
        compiled, _ = load(args)
        evaluate_checkpoint(compiled, args.checkpoint)
        return 0
    if args.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        again = (["train", *args.words] + ["--resume"] * args.resume + ["--allow-change"] * args.allow_change
                 + ["--allow-custom"] * args.allow_custom)
        return distributed.launch(args.nproc_per_node, again)
    compiled, overrides = load(args, announce=True)
    if args.resume:
        compiled, overrides = recorded_settings(args, compiled, overrides)
    command = (["train", *args.words] + ["--resume"] * args.resume + ["--allow-change"] * args.allow_change
               + ["--allow-custom"] * args.allow_custom)
    try:
        train(compiled, resume=args.resume, overrides=overrides, command=command, allow_change=args.allow_change)
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 128 + stop.signum
    return 0


def recorded_settings(args: argparse.Namespace, compiled, overrides: list[str]):
    """--resume continues with the run's recorded spec file and overrides; those given now go on top."""
    run = ckpt.latest_run(compiled.spec)
    record = runs.read_record(run) if run is not None else None
    if not record:
        return compiled, overrides
    given, _ = split_args(args.words)
    path = given or record["spec"]
    if not given and not Path(path).is_file():
        return compiled, overrides
    merged = list(record["overrides"]) + [o for o in overrides if o not in record["overrides"]]
    return compile_words(path, merged), merged
