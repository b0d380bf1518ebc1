"""PNG plots of a run's curves: `curves.png` in the run directory (matplotlib's Agg canvas, no pyplot)."""
from __future__ import annotations

import math
from pathlib import Path

from netspec.project import atomic_file


def plot_curves(records: list[dict], folder: Path) -> Path:
    """Left: every loss term and the total per epoch. Right: top-1 (solid) and top-5 (dashed) of every exit
    on the test split, with the learning rate on a second axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    keys = list(dict.fromkeys(k for r in records for k in r))
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    losses, accuracy = fig.subplots(1, 2)

    for key in ["loss"] + [k for k in keys if k.startswith("loss/")]:
        losses.plot(epochs, [r.get(key, math.nan) for r in records], marker="o", lw=2.5 if key == "loss" else 1.2,
                    label="total" if key == "loss" else key[len("loss/"):])
    losses.set(xlabel="epoch", ylabel="training loss (weighted, epoch mean)", title="loss terms")
    losses.grid(alpha=0.3)
    losses.legend(fontsize="small")

    for key in (k for k in keys if k.startswith("top1/")):
        head = key[len("top1/"):]
        (line,) = accuracy.plot(epochs, [100 * r.get(key, math.nan) for r in records], marker="o", label=f"{head} top-1")
        accuracy.plot(epochs, [100 * r.get(f"top5/{head}", math.nan) for r in records], ls="--", color=line.get_color(),
                      label=f"{head} top-5")
    accuracy.set(xlabel="epoch", ylabel="test accuracy (%)", title="every exit")
    accuracy.grid(alpha=0.3)
    accuracy.legend(fontsize="small", loc="lower right")
    lr = accuracy.twinx()
    lr.plot(epochs, [r["lr"] for r in records], color="grey", lw=0.8, alpha=0.6)
    lr.set_ylabel("learning rate (end of epoch)", color="grey")

    fig.tight_layout()
    path = folder / "curves.png"
    with atomic_file(path, binary=True) as f:  # a viewer never sees half a file
        fig.savefig(f, dpi=100, format="png")
    return path
