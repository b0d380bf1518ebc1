"""Timing a cascade against its full model (onnxruntime and numpy only): what `calibrate` reports, what `netspec
time --cascade` prints and what bench/bench_cascade.py measures.

Every figure comes from interleaved rounds: in each round every case runs over the same inputs one after the
other, in an order shuffled per round (seeded) so that no case always follows the same one (a session run right
after itself finds its weights in cache), after one untimed warm-up round; the full model has an A/A copy among
the cases. A case's figure is the median over the rounds of its mean time per input (batch 1) or of its inputs
per second (batch 64). Load drift on a
shared machine then hits every case alike; the A/A case shows how much the rest can be trusted. `clock`:
"wall" (time.perf_counter, what a user waits) or "cpu" (time.thread_time, the CPU time of the calling thread:
with one onnxruntime thread the work runs in it, and time taken by other processes is left out).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import numpy as np

from netspec.runtime.cascade import Cascade, bind_full, exit_costs

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def interleaved(cases: dict[str, Callable[[], None]], rounds: int, clock: str = "wall") -> dict[str, float]:
    """Seconds per call of each case: the median over `rounds` interleaved rounds, after one warm-up round."""
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    shuffle = np.random.default_rng(0).shuffle
    for r in range(rounds + 1):
        for name in order:
            start = now()
            cases[name]()
            if r:
                times[name].append(now() - start)
        shuffle(order)
    return {name: statistics.median(v) for name, v in times.items()}


class Timer:
    """The cascade and its full model timed on the inputs `x` (normalised, N×C×H×W). The full model
    (`full.onnx`, same session options) is run the standard way, `session.run` on each numpy input, which is also
    the cheapest way to feed a new array to a one-model session (measured, docs/cascade.md); the cascade by
    `Cascade.run` on each input (batch 1) or chunk."""

    def __init__(self, cascade: Cascade, x: np.ndarray):
        self.cascade, self.x = cascade, x
        self.full_session = cascade.full_session()
        self.full_names = ([self.full_session.get_outputs()[0].name], self.full_session.get_inputs()[0].name)
        self.ones = [np.ascontiguousarray(x[i:i + 1]) for i in range(len(x))]

    def full_batch1(self) -> None:
        outputs, name = self.full_names
        for one in self.ones:
            self.full_session.run(outputs, {name: one})

    def cascade_batch1(self, thresholds) -> Callable[[], None]:
        self.cascade.run(self.x[:1], thresholds)  # sessions made before timing (a batch of one's `If` model too)

        def run():
            for i in range(len(self.x)):
                self.cascade.run(self.x[i:i + 1], thresholds)
        return run

    def batch1(self, thresholds: dict[str, list[float]], rounds: int, clock: str = "wall") -> dict[str, float]:
        """Mean ms per input at batch 1 of `full`, of the cascade at each named threshold setting, and `full (A/A)`."""
        cases = {"full": self.full_batch1}
        cases.update({name: self.cascade_batch1(t) for name, t in thresholds.items()})
        cases["full (A/A)"] = self.full_batch1
        return {k: v / len(self.x) * 1e3 for k, v in interleaved(cases, rounds, clock).items()}

    def throughput(self, thresholds: list[float], batch: int, rounds: int, clock: str = "wall") -> dict[str, float]:
        """Inputs per second at batch `batch`: `full`, `cascade` (at `thresholds`) and `full (A/A)`."""
        chunks = [np.ascontiguousarray(self.x[i:i + batch]) for i in range(0, len(self.x), batch)]
        outputs, name = self.full_names
        self.cascade.prepare(thresholds)

        def full():
            for chunk in chunks:
                self.full_session.run(outputs, {name: chunk})

        def cascade():
            for chunk in chunks:
                self.cascade.run(chunk, thresholds)
        seconds = interleaved({"full": full, "cascade": cascade, "full (A/A)": full}, rounds, clock)
        return {k: len(self.x) / v for k, v in seconds.items()}


def forced(exits: int, k: int) -> list[float]:
    """Thresholds that send every input out at exit k: 1 (never) before it, 0 (always) at it."""
    return [1.0] * k + [0.0] + [1.0] * (exits - k - 1) if k < exits - 1 else [1.0] * exits


def forced_share(cascade: Cascade, k: int) -> float:
    """The FLOPs of forcing every input out at exit k (`forced`: no other head runs) ÷ the full model's."""
    return float(exit_costs(cascade.segments, forced(len(cascade.exits), k))[k] / cascade.manifest["full_flops"])


