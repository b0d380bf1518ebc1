"""`netspec calibrate`: choose a cascade's thresholds for a target loss of top-1, and report them with measured latency.

Every exit's logits and confidence are computed once for the examples (`Cascade.all_exits`); every candidate
thresholds are then simulated in numpy (`cascade.simulate`). Two sweeps: one threshold shared by every early exit
(a grid of confidences 0..1), and per exit (greedy: from all at 1.0, repeatedly lower the one exit's threshold that
saves the most mean FLOPs while top-1 stays within the target). The cost of an input is the FLOPs run to the exit
it leaves at (`cascade.exit_costs`: the heads of exits that never let a row out are not run).

The operating point is, within the target (top-1 at least the full net's, the main exit's, minus `target_drop`
points), the point the user's deployment runs fastest: by default the one of least *measured* batch-1 latency
(`MeasuredChoice`: a cost model measured per plan proposes, the real runner timed against the full model decides),
or of most batch-64 throughput (`choose_by="throughput"`), or of fewest mean FLOPs (`choose_by="flops"`, no timing).
FLOPs alone mislead on small nets, whose early layers are memory-bound and whose every stage costs a call
(docs/cascade.md). Its thresholds are stored in the manifest and in `anytime.onnx`.

The thresholds are chosen on one split of examples and reported on another (`Split`: which examples, from which
data split); the command decides which (the validation split when the spec has one, else the test split cut in
two by `--holdout`). Without a report split the figures are those of the choose split (optimistic). The choice's
timing runs on the choose split's inputs, the reported timing on the report split's.

Latency is measured, not estimated: for the chosen point and every fifth point of the shared-threshold curve, the
real runner (`Cascade.run`, batch 1) on a fixed subset of the report split, in interleaved rounds with the full
model (`full.onnx`) and an A/A copy of it (`runtime/cascade_bench.py`); and the throughput at batch 64 of the
chosen point and of the full model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from netspec.project import atomic_file, atomic_write
from netspec.runtime.cascade import Cascade, exit_costs, pick, simulate, write_anytime, write_manifest
from netspec.runtime.cascade_bench import Timer, interleaved
from netspec.runtime.cascade_graph import deciding

GRID = [0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
        0.9999, 1.0]
PER_EXIT_GRID = GRID
TIMED_EVERY = 5  # every fifth point of the shared curve is timed, besides the chosen point
CHOOSE_BY = ("latency", "throughput", "flops")  # what `calibrate` minimises within the target (`MeasuredChoice`)
THROUGHPUT_BATCH = 64
MODEL_ROWS = 128  # the rows of the choose split the cost model times each group on (ours)
TIMED_CANDIDATES = 3  # points of least predicted time timed with the real runner, besides the fewest-FLOPs one (ours)


@dataclass
class Split:
    """Labelled examples to choose thresholds on or to report them on: `examples` [first, stop) of data split
    `split` (e.g. "test"), already normalised."""

    split: str
    first: int
    x: np.ndarray
    labels: np.ndarray

    def describe(self) -> str:
        stop = self.first + len(self.labels)
        return f"{self.split} examples {self.first}–{stop - 1} ({len(self.labels)})"


@dataclass
class Outputs:
    """Every exit's logits and every early exit's confidence on a `Split`."""

    split: Split
    logits: list[np.ndarray]
    confidences: list[np.ndarray]

    @classmethod
    def of(cls, cascade: Cascade, split: Split, batch: int = 256) -> "Outputs":
        parts = [cascade.all_exits(split.x[i:i + batch]) for i in range(0, len(split.x), batch)]
        logits = [np.concatenate([p[0][k] for p in parts]) for k in range(len(cascade.exits))]
        confidences = [np.concatenate([p[1][k] for p in parts]) for k in range(len(cascade.exits) - 1)]
        return cls(split, logits, confidences)


def point(out: Outputs, thresholds: list[float], segments: list[dict]) -> dict:
    """Top-1, mean FLOPs (`exit_costs` of the thresholds' plan) and the share of rows leaving at each exit."""
    labels = out.split.labels
    where = simulate(out.confidences, thresholds, len(labels))
    share = np.bincount(where, minlength=len(out.logits)) / len(labels)
    return {"thresholds": [float(t) for t in thresholds], "top1": float((pick(out.logits, where) == labels).mean() * 100),
            "mean_flops": float(exit_costs(segments, thresholds)[where].mean()), "share": [float(s) for s in share]}


def greedy(out: Outputs, segments: list[dict], ok: Callable[[dict], bool], cost: Callable[[dict], float]) -> list[dict]:
    """From thresholds 1 everywhere, repeatedly lower the one exit's threshold (to a `PER_EXIT_GRID` value) that
    lowers `cost` the most while the point stays `ok`: the path of points."""
    k = len(out.logits)
    current = point(out, [1.0] * k, segments)
    path = [current]
    while True:
        trials = [point(out, current["thresholds"][:e] + [t] + current["thresholds"][e + 1:], segments)
                  for e in range(k - 1) for t in PER_EXIT_GRID if t < current["thresholds"][e]]
        better = [p for p in trials if ok(p) and cost(p) < cost(current)]
        if not better:
            return path
        current = min(better, key=cost)
        path.append(current)


def split_figures(out: Outputs, exits: list[str]) -> dict:
    """Which examples and every exit's top-1 alone on them."""
    labels = out.split.labels
    exit_top1 = {e: float((v.argmax(1) == labels).mean() * 100) for e, v in zip(exits, out.logits)}
    return {"split": out.split.split, "examples": [out.split.first, out.split.first + len(labels)],
            "description": out.split.describe(), "exit_top1": exit_top1, "full_top1": exit_top1[exits[-1]]}


def choose_and_report(choose: Outputs, report: Outputs | None, exits: list[str], segments: list[dict],
                      target_drop: float, by: "MeasuredChoice | None" = None) -> dict:
    """Sweep on `choose` and choose the point of fewest mean FLOPs within `target_drop` (or, with `by`, the point `by`
    measures fastest); report the chosen thresholds on `report` (without one: on `choose`)."""
    chosen = split_figures(choose, exits)

    def ok(p: dict) -> bool:
        return p["top1"] >= chosen["full_top1"] - target_drop
    k = len(exits)
    chosen["shared"] = [point(choose, [t] * (k - 1) + [1.0], segments) for t in GRID]
    chosen["per_exit"] = greedy(choose, segments, ok, lambda p: p["mean_flops"])
    candidates = [p for p in chosen["shared"] + chosen["per_exit"] if ok(p)]  # thresholds all 1.0 is always ok
    chosen["chosen"] = min(candidates, key=lambda p: (p["mean_flops"], -p["top1"]))
    if by is not None:
        chosen["chosen"], chosen["by_time"] = by(choose, segments, ok, candidates, chosen["chosen"])
    if report is None:
        held = chosen
    else:
        held = split_figures(report, exits)
        held["chosen"] = point(report, chosen["chosen"]["thresholds"], segments)
    return {"exits": exits, "target_drop": target_drop,
            "chosen_by": by.objective if by is not None else "flops", "same_examples": report is None,
            "choose": chosen, "report": held}


def _key(thresholds: list[float]) -> str:
    return " ".join(f"{t:g}" for t in thresholds)


class MeasuredChoice:
    """Choosing thresholds by measured time, on the choose split's inputs `x`: `objective` "latency" (batch 1) or
    "throughput" (batch `THROUGHPUT_BATCH`).

    A cost model first (ours): for each plan (the exits that decide, `cascade_graph.plan`) every group's time per
    row alone, its decision included, measured on the first rows of `x` at the objective's batch size; a point's
    predicted time is Σ over its plan's groups of the share of rows reaching the group × the group's time. A greedy
    path like the FLOPs one lowers, one exit at a time, the threshold that lowers that prediction the most within
    the target. Then the real runner is timed (`Timer`, interleaved rounds with the full model) at the
    `TIMED_CANDIDATES` points of least predicted time among the path and the FLOPs sweeps' points, at the point of
    fewest FLOPs and at thresholds 1 everywhere (the main exit alone); the fastest measured is chosen, so where no
    early exit pays for itself on this machine the choice says so."""

    def __init__(self, cascade: Cascade, x: np.ndarray, objective: str, rounds: int):
        self.cascade, self.x, self.objective, self.rounds = cascade, x, objective, rounds
        self.batch = 1 if objective == "latency" else THROUGHPUT_BATCH
        self.clock = "cpu" if cascade.threads == 1 else "wall"  # one thread: the work runs in the calling thread
        self.model_rows = x[:MODEL_ROWS]
        self.plans: dict[tuple[int, ...], tuple[list[int], list[float]]] = {}

    def groups(self, thresholds: list[float]) -> tuple[list[int], list[float]]:
        """(the first exit of each group of the thresholds' plan, the group's measured seconds per row)."""
        decide = tuple(deciding(thresholds))
        if decide not in self.plans:
            _, stages = self.cascade.prepare([0.0 if k in decide else 1.0 for k in range(len(thresholds))])
            values = self.cascade.feed(self.model_rows)
            cases, firsts = {}, []
            for j, stage in enumerate(stages):
                firsts.append(stages[j - 1].exit_index + 1 if j else 0)
                cases[j] = self._group_case(stage, values, j == len(stages) - 1)
                values.update(zip(stage.outputs, stage.call(values)))
            seconds = interleaved(cases, self.rounds, self.clock)
            self.plans[decide] = firsts, [seconds[j] / len(self.model_rows) for j in range(len(stages))]
        return self.plans[decide]

    def _group_case(self, stage, values: dict, last: bool) -> Callable[[], None]:
        """One group run over the model rows in chunks of the objective's batch, each followed by its decision."""
        from onnxruntime import OrtValue

        make = OrtValue.ortvalue_from_numpy  # keeps its array alive
        arrays = {name: values[name].numpy() for name in stage.call.inputs}
        chunks = [{name: make(np.ascontiguousarray(a[i:i + self.batch])) for name, a in arrays.items()}
                  for i in range(0, len(self.model_rows), self.batch)]

        def run():
            for chunk in chunks:
                outs = stage.call(chunk)
                outs[0].numpy() if last else outs[1].numpy() > 0.5
        return run

    def predict(self, p: dict) -> float:
        """Predicted seconds per row of the point `p` (the cost model above)."""
        firsts, seconds = self.groups(p["thresholds"])
        left_before = np.concatenate([[0.0], np.cumsum(p["share"])])
        return float(sum((1 - left_before[f]) * s for f, s in zip(firsts, seconds)))

    def __call__(self, out: Outputs, segments: list[dict], ok: Callable[[dict], bool], candidates: list[dict],
                 fewest_flops: dict) -> tuple[dict, dict]:
        path = greedy(out, segments, ok, self.predict)
        unique = {}
        for p in candidates + path:
            p["predicted_ms"] = self.predict(p) * 1e3
            unique.setdefault(_key(p["thresholds"]), p)
        timed = {_key(p["thresholds"]): p
                 for p in sorted(unique.values(), key=lambda p: p["predicted_ms"])[:TIMED_CANDIDATES]}
        for extra in (fewest_flops, path[0]):  # path[0]: thresholds 1 everywhere, the main exit alone
            timed.setdefault(_key(extra["thresholds"]), extra)
        timer = Timer(self.cascade, self.x)
        if self.objective == "latency":
            ms = timer.batch1({key: p["thresholds"] for key, p in timed.items()}, self.rounds, self.clock)
            for key, p in timed.items():
                p["measured_time_ratio"] = ms[key] / ms["full"]
        else:
            for p in timed.values():
                per_second = timer.throughput(p["thresholds"], self.batch, self.rounds, self.clock)
                p["measured_time_ratio"] = per_second["full"] / per_second["cascade"]
        timed = list(timed.values())
        best = min(timed, key=lambda p: p["measured_time_ratio"])
        return best, {"objective": self.objective, "batch": self.batch, "clock": self.clock, "rounds": self.rounds,
                      "inputs": len(self.x), "model_rows": len(self.model_rows), "path": path,
                      "timed": timed}


def timed_points(report: dict) -> list[dict]:
    """The points whose latency is measured: the chosen one, then every fifth point of the shared curve."""
    shared = report["choose"]["shared"]
    return [report["choose"]["chosen"]] + shared[::TIMED_EVERY]


def measure(cascade: Cascade, x: np.ndarray, report: dict, rounds: int, batch: int = THROUGHPUT_BATCH) -> dict:
    """Batch-1 latency of the runner at every `timed_points` setting and of the full model, interleaved, on `x`;
    the batch-`batch` throughput of the chosen point and of the full model. Each timed point gets `latency_ms`
    and `latency_ratio` (÷ the full model's in the same rounds)."""
    timer = Timer(cascade, x)
    points = timed_points(report)
    settings = {}
    for p in points:
        settings.setdefault(_key(p["thresholds"]), p["thresholds"])
    ms = timer.batch1(settings, rounds)
    for p in points + [report["report"]["chosen"]]:
        key = _key(p["thresholds"])
        p["latency_ms"], p["latency_ratio"] = ms[key], ms[key] / ms["full"]
    per_second = timer.throughput(report["choose"]["chosen"]["thresholds"], batch, rounds)
    return {"inputs": int(len(x)), "rounds": rounds, "threads": cascade.threads, "full_ms": ms["full"],
            "aa_ratio": ms["full (A/A)"] / ms["full"], "throughput_batch": batch, "throughput": per_second,
            "throughput_ratio": per_second["cascade"] / per_second["full"]}


def calibrate(folder: Path, choose: Split, report: Split | None = None, target_drop: float = 0.5,
              latency_inputs: int = 500, rounds: int = 3, threads: int = 1, batch: int = 256,
              choose_by: str = "latency") -> dict:
    """Sweep and choose on `choose` by `choose_by` (a `CHOOSE_BY`: by time, `MeasuredChoice` on the first
    `latency_inputs` examples of `choose`), report on `report` (`choose_and_report`); measure the latencies on the
    first `latency_inputs` examples of the report split (none when 0); store the thresholds in the manifest and
    `anytime.onnx`; write calibration.json and calibration.png."""
    if choose_by not in CHOOSE_BY or (choose_by != "flops" and not latency_inputs):
        raise ValueError(f"choose_by {choose_by!r} with latency_inputs {latency_inputs}")
    cascade = Cascade.load(folder, threads=threads)
    outputs = Outputs.of(cascade, choose, batch)
    held = Outputs.of(cascade, report, batch) if report is not None else None
    by = MeasuredChoice(cascade, choose.x[:latency_inputs], choose_by, rounds) if choose_by != "flops" else None
    result = choose_and_report(outputs, held, cascade.exits, cascade.segments, target_drop, by)
    result["full_flops"] = cascade.manifest["full_flops"]
    timed_on = report if report is not None else choose
    result["latency"] = (measure(cascade, timed_on.x[:latency_inputs], result, rounds) | {
        "examples": [timed_on.first, timed_on.first + min(latency_inputs, len(timed_on.x))], "split": timed_on.split}
        if latency_inputs else None)
    chosen = result["choose"]["chosen"]["thresholds"]
    for seg, t in zip(cascade.segments, chosen):
        seg["threshold"] = t
    cascade.manifest["calibration"] = {
        "target_drop": target_drop, "same_examples": result["same_examples"], "latency": result["latency"],
        **{name: {"split": part["split"], "examples": part["examples"], "full_top1": part["full_top1"],
                  **part["chosen"]} for name, part in (("choose", result["choose"]), ("report", result["report"]))}}
    write_manifest(folder, cascade.manifest)
    write_anytime(cascade, Path(folder) / "anytime.onnx", chosen)
    atomic_write(Path(folder) / "calibration.json", json.dumps(result, indent=1) + "\n")
    plot_curve(result, Path(folder) / "calibration.png")
    return result


def format_report(report: dict) -> str:
    full, exits, latency = report["full_flops"], report["exits"], report["latency"]
    choose, held = report["choose"], report["report"]

    def cells(p):
        ms = (f" {p['latency_ms']:>8.3f} {p['latency_ratio']:>7.1%}" if "latency_ms" in p else f" {'':>8} {'':>7}"
              ) if latency else ""
        return (f"{p['top1']:>7.2f} {p['mean_flops'] / 1e6:>11.3f} {p['mean_flops'] / full:>7.1%}{ms}  "
                + " / ".join(f"{s:.0%}" for s in p["share"]))

    def summary(p, part):
        return (f"top-1 {p['top1']:.2f}% ({p['top1'] - part['full_top1']:+.2f} points against the full net's "
                f"{part['full_top1']:.2f}%), mean {p['mean_flops'] / 1e6:.3f} MFLOPs = {p['mean_flops'] / full:.1%} "
                f"of the full net ({1 - p['mean_flops'] / full:.1%} saved); share "
                + ", ".join(f"{e} {s:.1%}" for e, s in zip(exits, p["share"])))

    if report["same_examples"]:
        lines = [f"thresholds chosen and reported on the same {choose['description']}: optimistic "
                 "(--holdout N chooses on the first N and reports on the others)"]
    else:
        lines = [f"thresholds chosen on {choose['description']}, reported on {held['description']}"]
    lines.append(f"choose split: full net (exit {exits[-1]}) top-1 {choose['full_top1']:.2f}%, {full / 1e6:.2f} "
                 "MFLOPs; exits alone: " + ", ".join(f"{e} {choose['exit_top1'][e]:.2f}%" for e in exits))
    ms_head = f" {'ms':>8} {'of full':>7}" if latency else ""
    head = f"{'top-1':>7} {'mean MFLOPs':>11} {'of full':>7}{ms_head}  share " + " / ".join(exits)
    lines += ["", "one threshold for every early exit (leave when confidence > threshold), choose split"
              + (" (ms: measured, batch 1, every fifth point)" if latency else "") + ":",
              f"  {'threshold':>9} {head}"]
    lines += [f"  {p['thresholds'][0]:>9g} {cells(p)}" for p in choose["shared"]]
    lines += ["", f"per exit (greedy, top-1 ≥ {choose['full_top1']:.2f} − {report['target_drop']:g}), choose split:",
              f"  {'thresholds':<28} {head}"]
    lines += [f"  {_key(p['thresholds'][:-1]):<28} {cells(p)}" for p in choose["per_exit"]]
    if "by_time" in choose:
        by = choose["by_time"]
        what = "batch-1 latency" if by["objective"] == "latency" else f"time per input at batch {by['batch']}"
        lines += ["", f"chosen by measured {what}: the runner against the full net on {by['inputs']} choose-split "
                  f"examples, median of {by['rounds']} interleaved rounds, {by['clock']} clock; timed: the points of "
                  f"least predicted time (each plan's stages timed alone on {by['model_rows']} rows), the point of "
                  "fewest FLOPs and thresholds 1 everywhere:",
                  f"  {'thresholds':<28} {'top-1':>7} {'FLOPs of full':>13} {'predicted ms':>12} {'time ÷ full':>11}"]
        lines += [f"  {_key(p['thresholds'][:-1]):<28} {p['top1']:>7.2f} {p['mean_flops'] / full:>13.1%} "
                  f"{p['predicted_ms']:>12.3f} {p['measured_time_ratio']:>11.3f}" for p in by["timed"]]
    c = choose["chosen"]
    lines += ["", f"chosen: thresholds {', '.join(f'{e} {t:g}' for e, t in zip(exits[:-1], c['thresholds']))}",
              f"  on the choose split: {summary(c, choose)}"]
    if not report["same_examples"]:
        lines.append(f"  on the report split ({held['description']}, not used to choose): "
                     f"{summary(held['chosen'], held)}; exits alone: "
                     + ", ".join(f"{e} {held['exit_top1'][e]:.2f}%" for e in exits))
    if latency:
        first, stop = latency["examples"]
        t = latency["throughput"]
        lines.append(f"  measured (the runner, {latency['threads']} thread(s), {latency['inputs']} {latency['split']} "
                     f"examples {first}–{stop - 1}, median of {latency['rounds']} interleaved rounds, A/A "
                     f"{latency['aa_ratio']:.3f}): batch 1 {c['latency_ms']:.3f} ms per input against the full net's "
                     f"{latency['full_ms']:.3f} ms = {c['latency_ratio']:.1%}; batch {latency['throughput_batch']} "
                     f"{t['cascade']:.0f} inputs/s against {t['full']:.0f} = {latency['throughput_ratio']:.2f}×")
    return "\n".join(lines)


def plot_curve(report: dict, path: Path) -> None:
    """Top-1 vs mean FLOPs / full on the choose split (and, with latency, vs measured latency / full at the timed
    points); the chosen point on both splits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    choose, held, latency = report["choose"], report["report"], report["latency"]
    fig = Figure(figsize=(6.5 * (2 if latency else 1), 4.5))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, 2 if latency else 1))
    ax = axes[0]
    full = report["full_flops"]
    for name, label, style in (("shared", "one threshold", "o-"), ("per_exit", "per exit (greedy)", "s--")):
        pts = sorted(choose[name], key=lambda p: p["mean_flops"])
        ax.plot([p["mean_flops"] / full for p in pts], [p["top1"] for p in pts], style, ms=3, label=label)
    ax.plot([choose["chosen"]["mean_flops"] / full], [choose["chosen"]["top1"]], "r*", ms=12, label="chosen")
    if not report["same_examples"]:
        ax.plot([held["chosen"]["mean_flops"] / full], [held["chosen"]["top1"]], "kP", ms=9,
                label=f"chosen, report split (full net {held['full_top1']:.2f})")
    ax.set(xlabel="mean FLOPs / full net's")
    if latency:
        timed = sorted((p for p in choose["shared"] if "latency_ratio" in p), key=lambda p: p["latency_ratio"])
        axes[1].plot([p["latency_ratio"] for p in timed], [p["top1"] for p in timed], "o-", ms=4,
                     label="one threshold (timed points)")
        axes[1].plot([choose["chosen"]["latency_ratio"]], [choose["chosen"]["top1"]], "r*", ms=12, label="chosen")
        axes[1].axvline(1.0, color="grey", lw=0.8, ls=":")
        axes[1].set(xlabel=f"measured batch-1 latency / full net's ({latency['threads']} thread(s))")
    for ax in axes:
        ax.axhline(choose["full_top1"], color="black", lw=0.8, label="full net")
        ax.axhline(choose["full_top1"] - report["target_drop"], color="grey", lw=0.8, ls=":",
                   label=f"full − {report['target_drop']:g} points")
        ax.set(ylabel="top-1 (%)", title="early-exit cascade: accuracy vs mean cost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, binary=True) as f:
        fig.savefig(f, dpi=120, format="png")
