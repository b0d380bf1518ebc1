"""Compile time, parse through lowering, per pass, for CIFAR ResNets with and without DKS heads.

    .venv/bin/python bench/bench_compile.py [--repeats 3]

Times are in-process after one warm-up compile (the first meta-device op imports torch._dynamo and
sympy, a one-time ~2-3 s that the cold figure shows). Reports the median of the repeats, seconds per
1000 nodes (flat = linear growth) and writes a markdown table to stdout.
"""
from __future__ import annotations

import argparse
import statistics
import time

from netspec.compiler.expand import expand
from netspec.compiler.graph import build_graph, check_graph
from netspec.compiler.lower import lower
from netspec.compiler.parse import parse
from netspec.compiler.shapes import infer_shapes
from netspec.compiler.validate import validate

CASES = [("ResNet-20", "resnet32", 3), ("ResNet-20 + DKS", "dks_resnet32", 3),
         ("ResNet-110", "resnet32", 18), ("ResNet-110 + DKS", "dks_resnet32", 18),
         ("ResNet-1202", "resnet32", 200), ("ResNet-1202 + DKS", "dks_resnet1202", 200)]
PASSES = ("parse", "validate", "expand", "graph", "shapes", "lower")


def timed_compile(spec: str, n: int) -> tuple[dict[str, float], int]:
    times, start = {}, time.perf_counter()

    def lap(name):
        nonlocal start
        now = time.perf_counter()
        times[name], start = now - start, now

    raw, context = parse(f"specs/{spec}.yaml", [f"vars.n={n}"])
    lap("parse")
    model = validate(raw)
    lap("validate")
    flat = expand(model, context)
    lap("expand")
    graph = check_graph(build_graph(model, flat))
    lap("graph")
    graph = infer_shapes(graph)
    lap("shapes")
    lower(graph)
    lap("lower")
    return times, len(flat.nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cold = time.perf_counter()
    timed_compile("resnet32", 3)
    print(f"cold first compile (includes the one-time torch._dynamo import): {time.perf_counter() - cold:.2f} s\n")
    print("| net | nodes | " + " | ".join(PASSES) + " | total s | s per 1k nodes |")
    print("|---" * (len(PASSES) + 4) + "|")
    for label, spec, n in CASES:
        runs = [timed_compile(spec, n) for _ in range(args.repeats)]
        nodes = runs[0][1]
        per_pass = {p: statistics.median(r[0][p] for r in runs) for p in PASSES}
        total = statistics.median(sum(r[0].values()) for r in runs)
        cells = " | ".join(f"{per_pass[p]:.3f}" for p in PASSES)
        print(f"| {label} | {nodes} | {cells} | {total:.2f} | {1000 * total / nodes:.2f} |")


if __name__ == "__main__":
    main()
