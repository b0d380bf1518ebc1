"""`netspec import-caffe NET.prototxt [--solver S.prototxt] [--weights W.caffemodel] -o specs/x.yaml`."""
from __future__ import annotations

import argparse

from netspec.errors import UserError
from netspec.compiler.caffe import import_caffe
from netspec.compiler.summary import summarise


def _shape(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise UserError(f"--input-shape {text}: give C,H,W", "e.g. --input-shape 3,227,227")
    return values


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("net", metavar="NET.prototxt", help="the Caffe net (train_val or deploy; V1 or V2)")
    parser.add_argument("-o", "--output", required=True, metavar="SPEC.yaml", help="the spec to write")
    parser.add_argument("--solver", metavar="SOLVER.prototxt", help="Caffe solver: becomes the spec's train: section")
    parser.add_argument("--weights", metavar="W.caffemodel", help="trained weights: written as a netspec checkpoint")
    parser.add_argument("--checkpoint", metavar="OUT.pt", help="where to write the checkpoint (default: SPEC.pt)")
    parser.add_argument("--input-shape", metavar="C,H,W", help="the input's shape when the prototxt does not say "
                        "(default for a Data layer: its LMDB database's first record and crop_size)")
    parser.add_argument("--train-size", type=int, metavar="N", help="training examples per epoch: converts the "
                        "solver's iterations to epochs (default: the TRAIN LMDB database's record count)")


def run(args: argparse.Namespace) -> int:
    if args.train_size is not None and args.train_size <= 0:
        raise UserError(f"--train-size must be positive, not {args.train_size}", "e.g. --train-size 50000")
    shape = _shape(args.input_shape) if args.input_shape else None
    result = import_caffe(args.net, args.output, args.solver, args.weights, args.checkpoint, shape, args.train_size)
    params = summarise(result.compiled.network)["train"]["params"]
    heads = ", ".join(h.name for h in result.structure.heads)
    print(f"wrote {result.spec_path}: {len(result.compiled.network.nodes)} nodes, heads {heads}, "
          f"{params:,} parameters; it compiles")
    plan = result.data
    if plan.section:
        test = f" and {plan.section['test_path']}" if "test_path" in plan.section else ""
        print(f"data: source lmdb, {plan.section['path']} ({plan.train_size:,} records){test}; input "
              f"{'x'.join(map(str, plan.shape))} from its first record")
    if result.checkpoint:
        print(f"wrote {result.checkpoint} (weights of {args.weights}); use it with --checkpoint "
              f"{result.checkpoint}, or init: {{from: {result.checkpoint}}}")
        if result.unused_blobs:
            print(f"note: not imported (no such layer in the TRAIN net): {', '.join(result.unused_blobs)}")
    return 0