def latency_follows_flops(cascade: Cascade, x: np.ndarray, rounds: int, clock: str = "cpu") -> dict:
    """Batch-1 latency of forcing every input out at each exit, ÷ the full model's, beside the FLOPs share of
    that exit (its cumulative FLOPs ÷ the full model's); the last exit is "never exit early"."""
    k_max = len(cascade.exits)
    timer = Timer(cascade, x)
    ms = timer.batch1({f"exit {e}": forced(k_max, k) for k, e in enumerate(cascade.exits)}, rounds, clock)
    full = ms["full"]
    rows = [{"exit": e, "flops_share": forced_share(cascade, k),
             "ms": ms[f"exit {e}"], "latency_share": ms[f"exit {e}"] / full} for k, e in enumerate(cascade.exits)]
    return {"full_ms": full, "aa": ms["full (A/A)"] / full, "exits": rows, "inputs": len(x), "rounds": rounds,
            "clock": clock, "threads": cascade.threads}


def stage_costs(cascade: Cascade, x: np.ndarray, repeats: int = 200, clock: str = "cpu") -> dict:
    """`netspec time --cascade`: at batch 1, the mean µs of each segment's model alone (every exit deciding, as
    exported) and of one exit decision (reading the confidence and comparing it), and of the full model."""
    _, stages = cascade.prepare([0.0] * len(cascade.exits))
    now = CLOCKS[clock]
    values = cascade.feed(x[:1])
    outs = []
    for stage in stages:
        outs.append(stage.call(values))
        values.update(zip(stage.outputs, outs[-1]))

    def mean_us(fn) -> float:
        fn()
        start = now()
        for _ in range(repeats):
            fn()
        return (now() - start) / repeats * 1e6
    full = bind_full(cascade.full_session())
    image = {full.inputs[0]: values[cascade.input_name]}
    rows = []
    for k, stage in enumerate(stages):
        seg = cascade.segments[k]
        row = {"exit": seg["exit"], "flops": seg["flops"], "us": mean_us(lambda: stage.call(values))}
        if k < len(stages) - 1:
            confidence = outs[k][1]
            row["decision_us"] = mean_us(lambda: bool((confidence.numpy() > 0.5).all()))
        rows.append(row)
    return {"segments": rows, "full_us": mean_us(lambda: full(image)), "full_flops": cascade.manifest["full_flops"],
            "repeats": repeats, "threads": cascade.threads, "clock": clock}


def time_cascade(folder, repeats: int = 10, threads: int | None = 1, inputs: int = 20, clock: str = "cpu") -> dict:
    """`netspec time --cascade DIR`, on `inputs` random normal images: `stage_costs` (each over 20 × `repeats`
    calls) and `latency_follows_flops` (`repeats` interleaved rounds), both on `clock` (a `CLOCKS` name: "cpu"
    leaves out the time other processes take, and is right with one onnxruntime thread only)."""
    cascade = Cascade.load(folder, threads)
    x = np.random.default_rng(0).standard_normal((inputs, *cascade.input_shape)).astype(np.float32)
    return {"cascade": str(folder), "criterion": cascade.criterion, "load_average": os.getloadavg(),
            "stages": stage_costs(cascade, x, 20 * repeats, clock),
            "forced": latency_follows_flops(cascade, x, repeats, clock)}


def format_cascade_timing(report: dict) -> str:
    stages, forced = report["stages"], report["forced"]
    lines = [f"{report['cascade']}: batch 1, {stages['threads']} onnxruntime thread(s), confidence "
             f"'{report['criterion']}', {stages['clock']} clock, load average "
             + ", ".join(f"{v:.2f}" for v in report["load_average"]), "",
             f"each segment alone (every exit deciding, as exported), mean of {stages['repeats']} calls:",
             f"  {'segment of exit':<16} {'MFLOPs':>9} {'µs':>10} {'decision µs':>12}"]
    for row in stages["segments"]:
        decision = f"{row['decision_us']:.1f}" if "decision_us" in row else "-"
        lines.append(f"  {row['exit']:<16} {row['flops'] / 1e6:>9.3f} {row['us']:>10.1f} {decision:>12}")
    total = sum(r["us"] for r in stages["segments"])
    lines += [f"  {'sum':<16} {sum(r['flops'] for r in stages['segments']) / 1e6:>9.3f} {total:>10.1f}",
              f"  {'full.onnx':<16} {stages['full_flops'] / 1e6:>9.3f} {stages['full_us']:>10.1f}", "",
              f"every input forced out at one exit (the runner, `Cascade.run`), {forced['inputs']} inputs, median of "
              f"{forced['rounds']} interleaved rounds, {forced['clock']} clock; full.onnx {forced['full_ms']:.3f} ms, "
              f"A/A {forced['aa']:.3f}:",
              f"  {'exit':<16} {'FLOPs share':>11} {'ms':>9} {'latency share':>13} {'excess':>7}"]
    for row in forced["exits"]:
        lines.append(f"  {row['exit']:<16} {row['flops_share']:>11.3f} {row['ms']:>9.3f} {row['latency_share']:>13.3f} "
                     f"{row['latency_share'] - row['flops_share']:>+7.3f}")
    lines.append("  (the last row is 'never exit early': thresholds 1 everywhere)")
    return "\n".join(lines)
