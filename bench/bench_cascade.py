"""Benchmark of an early-exit cascade (not a test): onnxruntime, the runner and the If-model vs the full model.

    python bench/bench_cascade.py --cascade DIR --forced [--n 20] [--rounds 7] [--clock cpu] [--json OUT]
    python bench/bench_cascade.py --cascade DIR --batched [--n 256] [--rounds 5] [--json OUT]
    python bench/bench_cascade.py --cascade DIR SPEC [key=value ...] [--start 0] [--n 500] [--rounds 5] [--json OUT]

`--forced` ("latency follows FLOPs", no data or training needed): on N random normal images at batch 1, every
input forced out at each exit in turn (thresholds 1 before it, 0 at it; the last row is "never exit early",
thresholds 1 everywhere), by the runner (`Cascade.run`) and by the If-model (DIR/anytime.onnx fed those
thresholds), against the pruned full model (DIR/full.onnx) and an A/A copy of it, all in the same interleaved
rounds (`runtime/cascade_bench.py`). Prints per exit: FLOPs share, latency share, the excess of one over the other.

`--batched`: the batched early exit at batch 64 (`Cascade.run` gathers the rows that go on): for each early exit,
about half of N random inputs leave there (its threshold at a confidence half of them exceed; untrained exits
can give many inputs the same confidence), the rest at main; throughput
÷ the full model's beside the bound the mean FLOPs set.

With a SPEC (trained cascades): on N test examples from `--start` (e.g. calibrate's report split) at the
manifest's thresholds, top-1 and mean FLOPs of the cascade and of the full model, batch-1 latency of the runner,
of DIR/anytime.onnx and of the full model (+ A/A), and throughput at batch 64.

`--clock cpu` times the CPU time of the calling thread (with one onnxruntime thread all the work runs in it):
steadier than the wall clock on a machine other processes share. Sessions: `--threads` intra-op threads (1).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from netspec.runtime.cascade import ANYTIME, Cascade, session
from netspec.runtime.cascade_graph import float32_thresholds
from netspec.runtime.cascade_bench import Timer, forced, forced_share, interleaved


def anytime_case(cascade: Cascade, timer: Timer, thresholds: list[float]):
    """The If-model (DIR/anytime.onnx) at batch 1 on the timer's inputs, fed `thresholds`, run the standard way
    (one `session.run` per input, like the full model)."""
    model = session(cascade.folder / ANYTIME, cascade.threads)
    feed = float32_thresholds(thresholds[:-1])
    names = ["logits", "exit"]

    def run():
        for one in timer.ones:
            model.run(names, {cascade.input_name: one, "thresholds": feed})
    return run


def alone_case(cascade: Cascade, timer: Timer, k: int):
    """Exit k's model alone (the backbone up to exit k and its head: the first model of the plan forcing exit k),
    run the standard way: what the layers up to exit k cost without any runner."""
    _, stages = cascade.prepare(forced(len(cascade.exits), k))
    model = stages[0].call.session
    outputs = [stages[0].outputs[0]]

    def run():
        for one in timer.ones:
            model.run(outputs, {cascade.input_name: one})
    return run


def load_figures(cascade: Cascade, n: int) -> dict:
    return {"cascade": str(cascade.folder), "spec": cascade.manifest.get("spec_name"), "threads": cascade.threads,
            "inputs": n, "load_average": os.getloadavg()}


def bench_forced(cascade: Cascade, n: int, rounds: int, clock: str) -> dict:
    x = np.random.default_rng(0).standard_normal((n, *cascade.input_shape)).astype(np.float32)
    timer = Timer(cascade, x)
    k_max = len(cascade.exits)
    cases = {"full": timer.full_batch1}
    for k, e in enumerate(cascade.exits):
        cases[f"runner {e}"] = timer.cascade_batch1(forced(k_max, k))
        cases[f"if {e}"] = anytime_case(cascade, timer, forced(k_max, k))
        cases[f"alone {e}"] = alone_case(cascade, timer, k)
    cases["full (A/A)"] = timer.full_batch1
    seconds = interleaved(cases, rounds, clock)
    full = seconds["full"]
    rows = [{"exit": e, "flops_share": forced_share(cascade, k),
             "runner": seconds[f"runner {e}"] / full, "if_model": seconds[f"if {e}"] / full,
             "alone": seconds[f"alone {e}"] / full}
            for k, e in enumerate(cascade.exits)]
    return load_figures(cascade, n) | {"rounds": rounds, "clock": clock, "full_ms": full / n * 1e3,
                                       "aa": seconds["full (A/A)"] / full, "exits": rows}


def bench_batched(cascade: Cascade, n: int, rounds: int, clock: str, batch: int = 64) -> dict:
    """Batched early exit: for each early exit k, its threshold at the confidence about half of N random inputs
    exceed (they leave there, the rest go on to the main exit; the other exits never), the throughput at batch `batch`
    against the full model's, beside the bound the FLOPs set (full FLOPs ÷ mean FLOPs)."""
    x = np.random.default_rng(0).standard_normal((n, *cascade.input_shape)).astype(np.float32)
    _, confidences = cascade.all_exits(x)
    timer, rows = Timer(cascade, x), []
    for k, e in enumerate(cascade.exits[:-1]):
        thresholds = [1.0] * len(cascade.exits)
        values = np.unique(confidences[k])  # the value whose strictly-above share is nearest one half
        thresholds[k] = float(values[np.argmin([abs((confidences[k] > v).mean() - 0.5) for v in values])])
        result = cascade.run(x, thresholds)
        per_second = timer.throughput(thresholds, batch, rounds, clock)
        rows.append({"exit": e, "threshold": thresholds[k], "left_there": float((result.exit == k).mean()),
                     "flops_bound": float(cascade.manifest["full_flops"] / result.flops.mean()),
                     "throughput_ratio": per_second["cascade"] / per_second["full"],
                     "aa": per_second["full (A/A)"] / per_second["full"], "full_per_second": per_second["full"]})
    return load_figures(cascade, n) | {"rounds": rounds, "clock": clock, "batch": batch, "exits": rows}


