"""`netspec calibrate`: an early-exit cascade's accuracy vs mean-cost curve, its thresholds, its measured latency."""
from __future__ import annotations

import argparse
from pathlib import Path

from netspec.errors import UserError
from netspec.runtime.calibrate import CHOOSE_BY, Split, calibrate, format_report
from netspec.runtime.cascade import read_manifest
from netspec.runtime.data import Batches, load_dataset
from netspec.commands.common import add_run_argument, add_spec_arguments, compile_recorded, find_run, load


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    add_run_argument(parser)
    parser.add_argument("--cascade", required=True, metavar="DIR", help="a directory written by `export --cascade`")
    parser.add_argument("--target-drop", type=float, default=0.5, metavar="POINTS",
                        help="top-1 points the cascade may lose against the full net (default 0.5)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use the first N examples of each split only")
    parser.add_argument("--holdout", type=int, default=None, metavar="N",
                        help="choose the thresholds on the first N test examples, report them on the others (for "
                             "a spec without a validation split; with data.val_split they are chosen on it and "
                             "reported on the test split)")
    parser.add_argument("--choose-by", choices=CHOOSE_BY, default=None,
                        help="what the chosen thresholds minimise within --target-drop: measured batch-1 latency "
                             "(default), measured time per input at batch 64 (throughput) or mean FLOPs (the "
                             "default with --no-latency)")
    parser.add_argument("--no-latency", action="store_true", help="do not measure latency (FLOPs only)")
    parser.add_argument("--latency-inputs", type=int, default=500, metavar="N",
                        help="time the runner on the first N examples of the choose split (to choose) and of the "
                             "report split (to report; default 500)")
    parser.add_argument("--latency-repeats", type=int, default=3, metavar="N",
                        help="interleaved timing rounds after one warm-up round; the median is kept (default 3)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="onnxruntime threads (default 1)")


def run(args: argparse.Namespace) -> int:
    if not args.target_drop >= 0:
        raise UserError(f"--target-drop must be 0 or more, not {args.target_drop}", "e.g. --target-drop 0.5")
    for flag in ("latency_inputs", "latency_repeats", "threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be 1 or more, not {getattr(args, flag)}",
                            "or give --no-latency to skip the timing")
    if args.no_latency and args.choose_by not in (None, "flops"):
        raise UserError(f"--choose-by {args.choose_by} needs timing, and --no-latency turns it off",
                        "drop --no-latency, or choose by flops")
    choose_by = args.choose_by or ("flops" if args.no_latency else "latency")
    folder = Path(args.cascade)
    manifest = read_manifest(folder)
    run = find_run(args)  # the run's own spec: its data, validation split and limits
    compiled = compile_recorded(run, [w for w in args.words if "=" in w], args.limits) if run is not None else load(args)[0]
    spec = compiled.spec
    if manifest["spec_name"] != spec.name:
        raise UserError(f"{folder} is a cascade of spec '{manifest['spec_name']}', not of {compiled.path}",
                        "give the spec the cascade was exported from")
    data = load_dataset(spec.data, spec.input.shape, compiled.limits)

    def split(name: str, x, y, start: int = 0, stop: int | None = None) -> Split:
        stop = min(len(y), stop if stop is not None else len(y), start + (args.limit or len(y)))
        if stop <= start:
            raise UserError(f"the {name} split is empty", "calibrate needs labelled examples")
        xs, ys = next(iter(Batches(x[start:stop], y[start:stop], stop - start, train=False,
                                   mean=manifest["input"]["mean"], std=manifest["input"]["std"])))
        return Split(name, start, xs.numpy(), ys.numpy())

    if data.val_y is not None and args.holdout is None:
        choose, held = split("val", data.val_x, data.val_y), split("test", data.test_x, data.test_y)
    else:
        n = len(data.test_y) if args.limit is None else min(args.limit, len(data.test_y))
        if args.holdout is not None and not 0 < args.holdout < n:
            raise UserError(f"--holdout {args.holdout} must be between 1 and {n - 1}: the thresholds are chosen on "
                            f"the first N of the {n} test examples and reported on the others",
                            f"e.g. --holdout {n // 2}")
        cut = args.holdout or n
        choose = split("test", data.test_x, data.test_y, 0, cut)
        held = split("test", data.test_x, data.test_y, cut, n) if args.holdout else None
    report = calibrate(folder, choose, held, args.target_drop, 0 if args.no_latency else args.latency_inputs,
                       args.latency_repeats, args.threads, choose_by=choose_by)
    print(format_report(report))
    print(f"\nwrote the thresholds into {folder / 'manifest.json'} and {folder / 'anytime.onnx'}; "
          f"{folder / 'calibration.json'}, {folder / 'calibration.png'}")
    return 0
