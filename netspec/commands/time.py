"""`netspec time`: forward and backward time per node, per branch, train step vs deploy forward (like `caffe time`);
`netspec time --cascade DIR`: an early-exit cascade's per-segment and per-decision cost and forced-exit latencies."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from netspec.errors import UserError
from netspec.commands.common import add_spec_arguments, load


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    parser.add_argument("--repeats", type=int, default=10, metavar="N", help="timed runs per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed runs first (default 2)")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="batch size (default: train.batch_size)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--cascade", metavar="DIR", default=None,
                        help="time an early-exit cascade directory instead (no spec needed): each segment and exit "
                             "decision at batch 1, and forcing every input out at each exit against full.onnx")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="with --cascade: onnxruntime threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="with --cascade: the CPU time of the calling thread (default with one thread: what "
                             "other processes take is left out) or wall time (default with more threads)")


def run(args: argparse.Namespace) -> int:
    for option in ("repeats", "batch"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise UserError(f"--{option} must be positive, not {value}", f"e.g. --{option} 10")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, not {args.warmup}", "e.g. --warmup 2")
    if args.cascade:
        from netspec.runtime.cascade_bench import format_cascade_timing, time_cascade

        if args.threads < 1:
            raise UserError(f"--threads must be 1 or more, not {args.threads}", "e.g. --threads 1")
        if args.clock == "cpu" and args.threads > 1:
            raise UserError(f"--clock cpu counts the calling thread only, and --threads {args.threads} runs the work "
                            "in other threads too", "use --clock wall, or --threads 1")
        clock = args.clock or ("cpu" if args.threads == 1 else "wall")
        report = time_cascade(Path(args.cascade), repeats=args.repeats, threads=args.threads, clock=clock)
        print(json.dumps(report, indent=1) if args.json else format_cascade_timing(report))
        return 0
    from netspec.runtime.timing import format_timing, time_spec

    compiled, _ = load(args)
    report = time_spec(compiled, repeats=args.repeats, warmup=args.warmup, batch=args.batch)
    print(json.dumps(report, indent=1) if args.json else format_timing(report))
    return 0
