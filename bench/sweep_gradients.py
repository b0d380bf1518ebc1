"""The gradient records of a finished sweep (runs trained with `train.log_gradients`), as CNDS Fig. 2 shows them:
`python bench/sweep_gradients.py runs/cnn8_fmnist/sweeps/cnds_init [--by spec] [--layers conv1 conv2 ...]
[--out docs/img/cnds_init_gradients.png]`.

Reads the sweep's results.json and each run's steps.jsonl (`grad/<layer>`: a weight's mean |dL/dW| every
`train.log_every_steps` steps). One row of panels per value of the swept keys other than `--by`, one panel per
layer, one line per value of `--by` (CNN-8 against CNDS-8 at each init); a line is the geometric mean over the
arm's seeds (they log the same steps). Prints a markdown table of each arm's geometric mean over its first and
last 10 records per layer (the first / last 100 steps at `log_every_steps: 10`).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

WINDOW = 10  # records at the start and at the end for the table


def read_steps(run: Path) -> list[dict]:
    path = run / "steps.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def geo_mean(values: list[float]) -> float:
    return math.exp(statistics.mean(math.log(max(v, 1e-30)) for v in values))


def curve(runs: list[Path], layer: str) -> tuple[list[int], list[float]]:
    """Steps and, per step, the geometric mean over the runs of `grad/<layer>` (the steps all runs logged)."""
    per_run = [{s["step"]: s[f"grad/{layer}"] for s in read_steps(r) if f"grad/{layer}" in s} for r in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return [], []
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    return steps, [geo_mean([p[s] for p in per_run]) for s in steps]


def short(key: str, value: str) -> str:
    return Path(value).stem if key == "spec" else f"{key.rsplit('.', 1)[-1]}={value}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweep", type=Path, help="the sweep's folder (runs/<name>/sweeps/<sweep>)")
    p.add_argument("--by", default="spec", help="the swept key drawn as lines in each panel (default: spec)")
    p.add_argument("--layers", nargs="+", default=["conv1", "conv2", "conv3_1", "conv3_2"])
    p.add_argument("--out", type=Path, default=None, help="the plot (default: SWEEP/gradients.png)")
    args = p.parse_args()
    data = json.loads((args.sweep / "results.json").read_text())
    arms = [a for a in data["arms"] if a["state"] == "complete"]
    rows: dict[str, list[dict]] = {}
    for a in arms:
        rest = ", ".join(short(k, v) for k, v in a["params"].items() if k != args.by)
        rows.setdefault(rest, []).append(a)
    # the runs by name in the sweep's runs/ (results.json holds them relative to where the sweep ran)
    curves = {(a["id"], layer): curve([args.sweep / "runs" / Path(r).name for r in a["runs"]], layer)
              for a in arms for layer in args.layers}

    print("| arm | layer | mean \\|∂L/∂W\\|, first records (geo. mean over seeds) | last records |")
    print("|---|---|---|---|")
    for a in arms:
        for layer in args.layers:
            _, values = curves[a["id"], layer]
            if values:
                early, late = geo_mean(values[:WINDOW]), geo_mean(values[-WINDOW:])
                print(f"| {a['label']} | {layer} | {early:.3g} | {late:.3g} |")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * len(args.layers), 2.2 * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(rows), len(args.layers), sharex=True, squeeze=False)
    for axes, (rest, members) in zip(grid, rows.items()):
        for ax, layer in zip(axes, args.layers):
            for a in members:
                steps, values = curves[a["id"], layer]
                ax.plot(steps, values, label=short(args.by, a["params"].get(args.by, "")))
            ax.set(yscale="log", title=f"{layer} ({rest})" if rest else layer)
            ax.title.set_fontsize(7)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean |∂L/∂W|", fontsize=7)
        axes[0].legend(fontsize=6)
    for ax in grid[-1]:
        ax.set_xlabel("step")
    fig.suptitle(f"sweep {data['sweep']}: mean |gradient| per layer, geometric mean over seeds (cf. CNDS Fig. 2)",
                 fontsize=9)
    fig.tight_layout()
    out = args.out or args.sweep / "gradients.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
