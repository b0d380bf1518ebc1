"""`netspec calibrate`: an early-exit cascade's accuracy vs mean-FLOPs curve on the test split, and its thresholds."""
from __future__ import annotations

import argparse
from pathlib import Path

from netspec.errors import UserError
from netspec.runtime.calibrate import calibrate, format_report
from netspec.runtime.cascade import read_manifest
from netspec.runtime.data import Batches, load_dataset
from netspec.commands.common import add_spec_arguments, load


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    parser.add_argument("--cascade", required=True, metavar="DIR", help="a directory written by `export --cascade`")
    parser.add_argument("--target-drop", type=float, default=0.5, metavar="POINTS",
                        help="top-1 points the cascade may lose against the full net (default 0.5)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="calibrate on the first N test examples")


def run(args: argparse.Namespace) -> int:
    if not args.target_drop >= 0:
        raise UserError(f"--target-drop must be 0 or more, not {args.target_drop}", "e.g. --target-drop 0.5")
    folder = Path(args.cascade)
    manifest = read_manifest(folder)
    compiled, _ = load(args)
    spec = compiled.spec
    if manifest["spec_name"] != spec.name:
        raise UserError(f"{folder} is a cascade of spec '{manifest['spec_name']}', not of {compiled.path}",
                        "give the spec the cascade was exported from")
    data = load_dataset(spec.data, spec.input.shape)
    n = len(data.test_y) if args.limit is None else min(args.limit, len(data.test_y))
    if n == 0:
        raise UserError("the test split is empty", "calibrate needs labelled test examples")
    x, y = next(iter(Batches(data.test_x[:n], data.test_y[:n], n, train=False, mean=manifest["input"]["mean"],
                             std=manifest["input"]["std"])))
    report = calibrate(folder, x.numpy(), y.numpy(), args.target_drop)
    print(format_report(report))
    print(f"\nwrote the thresholds into {folder / 'manifest.json'}; {folder / 'calibration.json'}, "
          f"{folder / 'calibration.png'}")
    return 0
