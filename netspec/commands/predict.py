"""`netspec predict` (onnxruntime only: this command never imports torch)."""
from __future__ import annotations

import argparse
from pathlib import Path

from netspec.runtime.predict import predict, predict_cascade
from netspec.runtime.report import Report


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="a model written by `netspec export`, or a cascade directory (`export --cascade`)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="images (PNG, JPG, ...) or .npy/.npz arrays: uint8 pixels 0..255, or floats 0..1")
    parser.add_argument("-k", "--top", type=int, default=3, help="classes to show per input (default 3)")


def run(args: argparse.Namespace) -> int:
    if Path(args.model).is_dir():
        return predict_cascade(Path(args.model), [Path(p) for p in args.inputs], args.top, args.limits, Report.console())
    return predict(Path(args.model), [Path(p) for p in args.inputs], args.top, args.limits, Report.console())
