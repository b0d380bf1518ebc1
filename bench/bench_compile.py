"""Compile time of this tree against a baseline commit (default c53d750, the last one that built the initial
weights at compile time), old and new run alternately in fresh processes.

    .venv/bin/python bench/bench_compile.py [--base c53d750] [--repeats 5] [--threads 1]

Two tables, in markdown on stdout:
- in-process: each pass, parse through what `netspec compile` lowers (the baseline: the real training module
  with its initial weights; this tree: the weightless graph of `model.py`), median of the repeats after one
  warm-up compile, each tree in its own process, the trees alternated;
- whole process: `python -c "import torch"`, then `netspec compile specs/cnds8_fmnist.yaml` of each tree, in turn,
  with an A/A control (this tree against itself); medians and the median of the pair-by-pair ratios.
The baseline is `git archive`d into a temporary directory and imported from there. Timings depend on the machine
and its load: the header says the thread count and the load average before and after.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("ResNet-20", "resnet32", ["vars.n=3"]), ("ResNet-1202", "resnet32", ["vars.n=200"]),
         ("ResNet-1202 + DKS", "dks_resnet1202", []), ("CNDS-8 (ImageNet)", "cnds8", []),
         ("CNDS-8 Fashion-MNIST", "cnds8_fmnist", [])]
PASSES = ("parse", "validate", "expand", "graph", "shapes", "lower")
# Run in a child: `sys.path[0]` is the tree's package layout; the editable install's finder (this checkout)
# is dropped so that `netspec` comes from there.
PRELUDE = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
           "sys.path.insert(0, {layout!r}); ")


def timed_compile(spec: Path, overrides: list[str]) -> dict[str, float]:
    """Seconds per pass of one compile, as `netspec compile` runs them (in the tree `netspec` is imported from)."""
    lowering = importlib.import_module("netspec.compiler.lower")  # the module (the package exports a function so named)
    from netspec.compiler.expand import expand
    from netspec.compiler.graph import build_graph, check_graph
    from netspec.compiler.heads import check_heads
    from netspec.compiler.parse import parse
    from netspec.compiler.shapes import infer_shapes
    from netspec.compiler.validate import validate

    times, start = {}, time.perf_counter()

    def lap(name):
        nonlocal start
        now = time.perf_counter()
        times[name], start = now - start, now

    raw, context = parse(spec, overrides)
    lap("parse")
    model = validate(raw)
    lap("validate")
    flat = expand(model, context)
    lap("expand")
    net = check_graph(build_graph(model, flat))
    lap("graph")
    net = check_heads(infer_shapes(net))
    lap("shapes")
    if hasattr(lowering, "lower_graph"):  # this tree: compile writes model.py from the graph, no weights
        lowering.lower_graph(net).python_code(root_module="self")
    else:  # the baseline: compile_spec built the training module, weights and all
        lowering.lower(net).code
    lap("lower")
    return times


def worker(repeats: int) -> None:
    """In a child process: warm up, then time every case; print JSON {case: {pass: median}, nodes}."""
    timed_compile(ROOT / "specs/resnet32.yaml", ["vars.n=3"])
    out = {}
    for label, spec, overrides in CASES:
        runs = [timed_compile(ROOT / f"specs/{spec}.yaml", overrides) for _ in range(repeats)]
        out[label] = {p: statistics.median(r[p] for r in runs) for p in PASSES}
        out[label]["total"] = statistics.median(sum(r.values()) for r in runs)
    print(json.dumps(out))


def baseline_layout(commit: str, where: Path) -> Path:
    """The baseline's files as the installed package lays them out: netspec/, netspec/compiler, netspec/runtime."""
    tree = where / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    layout = where / "layout"
    shutil.copytree(tree / "netspec", layout / "netspec")
    for package in ("compiler", "runtime"):
        (layout / "netspec" / package).symlink_to(tree / package)
    return layout


def child(layout: Path | None, code: str, env: dict, cwd: Path) -> tuple[float, str]:
    """Wall seconds and stdout of `python -c code` with `netspec` from `layout` (None: this checkout)."""
    prelude = PRELUDE.format(layout=str(layout)) if layout else ""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                            cwd=cwd, check=True)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="c53d750", help="baseline commit (default c53d750)")
    parser.add_argument("--repeats", type=int, default=5, help="compiles per case, and whole-process runs")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every child (default 1)")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = baseline_layout(args.base, tmp)
        env["NETSPEC_BUILD"] = str(tmp / "build")
        load = os.getloadavg()[0]
        print(f"baseline {args.base} vs this tree; OMP_NUM_THREADS={args.threads}; load average {load:.2f} at the start")
        bench = f"import runpy; sys.argv = ['bench', '--worker', '{args.repeats}']; runpy.run_path({str(Path(__file__))!r}, run_name='__main__')"
        results = {}
        for tree, layout in (("base", old), ("this", None), ("base", old), ("this", None)):  # alternated
            runs = json.loads(child(layout, bench if layout else "import sys; " + bench, env, ROOT)[1])
            for case, row in runs.items():
                results.setdefault((tree, case), []).append(row)
        print(f"\nin-process, median of {args.repeats} compiles per process, two processes per tree (alternated); "
              "the figure is the better process's median:\n")
        print("| net | tree | " + " | ".join(PASSES) + " | total s |")
        print("|---" * (len(PASSES) + 3) + "|")
        for label, _, _ in CASES:
            for tree in ("base", "this"):
                row = min(results[(tree, label)], key=lambda r: r["total"])
                cells = " | ".join(f"{row[p]:.3f}" for p in PASSES)
                print(f"| {label} | {args.base if tree == 'base' else 'this'} | {cells} | {row['total']:.3f} |")
        spec = str(ROOT / "specs/cnds8_fmnist.yaml")
        compile_code = f"sys.argv = ['netspec', 'compile', {spec!r}]; from netspec.cli import main; main()"
        commands = {"torch": (None, "import torch"), "base": (old, compile_code),
                    "this": (None, "import sys; " + compile_code), "this (A/A)": (None, "import sys; " + compile_code)}
        walls: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats + 1):  # the first round is a warm-up
            for name, (layout, code) in commands.items():
                walls[name].append(child(layout, code, env, tmp)[0])
        walls = {name: times[1:] for name, times in walls.items()}
        med = {name: statistics.median(times) for name, times in walls.items()}
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(walls[a], walls[b]))  # noqa: E731
        print(f"\nwhole process `netspec compile specs/cnds8_fmnist.yaml`, median of {args.repeats} interleaved runs "
              f"(load average {os.getloadavg()[0]:.2f} at the end):\n")
        print(f"- `python -c \"import torch\"`: {med['torch']:.2f} s")
        print(f"- {args.base}: {med['base']:.2f} s (import torch + {med['base'] - med['torch']:.2f} s)")
        print(f"- this tree: {med['this']:.2f} s (import torch + {med['this'] - med['torch']:.2f} s); "
              f"this/{args.base} {ratio('this', 'base'):.2f}, A/A control {ratio('this', 'this (A/A)'):.2f}")


if __name__ == "__main__":
    main()
