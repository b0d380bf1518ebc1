"""`netspec export`."""
from __future__ import annotations

import argparse
from pathlib import Path

from netspec.errors import UserError
from netspec.project import check_output_file
from netspec.spec import MAIN_HEAD
from netspec.runtime.export import EXPORT_TARGETS, export
from netspec.commands.common import add_run_argument, add_spec_arguments, load, load_for_weights


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.usage = "netspec export [SPEC] [key=value ...] [options] OUT.onnx"
    parser.epilog = (f"OUT: the file to write; its suffix picks the format ({', '.join(EXPORT_TARGETS)}). "
                     "Without --prune-aux or --exit, every head is a named output.")
    add_spec_arguments(parser)
    add_run_argument(parser)
    parser.add_argument("--checkpoint", metavar="CKPT", help="weights to export (default: the run's best.pt, else last.pt)")
    parser.add_argument("--random-init", action="store_true", help="export untrained weights (a smoke test)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--prune-aux", action="store_true", help="deploy the main exit alone, without any branch")
    which.add_argument("--exit", metavar="NAME", help="deploy this exit alone: the backbone up to it and its head")
    which.add_argument("--cascade", metavar="OUT_DIR", help="write an early-exit cascade: one ONNX segment per exit "
                       "and manifest.json (docs/cascade.md); no OUT.onnx then")


def run(args: argparse.Namespace) -> int:
    if args.cascade:
        from netspec.runtime.cascade_export import export_cascade

        if any(w.endswith(tuple(EXPORT_TARGETS)) and "=" not in w for w in args.words):
            raise UserError("--cascade writes a directory, not an output file", "leave out the .onnx file")
        compiled, checkpoint = _weights(args)
        export_cascade(compiled, Path(args.cascade), checkpoint=checkpoint, random_init=args.random_init)
        return 0
    out, args.words = output_path(args.words)
    check_output_file(out, "export target")
    compiled, checkpoint = _weights(args)
    head = args.exit or (MAIN_HEAD if args.prune_aux else None)
    export(compiled, out, head=head, checkpoint=checkpoint, random_init=args.random_init)
    return 0


def _weights(args: argparse.Namespace):
    """The compiled spec and the checkpoint to export: the run's (its recorded spec, its best.pt) unless
    --random-init."""
    if args.random_init:
        if args.checkpoint or args.run:
            raise UserError("--random-init and --checkpoint / --run exclude each other", "give one of them")
        return load(args)[0], None
    compiled, _, path = load_for_weights(args, args.checkpoint)
    return compiled, str(path) if path else None


def output_path(words: list[str]) -> tuple[Path, list[str]]:
    """Split the output file (a registered suffix, e.g. `.onnx`) from the `[SPEC] [key=value]` words."""
    outs = [w for w in words if w.endswith(tuple(EXPORT_TARGETS)) and "=" not in w]
    if len(outs) != 1:
        raise UserError(f"give one output file ending in {' or '.join(EXPORT_TARGETS)}"
                        + (f", not {len(outs)}" if outs else ""), "e.g. `netspec export --prune-aux model.onnx`")
    return Path(outs[0]), [w for w in words if w != outs[0]]
