"""CNDS eq. (2) next to DSN's linear decay: `python bench/plot_alpha.py [--epochs 65] [--out docs/img/cnds_alpha.png]`.

CNDS (Wang et al. 2015, eq. 2) updates the branch weight every epoch, α_t ← α_t·(1 − t/N), i.e.
α_t = α₀·Π_{s=1..t}(1 − s/N) (netspec's `schedule: cnds`, implemented literally); DSN's companion weight
decays linearly, α_t = α₀·(1 − t/N) (`schedule: dsn`). Prints the first epoch at which eq. (2) is below 1 % of α₀.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from netspec.schedules import CNDSSchedule, DSNSchedule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=65, help="N (ImageNet-CNDS-8: 65)")
    p.add_argument("--alpha", type=float, default=0.3, help="α₀ (CNDS: 0.3)")
    p.add_argument("--out", default="docs/img/cnds_alpha.png")
    args = p.parse_args()
    n, a0 = args.epochs, args.alpha
    epochs = list(range(n + 1))
    cnds = [a0 * CNDSSchedule(type="cnds").factor(t, n, 1) for t in epochs]
    dsn = [a0 * DSNSchedule(type="dsn").factor(t, n, 1) for t in epochs]
    below = next(t for t, a in zip(epochs, cnds) if a < 0.01 * a0)
    for t in (1, 5, 10, 15, 20, below - 1, below):
        print(f"epoch {t:3d}: eq. (2) α = {cnds[t]:.3g} ({100 * cnds[t] / a0:.3g} % of α₀), DSN linear α = {dsn[t]:.3g}")
    print(f"eq. (2) first below 1 % of α₀ at epoch {below} of {n}")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(epochs, cnds, label="CNDS eq. (2): α_t ← α_t·(1 − t/N)  (schedule: cnds)")
    ax.plot(epochs, dsn, "--", label="DSN linear: α₀·(1 − t/N)  (schedule: dsn)")
    ax.axhline(0.01 * a0, color="grey", lw=0.8, ls=":")
    ax.axvline(below, color="grey", lw=0.8, ls=":")
    ax.annotate(f"< 1 % of α₀ from epoch {below}", (below, 0.01 * a0), xytext=(below + 3, 0.08),
                arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_xlabel(f"epoch t (N = {n})")
    ax.set_ylabel("branch loss weight α_t")
    ax.set_title(f"Branch weight over training, α₀ = {a0}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
