"""`netspec calibrate`: choose a cascade's thresholds on the test split for a target loss of top-1.

Every exit's logits are computed once for the whole split (`Cascade.all_exits`); every candidate thresholds are
then simulated in numpy (`cascade.simulate`). Two sweeps: one threshold shared by every early exit (a grid of
max-softmax values), and per exit (greedy: from all at 1.0, repeatedly lower the one exit's threshold that saves
the most mean FLOPs while top-1 stays within the target). The operating point is the point of either sweep with
the fewest mean FLOPs whose top-1 is at least the full net's (the main exit's) minus `target_drop` points; its
thresholds are stored in the manifest. The cost of an input is the cumulative FLOPs of the exit it leaves at.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from netspec.project import atomic_write
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


def calibrate(folder: Path, x: np.ndarray, labels: np.ndarray, target_drop: float = 0.5,
              batch: int = 256) -> dict:
    """Sweep, pick, store the thresholds in the manifest; write calibration.json and calibration.png; return the
    report."""
    cascade = Cascade.load(folder)
    parts = [cascade.all_exits(x[i:i + batch]) for i in range(0, len(x), batch)]
    logits = [np.concatenate([p[k] for p in parts]) for k in range(len(cascade.exits))]
    segments = cascade.manifest["segments"]
    cumulative = np.asarray([s["cumulative_flops"] for s in segments], np.float64)
    full = cascade.manifest["full_flops"]
    exit_top1 = {e: float((v.argmax(1) == labels).mean() * 100) for e, v in zip(cascade.exits, logits)}
    full_top1 = exit_top1[cascade.exits[-1]]
    shared, path = sweep(logits, labels, cumulative, full_top1, target_drop)
    ok = [p for p in shared + path if p["top1"] >= full_top1 - target_drop]
    chosen = min(ok, key=lambda p: (p["mean_flops"], -p["top1"]))  # thresholds all 1.0 is always ok
    for seg, t in zip(segments, chosen["thresholds"]):
        seg["threshold"] = t
    cascade.manifest["calibration"] = {"target_drop": target_drop, "examples": int(len(labels)),
                                       "full_top1": full_top1, "top1": chosen["top1"],
                                       "mean_flops": chosen["mean_flops"], "share": chosen["share"]}
    write_manifest(folder, cascade.manifest)
    report = {"exits": cascade.exits, "cumulative_flops": cumulative.tolist(), "full_flops": full,
              "exit_top1": exit_top1, "full_top1": full_top1, "target_drop": target_drop, "examples": int(len(labels)),
              "shared": shared, "per_exit": path, "chosen": chosen}
    atomic_write(Path(folder) / "calibration.json", json.dumps(report, indent=1) + "\n")
    plot_curve(report, Path(folder) / "calibration.png")
    return report


def format_report(report: dict) -> str:
    full = report["full_flops"]
    exits = report["exits"]
    lines = [f"{report['examples']} test examples; full net (exit {exits[-1]}) top-1 {report['full_top1']:.2f}%, "
             f"{full / 1e6:.2f} MFLOPs; exits alone: "
             + ", ".join(f"{e} {report['exit_top1'][e]:.2f}%" for e in exits), "",
             "one threshold for every early exit (leave when max softmax > threshold):",
             f"  {'threshold':>9} {'top-1':>7} {'mean MFLOPs':>11} {'of full':>7}  share " + " / ".join(exits)]
    for p in report["shared"]:
        lines.append(f"  {p['thresholds'][0]:>9g} {p['top1']:>7.2f} {p['mean_flops'] / 1e6:>11.3f} "
                     f"{p['mean_flops'] / full:>7.1%}  " + " / ".join(f"{s:.0%}" for s in p["share"]))
    lines += ["", f"per exit (greedy, top-1 ≥ {report['full_top1']:.2f} − {report['target_drop']:g}):"]
    for p in report["per_exit"]:
        lines.append(f"  {' '.join(f'{t:g}' for t in p['thresholds'][:-1]):<28} {p['top1']:>7.2f} "
                     f"{p['mean_flops'] / 1e6:>11.3f} {p['mean_flops'] / full:>7.1%}  "
                     + " / ".join(f"{s:.0%}" for s in p["share"]))
    c = report["chosen"]
    lines += ["", f"chosen: thresholds {', '.join(f'{e} {t:g}' for e, t in zip(exits[:-1], c['thresholds']))}: top-1 "
              f"{c['top1']:.2f}% ({c['top1'] - report['full_top1']:+.2f} points), mean {c['mean_flops'] / 1e6:.3f} MFLOPs "
              f"= {c['mean_flops'] / full:.1%} of the full net ({1 - c['mean_flops'] / full:.1%} saved); share "
              + ", ".join(f"{e} {s:.1%}" for e, s in zip(exits, c["share"]))]
    return "\n".join(lines)


def plot_curve(report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    full = report["full_flops"]
    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, label, style in (("shared", "one threshold", "o-"), ("per_exit", "per exit (greedy)", "s--")):
        pts = sorted(report[name], key=lambda p: p["mean_flops"])
        ax.plot([p["mean_flops"] / full for p in pts], [p["top1"] for p in pts], style, ms=3, label=label)
    ax.axhline(report["full_top1"], color="black", lw=0.8, label="full net")
    ax.axhline(report["full_top1"] - report["target_drop"], color="grey", lw=0.8, ls=":",
               label=f"full − {report['target_drop']:g} points")
    c = report["chosen"]
    ax.plot([c["mean_flops"] / full], [c["top1"]], "r*", ms=12, label="chosen")
    ax.set_xlabel("mean FLOPs / full net's")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("early-exit cascade: accuracy vs mean cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