def print_batched(f: dict) -> None:
    print(f"{f['spec']}: batch {f['batch']}, about half of {f['inputs']} random inputs leave at one exit, the rest at main; "
          f"{f['threads']} thread(s), median of {f['rounds']} interleaved rounds, {f['clock']} clock; load average "
          + ", ".join(f"{v:.2f}" for v in f["load_average"]))
    print("| exit | left there | throughput ÷ full (A/A) | FLOPs bound (full ÷ mean FLOPs) |")
    print("|---|---|---|---|")
    for r in f["exits"]:
        print(f"| {r['exit']} | {r['left_there']:.0%} | {r['throughput_ratio']:.3f} ({r['aa']:.3f}) | {r['flops_bound']:.3f} |")


def print_forced(f: dict) -> None:
    print(f"{f['spec']}: every input forced out at one exit, batch 1, {f['threads']} thread(s), {f['inputs']} random "
          f"inputs, median of {f['rounds']} interleaved rounds, {f['clock']} clock; full.onnx {f['full_ms']:.3f} ms; "
          f"A/A {f['aa']:.3f}; load average {', '.join(f'{v:.2f}' for v in f['load_average'])}")
    print("| exit | FLOPs share | exit model alone | runner latency share | excess | If-model latency share | excess |")
    print("|---|---|---|---|---|---|---|")
    for r in f["exits"]:
        print(f"| {r['exit']} | {r['flops_share']:.3f} | {r['alone']:.3f} | {r['runner']:.3f} | "
              f"{r['runner'] - r['flops_share']:+.3f} | {r['if_model']:.3f} | {r['if_model'] - r['flops_share']:+.3f} |")
    print("(the last row is 'never exit early': thresholds 1 everywhere)")


