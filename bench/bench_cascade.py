"""Benchmark of an early-exit cascade (not a test): batch 1 in onnxruntime, the cascade vs the full pruned model.

    python bench/bench_cascade.py SPEC [key=value ...] --cascade DIR [--full MAIN.onnx] [--start 0] [--n 500] [--rounds 5]

DIR from `netspec export --cascade DIR` (thresholds from `netspec calibrate`); the full model is DIR's full.onnx
(the pruned main exit), or MAIN.onnx (e.g. from `netspec export --prune-aux` of the same checkpoint). On N test
examples from index `--start` (e.g. calibrate's --holdout, to bench on examples not used to choose), one at a time, in interleaved
rounds (full, cascade, full again as the A/A control: load drift hits all alike); the figure is the median
round's mean per-input latency. Prints top-1 of both, mean FLOPs, latency, and the ratios cascade / full.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from netspec.compiler import compile_spec
from netspec.runtime.cascade import Cascade, session
from netspec.runtime.data import Batches, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", help="SPEC [key=value ...]")
    parser.add_argument("--cascade", required=True)
    parser.add_argument("--full", default=None, help="the full model (default: the cascade's full.onnx)")
    parser.add_argument("--start", type=int, default=0, help="the first test example used")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    compiled = compile_spec(args.words[0], args.words[1:])
    spec = compiled.spec
    data = load_dataset(spec.data, spec.input.shape)
    stop = min(args.start + args.n, len(data.test_y))
    n = stop - args.start
    x, y = next(iter(Batches(data.test_x[args.start:stop], data.test_y[args.start:stop], n, train=False,
                             mean=spec.input.mean, std=spec.input.std)))
    x, y = x.numpy(), y.numpy()
    cascade = Cascade.load(Path(args.cascade), threads=args.threads)
    full = session(args.full, args.threads) if args.full else cascade.full_session()
    name, out = full.get_inputs()[0].name, full.get_outputs()[0].name

    def run_full():
        return np.concatenate([full.run([out], {name: x[i:i + 1]})[0] for i in range(n)])

    def run_cascade():
        results = [cascade.run(x[i:i + 1]) for i in range(n)]
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    full_logits = run_full()
    casc_logits, where = run_cascade()  # warm-up and the figures
    times = {"full": [], "cascade": [], "full (A/A)": []}
    for _ in range(args.rounds):
        for key, fn in (("full", run_full), ("cascade", run_cascade), ("full (A/A)", run_full)):
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) / n * 1e3)
    segments = cascade.manifest["segments"]
    cumulative = np.asarray([s["cumulative_flops"] for s in segments])
    full_flops = cascade.manifest["full_flops"]
    latency = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "examples": [args.start, stop], "full": args.full or str(Path(args.cascade) / cascade.manifest["full"]),
        "rounds": args.rounds, "threads": args.threads,
        "thresholds": {s["exit"]: s["threshold"] for s in segments[:-1]},
        "top1_full": float((full_logits.argmax(1) == y).mean() * 100),
        "top1_cascade": float((casc_logits.argmax(1) == y).mean() * 100),
        "mean_flops_ratio": float(cumulative[where].mean() / full_flops),
        "share": {s["exit"]: float((where == k).mean()) for k, s in enumerate(segments)},
        "latency_ms": latency, "latency_ratio": latency["cascade"] / latency["full"],
        "aa_ratio": latency["full (A/A)"] / latency["full"],
    }
    print(f"| test inputs {args.start}–{stop - 1}, batch 1, {args.threads} thread(s), median of {args.rounds} interleaved rounds | full | cascade | ratio |")
    print("|---|---|---|---|")
    print(f"| top-1 (%) | {figures['top1_full']:.2f} | {figures['top1_cascade']:.2f} | {figures['top1_cascade'] - figures['top1_full']:+.2f} points |")
    print(f"| mean FLOPs | 1 | {figures['mean_flops_ratio']:.3f} | {figures['mean_flops_ratio']:.3f} |")
    print(f"| latency per input (ms) | {latency['full']:.3f} | {latency['cascade']:.3f} | {figures['latency_ratio']:.3f} "
          f"(A/A {figures['aa_ratio']:.3f}) |")
    print("share: " + ", ".join(f"{k} {v:.1%}" for k, v in figures["share"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
