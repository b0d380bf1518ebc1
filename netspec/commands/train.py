"""`netspec train` and `netspec eval`."""
from __future__ import annotations

import argparse
import json

from netspec.errors import UserError
from netspec.project import claim_dir, read_small_text
from netspec.runtime import checkpoint, distributed
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
    check_run_dir(compiled.spec, args.resume)
    train(compiled, resume=args.resume)
    return 0


RUN_FILES = ("metrics.jsonl", "metrics.csv", "curves.png", "exits.json", "checkpoints")


def check_run_dir(spec, resume: bool) -> None:
    """Before training writes anything: the run directory is netspec's (absent, empty or a run), and the
    checkpoint index (and, to resume, the metrics log) in it are readable."""
    run = claim_dir(checkpoint.run_dir(spec), RUN_FILES, "run directory (train.out)")
    metrics = run / "metrics.jsonl"
    if resume and metrics.exists():
        fix = f"delete {metrics} (its epochs are lost from the curves) or train afresh without --resume"
        for number, line in enumerate(read_small_text(metrics).splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise UserError(f"{metrics}:{number} is damaged: not a record of one epoch", fix)
    folder = claim_dir(checkpoint.checkpoint_dir(spec), (checkpoint.LAST, checkpoint.BEST, checkpoint.INDEX),
                       "checkpoint directory")
    checkpoint.read_index(folder)
