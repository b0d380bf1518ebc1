"""`netspec export`."""
from __future__ import annotations

import argparse
from pathlib import Path

from netspec.errors import UserError
from netspec.project import check_output_file
from netspec.spec import MAIN_HEAD
from netspec.compiler.cascade import CONFIDENCE
from netspec.runtime.export import EXPORT_TARGETS, export
from netspec.runtime.report import Report
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
    which.add_argument("--cascade", metavar="OUT_DIR", help="write an early-exit cascade: one ONNX segment per exit, "
                       "full.onnx, anytime.onnx and manifest.json (docs/cascade.md); no OUT.onnx then")
    which.add_argument("--anytime", metavar="OUT.onnx", help="write the early-exit cascade as one ONNX model with If "
                       "nodes (inputs: the images and `thresholds`; outputs: `logits`, `exit`); docs/cascade.md")
    parser.add_argument("--confidence", choices=list(CONFIDENCE), default="max",
                        help="with --cascade/--anytime: the exit criterion computed in the graph, on 0..1 "
                             "(max softmax probability, margin p1 − p2, or 1 − entropy / ln C; default max)")
    parser.add_argument("--thresholds", metavar="T1,T2,...", default=None,
                        help="with --cascade/--anytime: one threshold per early exit, 0 (always leave) to 1 (never; "
                             "the default until `netspec calibrate` sets them)")


def run(args: argparse.Namespace) -> int:
    if not (args.cascade or args.anytime) and (args.thresholds is not None or args.confidence != "max"):
        raise UserError("--thresholds and --confidence belong to --cascade DIR or --anytime OUT.onnx",
                        "add one of them, or leave these out")
    if args.cascade or args.anytime:
        from netspec.runtime.cascade_export import export_anytime, export_cascade

        if any(w.endswith(tuple(EXPORT_TARGETS)) and "=" not in w for w in args.words):
            raise UserError(f"--{'cascade' if args.cascade else 'anytime'} names its output; give no other output file",
                            "leave out the other .onnx file")
        thresholds = parse_thresholds(args.thresholds)
        compiled, checkpoint = _weights(args)
        options = dict(checkpoint=checkpoint, random_init=args.random_init, thresholds=thresholds,
                       criterion=args.confidence, report=Report.console())
        if args.cascade:
            export_cascade(compiled, Path(args.cascade), **options)
        else:
            out = Path(args.anytime)
            check_output_file(out, "export target")
            export_anytime(compiled, out, **options)
        return 0
    out, args.words = output_path(args.words)
    check_output_file(out, "export target")
    compiled, checkpoint = _weights(args)
    head = args.exit or (MAIN_HEAD if args.prune_aux else None)
    export(compiled, out, head=head, checkpoint=checkpoint, random_init=args.random_init, report=Report.console())
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


def parse_thresholds(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise UserError(f"--thresholds {text!r} is not a comma-separated list of numbers",
                        "e.g. --thresholds 0.9,0.8 (one per early exit)") from None


def output_path(words: list[str]) -> tuple[Path, list[str]]:
    """Split the output file (a registered suffix, e.g. `.onnx`) from the `[SPEC] [key=value]` words."""
    outs = [w for w in words if w.endswith(tuple(EXPORT_TARGETS)) and "=" not in w]
    if len(outs) != 1:
        raise UserError(f"give one output file ending in {' or '.join(EXPORT_TARGETS)}"
                        + (f", not {len(outs)}" if outs else ""), "e.g. `netspec export --prune-aux model.onnx`")
    return Path(outs[0]), [w for w in words if w != outs[0]]
