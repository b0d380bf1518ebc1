"""Reproduction at CPU scale (issue 3): `python bench/reproduce.py [--epochs E] [--train-limit N] [--seeds S ...]`.

1. Baseline vs DS vs DKS: main-exit top-1 of specs/resnet20_fmnist.yaml (plain ResNet-20, width 8),
   specs/ds_resnet20_fmnist.yaml (the DKS heads, cross-entropy only) and specs/dks_resnet20_fmnist.yaml
   (heads + bi-directional synergy) on Fashion-MNIST, the same budget for all, mean ± std over seeds; also the
   aux exits of DS / DKS.
2. MW-BP: the per-exit table (exit, depth, params, FLOPs, top-1, top-5) of specs/mwbp_fmnist.yaml
   (pre-activation ResNet-56, width 8, exits after blocks 8/13/18/23, γ_k depth weights).

Every run is `netspec train SPEC train.epochs=E data.train_limit=N train.seed=S train.out=OUT/<spec>_s<S>` (its files in
`OUT/<spec>_s<S>/latest/`) in a
subprocess with OMP_NUM_THREADS=1 (torch then uses one intra-op thread) and NETSPEC_BUILD=OUT/build, at most
--jobs at once, longest first. The numbers are those of the *last* epoch (metrics.jsonl / exits.json), not the
best epoch: choosing the best epoch on the test split would flatter every method. A run whose directory already
holds a finished run with the same budget is reused (delete OUT, or pass --fresh, to train again);
`--collect` only reads what is there.

    python bench/reproduce.py                       # the tables of docs/reproduction.md
    python bench/reproduce.py --quick               # smoke run of the whole pipeline (~2 min, meaningless numbers)
    python bench/reproduce.py --only mwbp --mwbp-seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = [("baseline", "resnet20_fmnist"), ("DS", "ds_resnet20_fmnist"), ("DKS", "dks_resnet20_fmnist")]
MWBP = "mwbp_fmnist"
# rough cost of one training step relative to the plain ResNet-20 (for ordering the queue, longest first)
COST = {"resnet20_fmnist": 1.0, "ds_resnet20_fmnist": 1.3, "dks_resnet20_fmnist": 1.35, MWBP: 2.3}


def netspec() -> list[str]:
    exe = Path(sys.executable).with_name("netspec")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "netspec.cli"]


def budget(args: argparse.Namespace, seed: int) -> dict:
    return {"epochs": args.epochs, "train_limit": args.train_limit, "test_limit": args.test_limit, "seed": seed}


def overrides(b: dict, out: Path) -> list[str]:
    words = [f"train.epochs={b['epochs']}", f"train.seed={b['seed']}", f"train.out={out}"]
    if b["train_limit"]:
        words.append(f"data.train_limit={b['train_limit']}")
    if b["test_limit"]:
        words.append(f"data.test_limit={b['test_limit']}")
    return words


def finished(out: Path, b: dict) -> bool:
    try:
        same = json.loads((out / "budget.json").read_text()) == b
        return same and json.loads((out / "latest" / "exits.json").read_text())["epoch"] == b["epochs"]
    except (OSError, ValueError, KeyError):
        return False


def train_one(spec: str, b: dict, root: Path, fresh: bool) -> dict:
    """Train one spec/seed in a subprocess (or reuse a finished run); its wall time and return code."""
    out = root / f"{spec}_s{b['seed']}"
    if not fresh and finished(out, b):
        return {"spec": spec, "seed": b["seed"], "out": out, "wall": None, "rc": 0, "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NETSPEC_BUILD": str(root / "build"),
           "PYTHONUNBUFFERED": "1"}
    cmd = netspec() + ["train", f"specs/{spec}.yaml", *overrides(b, out)]
    started = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if rc == 0:
        (out / "budget.json").write_text(json.dumps(b) + "\n")
    print(f"  {'done' if rc == 0 else f'FAILED (exit {rc}, see {out}/train.log)'}: {spec} seed {b['seed']} "
          f"in {wall / 60:.1f} min", file=sys.stderr, flush=True)
    return {"spec": spec, "seed": b["seed"], "out": out, "wall": wall, "rc": rc, "reused": False}


def read_run(out: Path) -> dict | None:
    """The last epoch's record and the per-exit rows of a finished run."""
    try:
        records = [json.loads(line) for line in (out / "latest" / "metrics.jsonl").read_text().splitlines() if line.strip()]
        exits = json.loads((out / "latest" / "exits.json").read_text())["exits"]
    except (OSError, ValueError, KeyError):
        return None
    train_seconds = sum(r["seconds"] for r in records)
    return {"last": records[-1], "exits": exits, "train_seconds": train_seconds}


