"""`netspec calibrate`: choose a cascade's thresholds on test examples for a target loss of top-1, and report them.

Every exit's logits are computed once for the examples (`Cascade.all_exits`); every candidate thresholds are then
simulated in numpy (`cascade.simulate`). Two sweeps: one threshold shared by every early exit (a grid of
max-softmax values), and per exit (greedy: from all at 1.0, repeatedly lower the one exit's threshold that saves
the most mean FLOPs while top-1 stays within the target). The operating point is the point of either sweep with
the fewest mean FLOPs whose top-1 is at least the full net's (the main exit's) minus `target_drop` points; its
thresholds are stored in the manifest. The cost of an input is the cumulative FLOPs of the exit it leaves at.

With a holdout of N, the thresholds are chosen on the first N examples (the choose split) and reported on the rest
(the report split); without, both are the same examples (optimistic). With measured latencies per exit
(`Cascade.latency`), a point's mean latency is Σ_k share_k × latency_k.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from netspec.project import atomic_file, atomic_write
from netspec.runtime.cascade import Cascade, simulate, write_manifest

GRID = [0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
        0.9999, 1.0]
PER_EXIT_GRID = GRID


def point(logits: list[np.ndarray], labels: np.ndarray, thresholds: list[float], cumulative: np.ndarray) -> dict:
    predicted, where = simulate(logits, thresholds)
    share = np.bincount(where, minlength=len(logits)) / len(labels)
    return {"thresholds": [float(t) for t in thresholds], "top1": float((predicted == labels).mean() * 100),
            "mean_flops": float(cumulative[where].mean()), "share": [float(s) for s in share]}


def sweep(logits: list[np.ndarray], labels: np.ndarray, cumulative: np.ndarray, full_top1: float,
          target_drop: float) -> tuple[list[dict], list[dict]]:
    """(the shared-threshold curve, the greedy per-exit path)."""
    k = len(logits)
    shared = [point(logits, labels, [t] * (k - 1) + [1.0], cumulative) for t in GRID]
    current = point(logits, labels, [1.0] * k, cumulative)
    path = [current]
    while True:
        best = None
        for e in range(k - 1):
            for t in PER_EXIT_GRID:
                if t >= current["thresholds"][e]:
                    continue
                trial = list(current["thresholds"])
                trial[e] = t
                p = point(logits, labels, trial, cumulative)
                if p["top1"] >= full_top1 - target_drop and p["mean_flops"] < (best or current)["mean_flops"]:
                    best = p
        if best is None:
            return shared, path
        current = best
        path.append(current)


def split_figures(logits: list[np.ndarray], labels: np.ndarray, exits: list[str], first: int) -> dict:
    """Which test examples (`examples`: [first, stop)) and every exit's top-1 alone on them."""
    exit_top1 = {e: float((v.argmax(1) == labels).mean() * 100) for e, v in zip(exits, logits)}
    return {"examples": [first, first + len(labels)], "exit_top1": exit_top1, "full_top1": exit_top1[exits[-1]]}


def choose_and_report(logits: list[np.ndarray], labels: np.ndarray, exits: list[str], cumulative: np.ndarray,
                      target_drop: float, holdout: int | None = None) -> dict:
    """Sweep and choose on the first `holdout` examples, report the chosen thresholds on the others; without a
    holdout, choose and report on all of them."""
    cut = holdout or len(labels)
    choose = split_figures([v[:cut] for v in logits], labels[:cut], exits, 0)
    choose["shared"], choose["per_exit"] = sweep([v[:cut] for v in logits], labels[:cut], cumulative,
                                                 choose["full_top1"], target_drop)
    ok = [p for p in choose["shared"] + choose["per_exit"] if p["top1"] >= choose["full_top1"] - target_drop]
    choose["chosen"] = min(ok, key=lambda p: (p["mean_flops"], -p["top1"]))  # thresholds all 1.0 is always ok
    if holdout is None:
        report = choose
    else:
        rest = [v[cut:] for v in logits]
        report = split_figures(rest, labels[cut:], exits, cut)
        report["chosen"] = point(rest, labels[cut:], choose["chosen"]["thresholds"], cumulative)
    return {"exits": exits, "cumulative_flops": cumulative.tolist(), "target_drop": target_drop,
            "same_examples": holdout is None, "choose": choose, "report": report}


