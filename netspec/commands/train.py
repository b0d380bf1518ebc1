"""`netspec train` and `netspec eval`."""
from __future__ import annotations

import argparse

from netspec.runtime import distributed
from netspec.runtime.train import evaluate_checkpoint, train
from netspec.commands.common import add_spec_arguments, load


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    if name == "eval":
        parser.add_argument("--checkpoint", default=None, metavar="PATH",
                            help="checkpoint to evaluate (default: the run's best.pt, else last.pt)")
    else:
        parser.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
        parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                            help="train in N processes on this machine (DDP through torchrun)")


def run(args: argparse.Namespace) -> int:
    if args.command == "eval":
        compiled, _ = load(args)
        evaluate_checkpoint(compiled, args.checkpoint)
        return 0
    if args.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        again = ["train", *args.words] + ["--resume"] * args.resume + ["--allow-custom"] * args.allow_custom
        return distributed.launch(args.nproc_per_node, again)
    compiled, _ = load(args)
    train(compiled, resume=args.resume)
    return 0