def bench_trained(cascade: Cascade, words: list[str], start: int, n: int, rounds: int, clock: str) -> dict:
    from netspec.compiler import compile_spec
    from netspec.runtime.data import Batches, load_dataset

    spec = compile_spec(words[0], words[1:]).spec
    data = load_dataset(spec.data, spec.input.shape)
    stop = min(start + n, len(data.test_y))
    x, y = next(iter(Batches(data.test_x[start:stop], data.test_y[start:stop], stop - start, train=False,
                             mean=spec.input.mean, std=spec.input.std)))
    x, y = x.numpy(), y.numpy()
    timer = Timer(cascade, x)
    thresholds = cascade.thresholds
    cases = {"full": timer.full_batch1, "runner": timer.cascade_batch1(thresholds),
             "if-model": anytime_case(cascade, timer, thresholds), "full (A/A)": timer.full_batch1}
    seconds = interleaved(cases, rounds, clock)
    result = cascade.run(x)
    outputs, name = timer.full_names
    full_logits = np.concatenate([timer.full_session.run(outputs, {name: one})[0] for one in timer.ones])
    per_second = timer.throughput(thresholds, 64, rounds, clock)
    return load_figures(cascade, len(x)) | {
        "examples": [start, stop], "rounds": rounds, "clock": clock,
        "thresholds": dict(zip(cascade.exits[:-1], thresholds)),
        "top1_full": float((full_logits.argmax(1) == y).mean() * 100),
        "top1_cascade": float((result.logits.argmax(1) == y).mean() * 100),
        "mean_flops_ratio": float(result.flops.mean() / cascade.manifest["full_flops"]),
        "share": {e: float((result.exit == k).mean()) for k, e in enumerate(cascade.exits)},
        "latency_ms": {k: v / len(x) * 1e3 for k, v in seconds.items()},
        "latency_ratio": seconds["runner"] / seconds["full"], "if_ratio": seconds["if-model"] / seconds["full"],
        "aa_ratio": seconds["full (A/A)"] / seconds["full"], "throughput_64": per_second,
        "throughput_ratio": per_second["cascade"] / per_second["full"]}


def print_trained(f: dict) -> None:
    ms = f["latency_ms"]
    print(f"| test inputs {f['examples'][0]}–{f['examples'][1] - 1}, {f['threads']} thread(s), median of {f['rounds']} "
          f"interleaved rounds, {f['clock']} clock | full | runner | If-model | ratio runner (If) |")
    print("|---|---|---|---|---|")
    print(f"| top-1 (%) | {f['top1_full']:.2f} | {f['top1_cascade']:.2f} | | {f['top1_cascade'] - f['top1_full']:+.2f} points |")
    print(f"| mean FLOPs | 1 | {f['mean_flops_ratio']:.3f} | | |")
    print(f"| batch-1 latency (ms) | {ms['full']:.3f} | {ms['runner']:.3f} | {ms['if-model']:.3f} | "
          f"{f['latency_ratio']:.3f} ({f['if_ratio']:.3f}); A/A {f['aa_ratio']:.3f} |")
    t = f["throughput_64"]
    print(f"| batch-64 inputs/s | {t['full']:.0f} | {t['cascade']:.0f} | | {f['throughput_ratio']:.3f} |")
    print("share: " + ", ".join(f"{k} {v:.1%}" for k, v in f["share"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="*", help="SPEC [key=value ...] (not with --forced)")
    parser.add_argument("--cascade", required=True)
    parser.add_argument("--forced", action="store_true", help="latency follows FLOPs: forced exits, random inputs")
    parser.add_argument("--batched", action="store_true", help="batch-64 throughput, half the inputs leaving at each "
                        "early exit in turn, random inputs")
    parser.add_argument("--start", type=int, default=0, help="the first test example used")
    parser.add_argument("--n", type=int, default=None, help="inputs (default 20 with --forced, else 500)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    cascade = Cascade.load(Path(args.cascade), threads=args.threads)
    if args.forced:
        figures = bench_forced(cascade, args.n or 20, args.rounds, args.clock)
        print_forced(figures)
    elif args.batched:
        figures = bench_batched(cascade, args.n or 256, args.rounds, args.clock)
        print_batched(figures)
    else:
        if not args.words:
            parser.error("give the SPEC (or --forced)")
        figures = bench_trained(cascade, args.words, args.start, args.n or 500, args.rounds, args.clock)
        print_trained(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