def add_latency(points: list[dict], latency: dict) -> None:
    """Give each point `mean_latency_ms` = Σ_k share_k × the measured latency of leaving at exit k."""
    for p in points:
        p["mean_latency_ms"] = float(np.dot(p["share"], latency["exits"]))


def calibrate(folder: Path, x: np.ndarray, labels: np.ndarray, target_drop: float = 0.5, holdout: int | None = None,
              latency_inputs: int = 200, repeats: int = 3, threads: int = 1, batch: int = 256) -> dict:
    """Sweep, choose, report (`choose_and_report`); measure the latencies on the first `latency_inputs` examples
    (none when 0); store the thresholds in the manifest; write calibration.json and calibration.png."""
    cascade = Cascade.load(folder, threads=threads)
    parts = [cascade.all_exits(x[i:i + batch]) for i in range(0, len(x), batch)]
    logits = [np.concatenate([p[k] for p in parts]) for k in range(len(cascade.exits))]
    segments = cascade.manifest["segments"]
    cumulative = np.asarray([s["cumulative_flops"] for s in segments], np.float64)
    report = choose_and_report(logits, labels, cascade.exits, cumulative, target_drop, holdout)
    report["full_flops"] = cascade.manifest["full_flops"]
    report["latency_ms"] = cascade.latency(x[:latency_inputs], repeats) if latency_inputs else None
    choose, held = report["choose"], report["report"]
    if report["latency_ms"]:
        add_latency(choose["shared"] + choose["per_exit"] + [held["chosen"]], report["latency_ms"])
    for seg, t in zip(segments, choose["chosen"]["thresholds"]):
        seg["threshold"] = t
    cascade.manifest["calibration"] = {
        "target_drop": target_drop, "same_examples": report["same_examples"], "latency_ms": report["latency_ms"],
        **{name: {"examples": part["examples"], "full_top1": part["full_top1"], **part["chosen"]}
           for name, part in (("choose", choose), ("report", held))}}
    write_manifest(folder, cascade.manifest)
    atomic_write(Path(folder) / "calibration.json", json.dumps(report, indent=1) + "\n")
    plot_curve(report, Path(folder) / "calibration.png")
    return report


def span(part: dict) -> str:
    first, stop = part["examples"]
    return f"test examples {first}–{stop - 1} ({stop - first})"


