"""PNG plots of a run's curves: `curves.png` in the run directory (matplotlib's Agg canvas, no pyplot).

Each head keeps one colour in every panel: its loss terms (a synergy term takes its student's colour,
dotted), its raw cross-entropy, its accuracy.
"""
from __future__ import annotations

import math
from pathlib import Path

from netspec.project import atomic_file

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]


def head_colours(heads: list[str]) -> dict[str, str]:
    """One colour per head, in the order given (the same for a run's every plot)."""
    return {head: PALETTE[i % len(PALETTE)] for i, head in enumerate(heads)}


def plot_curves(records: list[dict], folder: Path, term_heads: dict[str, str] | None = None,
                heads: list[str] | None = None) -> Path:
    """Left: every weighted loss term and the total per epoch. Middle: each head's raw cross-entropy. Right: top-1
    (solid) and top-5 (dashed) of every exit on the test split, with the learning rate on a second axis.
    `term_heads` maps a loss term to the head it trains; `heads` fixes the colour order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    keys = list(dict.fromkeys(k for r in records for k in r))
    heads = heads or [k[len("top1/"):] for k in keys if k.startswith("top1/")]
    colour = head_colours(heads)
    term_heads = term_heads or {}
    fig = Figure(figsize=(16, 4.5))
    FigureCanvasAgg(fig)
    losses, ce, accuracy = fig.subplots(1, 3)

    losses.plot(epochs, [r.get("loss", math.nan) for r in records], marker="o", lw=2.5, color="black", label="total")
    for key in (k for k in keys if k.startswith("loss/")):
        term = key[len("loss/"):]
        head = term_heads.get(term, term if term in colour else None)
        losses.plot(epochs, [r.get(key, math.nan) for r in records], marker="o", lw=1.2, color=colour.get(head),
                    ls=":" if ":" in term else "-", label=term)
    losses.set(xlabel="epoch", ylabel="training loss (weighted, epoch mean)", title="loss terms")

    for head in heads:
        if f"ce/{head}" in keys:
            ce.plot(epochs, [r.get(f"ce/{head}", math.nan) for r in records], marker="o", color=colour[head], label=head)
    ce.set(xlabel="epoch", ylabel="cross-entropy (unweighted, epoch mean)", title="each head's raw CE")

    tested = [r for r in records if f"top1/{heads[0]}" in r] if heads else []  # train.eval_every skips epochs
    for head in heads:
        accuracy.plot([r["epoch"] for r in tested], [100 * r.get(f"top1/{head}", math.nan) for r in tested],
                      marker="o", color=colour[head], label=f"{head} top-1")
        accuracy.plot([r["epoch"] for r in tested], [100 * r.get(f"top5/{head}", math.nan) for r in tested], ls="--",
                      color=colour[head], label=f"{head} top-5")
    accuracy.set(xlabel="epoch", ylabel="test accuracy (%)", title="every exit")
    for axes in (losses, ce, accuracy):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small", loc="lower right" if axes is accuracy else "best")
    lr = accuracy.twinx()
    lr.plot(epochs, [r["lr"] for r in records], color="grey", lw=0.8, alpha=0.6)
    lr.set_ylabel("learning rate (end of epoch)", color="grey")

    fig.tight_layout()
    path = folder / "curves.png"
    with atomic_file(path, binary=True) as f:  # a viewer never sees half a file
        fig.savefig(f, dpi=100, format="png")
    return path