def mean_std(values: list[float]) -> str:
    """'mean ± std' in %, sample std (n − 1); '±  –' for a single value."""
    pct = [100 * v for v in values]
    if not pct:
        return "–"
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def method_tables(root: Path, seeds: list[int]) -> tuple[str, dict]:
    runs = {name: {s: read_run(root / f"{spec}_s{s}") for s in seeds} for name, spec in METHODS}
    data: dict = {}
    main_rows = ["| method | spec | seeds | main top-1 % (mean ± std) | main top-5 % | per seed (top-1 %) |",
                 "|---|---|---|---|---|---|"]
    for name, spec in METHODS:
        got = {s: r for s, r in runs[name].items() if r is not None}
        top1 = [r["last"]["top1/main"] for r in got.values()]
        top5 = [r["last"]["top5/main"] for r in got.values()]
        data[name] = {"spec": spec, "seeds": list(got), "top1/main": top1, "top5/main": top5}
        per_seed = ", ".join(f"{100 * v:.2f}" for v in top1)
        main_rows.append(f"| {name} | `{spec}` | {len(got)} | {mean_std(top1)} | {mean_std(top5)} | {per_seed} |")

    exit_rows = ["| method | exit | depth | params | FLOPs | top-1 % (mean ± std) | top-5 % (mean ± std) |",
                 "|---|---|---|---|---|---|---|"]
    for name, spec in METHODS:
        got = [r for r in runs[name].values() if r is not None]
        if not got:
            continue
        for row in got[0]["exits"]:
            h = row["exit"]
            top1 = [r["last"][f"top1/{h}"] for r in got]
            top5 = [r["last"][f"top5/{h}"] for r in got]
            data[name][f"top1/{h}"], data[name][f"top5/{h}"] = top1, top5
            exit_rows.append(f"| {name} | {h} | {row['depth']} | {fmt_count(row['params'])} | "
                             f"{fmt_count(row['flops'])} | {mean_std(top1)} | {mean_std(top5)} |")
    return "\n".join(main_rows) + "\n\n" + "\n".join(exit_rows), data


def mwbp_table(root: Path, seeds: list[int]) -> tuple[str, dict]:
    got = [r for r in (read_run(root / f"{MWBP}_s{s}") for s in seeds) if r is not None]
    if not got:
        return "(no finished MW-BP run)", {}
    n = len(got)
    lines = [f"| exit | depth | params | FLOPs | top-1 %{' (mean ± std)' * (n > 1)} | top-5 %"
             f"{' (mean ± std)' * (n > 1)} |", "|---|---|---|---|---|---|"]
    data = {"seeds": n, "exits": []}
    for row in got[0]["exits"]:
        h = row["exit"]
        top1 = [r["last"][f"top1/{h}"] for r in got]
        top5 = [r["last"][f"top5/{h}"] for r in got]
        data["exits"].append({**{k: row[k] for k in ("exit", "depth", "params", "flops")}, "top1": top1, "top5": top5})
        lines.append(f"| {h} | {row['depth']} | {fmt_count(row['params'])} | {fmt_count(row['flops'])} | "
                     f"{mean_std(top1)} | {mean_std(top5)} |")
    return "\n".join(lines), data