def format_report(report: dict) -> str:
    full, exits, latency = report["full_flops"], report["exits"], report["latency_ms"]
    choose, held = report["choose"], report["report"]

    def cells(p):
        ms = f" {p['mean_latency_ms']:>8.3f} {p['mean_latency_ms'] / latency['full']:>7.1%}" if latency else ""
        return (f"{p['top1']:>7.2f} {p['mean_flops'] / 1e6:>11.3f} {p['mean_flops'] / full:>7.1%}{ms}  "
                + " / ".join(f"{s:.0%}" for s in p["share"]))

    def summary(p, part):
        ms = (f", mean {p['mean_latency_ms']:.3f} ms = {p['mean_latency_ms'] / latency['full']:.1%} of the full "
              f"net's {latency['full']:.3f} ms") if latency else ""
        return (f"top-1 {p['top1']:.2f}% ({p['top1'] - part['full_top1']:+.2f} points against the full net's "
                f"{part['full_top1']:.2f}%), mean {p['mean_flops'] / 1e6:.3f} MFLOPs = {p['mean_flops'] / full:.1%} "
                f"of the full net ({1 - p['mean_flops'] / full:.1%} saved){ms}; share "
                + ", ".join(f"{e} {s:.1%}" for e, s in zip(exits, p["share"])))

    if report["same_examples"]:
        lines = [f"thresholds chosen and reported on the same {span(choose)}: optimistic "
                 "(--holdout N chooses on the first N and reports on the others)"]
    else:
        lines = [f"thresholds chosen on {span(choose)}, reported on {span(held)}"]
    lines.append(f"choose split: full net (exit {exits[-1]}) top-1 {choose['full_top1']:.2f}%, {full / 1e6:.2f} "
                 "MFLOPs; exits alone: " + ", ".join(f"{e} {choose['exit_top1'][e]:.2f}%" for e in exits))
    if latency:
        lines.append(f"measured latency, batch 1, {latency['threads']} thread(s), mean over {latency['inputs']} "
                     f"inputs, median of {latency['repeats']} rounds: full net {latency['full']:.3f} ms; leaving at "
                     + ", ".join(f"{e} {v:.3f}" for e, v in zip(exits, latency["exits"]))
                     + " ms. A point's mean latency is Σ share × these, not a timing of its thresholds.")
    ms_head = f" {'mean ms':>8} {'of full':>7}" if latency else ""
    head = f"{'top-1':>7} {'mean MFLOPs':>11} {'of full':>7}{ms_head}  share " + " / ".join(exits)
    lines += ["", "one threshold for every early exit (leave when max softmax > threshold), choose split:",
              f"  {'threshold':>9} {head}"]
    lines += [f"  {p['thresholds'][0]:>9g} {cells(p)}" for p in choose["shared"]]
    lines += ["", f"per exit (greedy, top-1 ≥ {choose['full_top1']:.2f} − {report['target_drop']:g}), choose split:",
              f"  {'thresholds':<28} {head}"]
    lines += [f"  {' '.join(f'{t:g}' for t in p['thresholds'][:-1]):<28} {cells(p)}" for p in choose["per_exit"]]
    c = choose["chosen"]
    lines += ["", f"chosen: thresholds {', '.join(f'{e} {t:g}' for e, t in zip(exits[:-1], c['thresholds']))}",
              f"  on the choose split: {summary(c, choose)}"]
    if not report["same_examples"]:
        lines.append(f"  on the report split ({span(held)}, not used to choose): {summary(held['chosen'], held)}; "
                     "exits alone: " + ", ".join(f"{e} {held['exit_top1'][e]:.2f}%" for e in exits))
    return "\n".join(lines)


def plot_curve(report: dict, path: Path) -> None:
    """Top-1 vs mean FLOPs / full (and, with latencies, vs mean latency / full) on the choose split; the chosen
    point on both splits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    choose, held, latency = report["choose"], report["report"], report["latency_ms"]
    axes_of = [("mean_flops", report["full_flops"], "mean FLOPs / full net's")]
    if latency:
        axes_of.append(("mean_latency_ms", latency["full"], "mean latency / full net's (measured per exit, batch 1)"))
    fig = Figure(figsize=(6.5 * len(axes_of), 4.5))
    FigureCanvasAgg(fig)
    for ax, (key, full, xlabel) in zip(np.atleast_1d(fig.subplots(1, len(axes_of))), axes_of):
        for name, label, style in (("shared", "one threshold", "o-"), ("per_exit", "per exit (greedy)", "s--")):
            pts = sorted(choose[name], key=lambda p: p[key])
            ax.plot([p[key] / full for p in pts], [p["top1"] for p in pts], style, ms=3, label=label)
        ax.axhline(choose["full_top1"], color="black", lw=0.8, label="full net")
        ax.axhline(choose["full_top1"] - report["target_drop"], color="grey", lw=0.8, ls=":",
                   label=f"full − {report['target_drop']:g} points")
        ax.plot([choose["chosen"][key] / full], [choose["chosen"]["top1"]], "r*", ms=12, label="chosen")
        if not report["same_examples"]:
            ax.plot([held["chosen"][key] / full], [held["chosen"]["top1"]], "kP", ms=9,
                    label=f"chosen, report split (full net {held['full_top1']:.2f})")
        ax.set(xlabel=xlabel, ylabel="top-1 (%)", title="early-exit cascade: accuracy vs mean cost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, binary=True) as f:
        fig.savefig(f, dpi=120, format="png")