def plot(data: dict, mwbp: dict, folder: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    if any(data.get(m, {}).get("top1/main") for m, _ in METHODS):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, (name, _) in enumerate(METHODS):
            vals = [100 * v for v in data[name]["top1/main"]]
            if not vals:
                continue
            ax.bar(i, statistics.mean(vals), yerr=statistics.stdev(vals) if len(vals) > 1 else 0, capsize=6,
                   color=["#999999", "#4c72b0", "#c44e52"][i], alpha=0.8)
            ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
        lo = min(100 * v for m, _ in METHODS for v in data[m]["top1/main"])
        ax.set_ylim(lo - 2, None)
        ax.set_xticks(range(len(METHODS)), [m for m, _ in METHODS])
        ax.set_ylabel("main-exit top-1 % (test)")
        ax.set_title("ResNet-20 (w=8), Fashion-MNIST: mean ± std, dots = seeds", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "reproduction_methods.png", dpi=120)
        plt.close(fig)
    if mwbp:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = [e["flops"] / 1e6 for e in mwbp["exits"]]
        ys = [100 * statistics.mean(e["top1"]) for e in mwbp["exits"]]
        ax.plot(xs, ys, "o-")
        for e, x, y in zip(mwbp["exits"], xs, ys):
            ax.annotate(f"{e['exit']} (d={e['depth']})", (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize=8)
        ax.set_xlabel("forward MFLOPs of the model cut at the exit")
        ax.set_ylabel("top-1 % (test)")
        ax.set_title("MW-BP pre-act ResNet-56 (w=8): every exit as a model", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "reproduction_mwbp.png", dpi=120)
        plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=15000, help="first N training images (0: all 60,000)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test images (0: all 10,000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of baseline / DS / DKS")
    p.add_argument("--mwbp-seeds", type=int, nargs="+", default=[0], help="seeds of the MW-BP net")
    p.add_argument("--only", choices=["all", "methods", "mwbp"], default="all")
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    p.add_argument("--out", type=Path, default=Path("/tmp/repro"), help="run directories and build dir")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 epoch, 1280 train / 1000 test images, seeds 0 1 2, into OUT/quick")
    p.add_argument("--fresh", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--collect", action="store_true", help="train nothing; tabulate the runs in OUT")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR",
                   help="also write reproduction_methods.png and reproduction_mwbp.png into DIR")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.train_limit, args.test_limit, args.out = 1, 1280, 1000, args.out / "quick"
    args.out = args.out.resolve()

    jobs = []
    if args.only in ("all", "mwbp"):
        jobs += [(MWBP, s) for s in args.mwbp_seeds]
    if args.only in ("all", "methods"):
        jobs += [(spec, s) for s in args.seeds for _, spec in reversed(METHODS)]  # complete seeds come first
    jobs.sort(key=lambda j: -COST[j[0]] * (j[0] == MWBP))  # the long MW-BP run(s) first, the rest seed by seed

    started = time.perf_counter()
    results = []
    if not args.collect:
        print(f"{len(jobs)} runs, {args.jobs} at a time, {args.epochs} epochs, train_limit "
              f"{args.train_limit or 'all'}, test_limit {args.test_limit or 'all'}, into {args.out}",
              file=sys.stderr, flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda j: train_one(j[0], budget(args, j[1]), args.out, args.fresh), jobs))
    wall = time.perf_counter() - started

    text, data, mwbp = [], {}, {}
    how = (f"{args.epochs} epochs, first {args.train_limit or 60000} training images, "
           f"{'first ' + str(args.test_limit) if args.test_limit else 'all 10,000'} test images; last-epoch accuracy")
    if args.only in ("all", "methods"):
        table, data = method_tables(args.out, args.seeds)
        text.append(f"### Baseline vs DS vs DKS ({how}; seeds {' '.join(map(str, args.seeds))})\n\n{table}")
    if args.only in ("all", "mwbp"):
        table, mwbp = mwbp_table(args.out, args.mwbp_seeds)
        text.append(f"### MW-BP per-exit table ({how}; seeds {' '.join(map(str, args.mwbp_seeds))})\n\n{table}")
    timing = ["| run | wall min | train min (sum of epochs) |", "|---|---|---|"]
    for spec, s in jobs:
        r = read_run(args.out / f"{spec}_s{s}")
        w = next((x["wall"] for x in results if x["spec"] == spec and x["seed"] == s and x["wall"]), None)
        timing.append(f"| {spec} s{s} | {('reused' if r else '–') if w is None else f'{w / 60:.1f}'} | "
                      f"{'–' if r is None else format(r['train_seconds'] / 60, '.1f')} |")
    total = "collected only" if args.collect else f"total wall {wall / 60:.1f} min, {args.jobs} processes at once"
    text.append(f"### Timing ({total})\n\n" + "\n".join(timing))
    out = "\n\n".join(text)
    print(out)
    (args.out / "results.md").write_text(out + "\n")
    (args.out / "results.json").write_text(json.dumps({"budget": vars(args) | {"out": str(args.out),
                                                                               "plots": str(args.plots)},
                                                       "methods": data, "mwbp": mwbp, "wall_seconds": wall},
                                                      indent=1, default=str) + "\n")
    if args.plots:
        plot(data, mwbp, args.plots)
    failed = [r for r in results if r["rc"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
