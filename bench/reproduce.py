"""Reproductions at CPU scale (issue 15): one table per paper, each probing that paper's claim in a regime a
2-core machine can train in about half an hour. `python bench/reproduce.py --table dks|mwbp|cnds [--out DIR]`.

- dks:  DKS (paper 002_*) claims better generalisation: an over-fitting regime (1,000 training images, 60 epochs,
        all 10,000 test images), DKS section 4.1's ResNet recipe scaled to 60 epochs, heads of the paper's relative
        capacity; baseline vs DS vs DKS, 5 paired seeds (the paper's count), plus DS/DKS with "too simple" AP+2FC
        heads (Table 3's direction).
- mwbp: MW-BP (paper 001_*) claims a shallower multi-exit net beats a deeper plain one (MwResNet-44 vs ResNet-110):
        the best exit of a multi-exit pre-act ResNet-20 trained with MW-BP's rule vs a plain pre-act ResNet-56 (and a
        plain ResNet-20 as control), the same budget, 3 paired seeds.
- cnds: CNDS (paper 000_*) claims the branch lets a deep plain net with Gaussian init train: CNN-8 vs CNDS-8 from
        the paper's N(0, 0.01²), N(0, 0.03²) (its per-layer gain at this width) and N(0, 0.05²), 3 paired seeds, with the
        lower layers' mean |gradient| logged every 10 steps and plotted.

Every run is `netspec train SPEC OVERRIDES train.seed=S train.out=OUT/<table>/<arm>_s<S>/runs` (its log and
`run.json` beside, in OUT/<table>/<arm>_s<S>/) in a subprocess with one
torch thread (OMP_NUM_THREADS=1), --jobs at once, longest first. Resumable: a run whose `run.json` records the
same command and `finished` is reused; one with the same command that was cut off continues with `--resume`
(from its last epoch checkpoint); `--fresh` trains everything again; `--collect` only tabulates. The figures are
the last epoch's (never the best epoch: picking it on the test split would flatter every method). Writes
OUT/<table>/results.md, results.json and the plots (also into --plots DIR).

The paired statistics are `netspec sweep`'s (netspec.runtime.sweep). New reproductions are sweep files run by
that command (specs/sweeps/, docs/reproduction.md); this script keeps the three issue-15 tables, whose reports
compare particular pairs of arms and plot gradient records.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from netspec.compiler.summary import human
from netspec.runtime.sweep import fmt_paired, mean_std, paired, verdict  # the statistics `netspec sweep` reports

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Arm:
    """One row of a table: a spec with its overrides, trained once per seed."""

    key: str
    label: str
    spec: str
    overrides: tuple[str, ...] = ()
    cost: float = 1.0  # relative time of a run, to start the longest first


@dataclass(frozen=True)
class Table:
    name: str
    claim: str
    budget: tuple[str, ...]  # overrides shared by every arm
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]


# DKS section 4.1 (ResNets): SGD momentum 0.9 (no Nesterov), weight decay 1e-4, lr 0.1 at batch 64 divided by 10
# every 60 of 200 epochs -> every 18 of 60 here. OURS: the regime (1,000 images, 60 epochs, test every 20) and batch
# 32 at lr 0.05 (the linear scaling of 0.1 at 64), for 1,875 steps instead of 940 at the same cost (a first try at
# batch 64 and 30 epochs left the nets under-fitted: 135 steps before the first drop, main ~50 %).
DKS_BUDGET = ("data.train_limit=1000", "train.epochs=60", "train.batch_size=32", "train.eval_every=20",
              "train.optimizer={type: sgd, lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 0.0001}",
              "train.lr_schedule={type: step, step_size: 18, gamma: 0.1}")
# heads of the paper's relative capacity: DHM's ResNet-32 heads [[5, 3], [5]] (n = 5) scaled to n = 3 (OURS, see
# specs/dks_resnet32.yaml); the official ε = 1e-8 smoothing of the synergy KL (dks_resnet20_fmnist keeps 0)
DKS_HEADS = ("vars.shallow=[3, 2]", "vars.deep=[3]")
# MW-BP's code recipe (specs/mwbp_resnet56.yaml: Nesterov 0.9, wd 1e-4, lr 0.1 at batch 128, x0.1 at 40 % and 60 %
# of the epochs). OURS: 3,000 images x 20 epochs at batch 64 and lr 0.05 (its linear scaling): 940 steps
MWBP_BUDGET = ("data.train_limit=3000", "train.epochs=20", "train.batch_size=64", "train.eval_every=10",
               "train.optimizer={type: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.0001}",
               "train.lr_schedule={type: multistep, milestones: [8, 12], gamma: 0.1}")
# the specs' own CPU recipe (cnds8_fmnist.yaml) on 20,000 images x 3 epochs (OURS), from Gaussian weights: the
# paper's N(0, 0.01²) (CNDS section 2; the released prototxt), and N(0, 0.03²) (OURS): at this net's 16-64 input channels
# that gives a 3x3 conv about the per-layer gain 0.01·√(9·C_in/2) ≈ 0.3-0.4 the paper's std has at AlexNet widths
# (C_in 256-384); std 0.01 here shrinks the signal ~10x per layer (docs/probe.md); and N(0, 0.05²) (OURS), added
# when neither net left chance at 0.03
CNDS_BUDGET = ("data.train_limit=20000", "train.epochs=3", "train.log_every_steps=10", "train.log_gradients=true")
GAUSSIAN = {std: (f"init.weight={{type: gaussian, std: {std}}}",) for std in (0.01, 0.03, 0.05)}
CNDS_PAIRS = (("cnn8", "cnds8"), ("cnn8_g03", "cnds8_g03"), ("cnn8_g05", "cnds8_g05"))
LOWER_LAYERS = ("conv1", "conv2", "conv3_1", "conv3_2")

TABLES = {t.name: t for t in (
    Table("dks", "DKS: in an over-fitting regime, DS helps a little and DKS more; with too simple heads DS hurts and "
                 "DKS hurts more (Table 3)", DKS_BUDGET, (
        Arm("baseline", "baseline", "resnet20_fmnist", (), 1.0),
        Arm("ds", "DS", "ds_resnet20_fmnist", DKS_HEADS, 2.7),
        Arm("dks", "DKS", "dks_resnet20_fmnist", DKS_HEADS + ("losses.synergy.smoothing=1e-8",), 2.8),
        Arm("ds_simple", "DS, AP+2FC heads", "ds_resnet20_simple_fmnist", (), 1.1),
        Arm("dks_simple", "DKS, AP+2FC heads", "dks_resnet20_simple_fmnist", ("losses.synergy.smoothing=1e-8",), 1.2),
    ), (0, 1, 2, 3, 4)),
    Table("mwbp", "MW-BP: a shallower multi-exit net beats a deeper plain net (MwResNet-44 > ResNet-110)", MWBP_BUDGET, (
        Arm("mw20", "Mw pre-act ResNet-20", "mwbp_resnet20_fmnist", (), 1.1),
        Arm("plain20", "plain pre-act ResNet-20", "preresnet56_fmnist", ("vars.n=3",), 1.0),
        Arm("plain56", "plain pre-act ResNet-56", "preresnet56_fmnist", (), 2.9),
    ), (0, 1, 2)),
    Table("cnds", "CNDS: from Gaussian init the branch lets the deep plain net train (vanishing gradients in its "
                  "lower layers without it)", CNDS_BUDGET, (
        Arm("cnn8", "CNN-8, N(0, 0.01²)", "cnn8_fmnist", GAUSSIAN[0.01], 0.9),
        Arm("cnds8", "CNDS-8, N(0, 0.01²)", "cnds8_fmnist", GAUSSIAN[0.01], 1.0),
        Arm("cnn8_g03", "CNN-8, N(0, 0.03²)", "cnn8_fmnist", GAUSSIAN[0.03], 0.9),
        Arm("cnds8_g03", "CNDS-8, N(0, 0.03²)", "cnds8_fmnist", GAUSSIAN[0.03], 1.0),
        Arm("cnn8_g05", "CNN-8, N(0, 0.05²)", "cnn8_fmnist", GAUSSIAN[0.05], 0.9),
        Arm("cnds8_g05", "CNDS-8, N(0, 0.05²)", "cnds8_fmnist", GAUSSIAN[0.05], 1.0),
    ), (0, 1, 2)),
)}


# --- running -------------------------------------------------------------------------------------------------

def netspec() -> list[str]:
    exe = Path(sys.executable).with_name("netspec")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "netspec.cli"]


def run_dir(root: Path, arm: Arm, seed: int) -> Path:
    return root / f"{arm.key}_s{seed}"


def command(table: Table, arm: Arm, seed: int, out: Path, extra: tuple[str, ...]) -> list[str]:
    return ["train", f"specs/{arm.spec}.yaml", *table.budget, *arm.overrides, *extra, "train.device=cpu",
            f"train.seed={seed}", f"train.out={out / 'runs'}"]


def train_one(words: list[str], out: Path, fresh: bool) -> dict:
    """Run one `netspec train` (or reuse / resume it, see the module doc); its wall time and return code."""
    record = out / "run.json"
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError):
        old = {}
    same = old.get("command") == words and not fresh
    if same and old.get("finished"):
        return {"out": out, "wall": None, "rc": 0, "how": "reused"}
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"command": words, "finished": False}) + "\n")
    how = "resumed" if same else "trained"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "NETSPEC_BUILD": str(out.parent / "build")}
    started = time.perf_counter()
    with open(out / "train.log", "a") as log:
        rc = subprocess.run(netspec() + words + ["--resume"] * same, cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if rc == 0:
        record.write_text(json.dumps({"command": words, "finished": True, "wall_seconds": round(wall, 1)}) + "\n")
    print(f"  {how if rc == 0 else f'FAILED (exit {rc}, see {out}/train.log)'}: {out.name} in {wall / 60:.1f} min",
          file=sys.stderr, flush=True)
    return {"out": out, "wall": wall, "rc": rc, "how": how}


def read_run(out: Path) -> dict | None:
    """A finished run's epoch records, step records and per-exit rows (None when it has not finished)."""
    latest = out / "runs" / "latest"
    try:
        if not json.loads((out / "run.json").read_text()).get("finished"):
            return None
        records = [json.loads(x) for x in (latest / "metrics.jsonl").read_text().splitlines() if x.strip()]
        exits = json.loads((latest / "exits.json").read_text())["exits"]
    except (OSError, ValueError, KeyError):
        return None
    steps_file = latest / "steps.jsonl"
    steps = [json.loads(x) for x in steps_file.read_text().splitlines() if x.strip()] if steps_file.is_file() else []
    return {"records": records, "last": records[-1], "exits": exits, "steps": steps,
            "train_seconds": sum(r["seconds"] for r in records)}


# --- the tables ----------------------------------------------------------------------------------------------

def collect(table: Table, root: Path, seeds: list[int]) -> dict[str, dict[int, dict]]:
    """arm key -> seed -> finished run (seeds without a finished run of every arm are dropped: pairs stay paired)."""
    runs = {arm.key: {s: read_run(run_dir(root, arm, s)) for s in seeds} for arm in table.arms}
    complete = [s for s in seeds if all(runs[a.key][s] is not None for a in table.arms)]
    return {key: {s: by_seed[s] for s in complete} for key, by_seed in runs.items()}


def top1(runs: dict[int, dict], head: str = "main") -> list[float]:
    return [r["last"][f"top1/{head}"] for r in runs.values()]


def exit_row(run: dict, head: str) -> dict:
    return next(e for e in run["exits"] if e["exit"] == head)


def dks_report(table: Table, runs: dict) -> tuple[str, dict]:
    arms = {a.key: a for a in table.arms}
    seeds = list(runs["baseline"])
    base = top1(runs["baseline"])
    rows = ["| method | main top-1 % (mean ± std) | per seed | Δ vs baseline, points (paired mean [95 % CI]) | "
            "main train CE, last epoch |", "|---|---|---|---|---|"]
    data = {"seeds": seeds, "arms": {}}
    for key, arm in arms.items():
        acc = top1(runs[key])
        vs = paired(acc, base) if key != "baseline" else None
        ce = [r["last"]["ce/main"] for r in runs[key].values()]
        exits = next(iter(runs[key].values()))["exits"] if acc else []
        data["arms"][key] = {"label": arm.label, "spec": arm.spec, "overrides": list(arm.overrides), "top1": acc,
                             "vs_baseline": vs, "train_ce": ce,
                             "exits": {e["exit"]: top1(runs[key], e["exit"]) for e in exits}}
        if acc:
            rows.append(f"| {arm.label} (`{arm.spec}`{' ' + ' '.join(arm.overrides) if arm.overrides else ''}) | "
                        f"{mean_std(acc)} | {', '.join(f'{100 * v:.2f}' for v in acc)} | {fmt_paired(vs)} | "
                        f"{statistics.mean(ce):.3f} |")
    pairs = {"DKS − DS (designed heads)": paired(top1(runs["dks"]), top1(runs["ds"])),
             "DKS − DS (AP+2FC heads)": paired(top1(runs["dks_simple"]), top1(runs["ds_simple"])),
             "DS (designed) − DS (AP+2FC)": paired(top1(runs["ds"]), top1(runs["ds_simple"]))}
    data["pairs"] = pairs
    rows += ["", "| paired difference (main top-1, points) | mean [95 % CI] | per seed |", "|---|---|---|"]
    rows += [f"| {name} | {fmt_paired(p)} | {', '.join(f'{d:+.2f}' for d in p['per_seed']) if p else '–'} |"
             for name, p in pairs.items()]
    rows += ["", "| method | exit | depth | params | FLOPs | top-1 % (mean ± std) |", "|---|---|---|---|---|---|"]
    for key, arm in arms.items():
        if not runs[key]:
            continue
        first = next(iter(runs[key].values()))
        for e in first["exits"]:
            rows.append(f"| {arm.label} | {e['exit']} | {e['depth']} | {human(e['params'])} | "
                        f"{human(e['flops'])} | {mean_std(top1(runs[key], e['exit']))} |")
    v = data["arms"]
    said = [f"DS vs baseline: {verdict(v['ds']['vs_baseline'], 'DS better (the paper: slightly better)', 'DS worse')}",
            f"DKS vs baseline: {verdict(v['dks']['vs_baseline'], 'DKS better (the paper direction)', 'DKS worse')}",
            f"DKS vs DS: {verdict(pairs['DKS − DS (designed heads)'], 'DKS better (the paper direction)', 'DKS worse')}",
            f"AP+2FC heads, DS vs baseline: {verdict(v['ds_simple']['vs_baseline'], 'DS better', 'DS worse (the paper direction)')}",
            f"AP+2FC heads, DKS vs DS: {verdict(pairs['DKS − DS (AP+2FC heads)'], 'DKS better', 'DKS worse (the paper direction)')}"]
    data["verdicts"] = said
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {s}" for s in said), data


def mwbp_report(table: Table, runs: dict) -> tuple[str, dict]:
    arms = {a.key: a for a in table.arms}
    seeds = list(runs["mw20"])
    rows = ["| net | exit | depth | params | FLOPs | top-1 % (mean ± std) | per seed |", "|---|---|---|---|---|---|---|"]
    data: dict = {"seeds": seeds, "arms": {}}
    for key, arm in arms.items():
        if not runs[key]:
            continue
        first = next(iter(runs[key].values()))
        data["arms"][key] = {"label": arm.label, "spec": arm.spec, "overrides": list(arm.overrides), "exits": {}}
        for e in first["exits"]:
            acc = top1(runs[key], e["exit"])
            data["arms"][key]["exits"][e["exit"]] = {**{k: e[k] for k in ("depth", "params", "flops")}, "top1": acc}
            rows.append(f"| {arm.label} | {e['exit']} | {e['depth']} | {human(e['params'])} | "
                        f"{human(e['flops'])} | {mean_std(acc)} | {', '.join(f'{100 * x:.2f}' for x in acc)} |")
    if not seeds:
        return "\n".join(rows), data
    mw = data["arms"]["mw20"]["exits"]
    best = max(mw, key=lambda h: statistics.mean(mw[h]["top1"]))
    vs56 = paired(mw[best]["top1"], top1(runs["plain56"]))
    vs20 = paired(top1(runs["mw20"]), top1(runs["plain20"]))
    data |= {"best_exit": best, "best_vs_plain56": vs56, "main_vs_plain20": vs20}
    rows += ["", "| paired difference (top-1, points) | mean [95 % CI] | per seed |", "|---|---|---|",
             f"| Mw-20 best exit ({best}) − plain ResNet-56 | {fmt_paired(vs56)} | "
             f"{', '.join(f'{d:+.2f}' for d in vs56['per_seed']) if vs56 else '–'} |",
             f"| Mw-20 main − plain ResNet-20 | {fmt_paired(vs20)} | "
             f"{', '.join(f'{d:+.2f}' for d in vs20['per_seed']) if vs20 else '–'} |"]
    said = [f"Mw-20 ({best}) vs plain ResNet-56: "
            + verdict(vs56, "the shallow multi-exit net is better (the paper direction)", "the deeper plain net is better"),
            "Mw-20 main vs plain ResNet-20 (MW-BP's rule on the same net): "
            + verdict(vs20, "MW-BP better", "MW-BP worse")]
    data["verdicts"] = said
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {s}" for s in said), data


def grad_curves(runs: dict[int, dict], layer: str) -> tuple[list[int], list[float]]:
    """Steps and the geometric mean over seeds of `grad/<layer>` (the seeds log the same steps)."""
    seeds = list(runs.values())
    steps = [s["step"] for s in seeds[0]["steps"] if f"grad/{layer}" in s]
    means = []
    for i in range(len(steps)):
        logs = [math.log(max(r["steps"][i][f"grad/{layer}"], 1e-30)) for r in seeds]
        means.append(math.exp(statistics.mean(logs)))
    return steps, means


def cnds_report(table: Table, runs: dict) -> tuple[str, dict]:
    arms = {a.key: a for a in table.arms}
    seeds = list(runs["cnn8"])
    data: dict = {"seeds": seeds, "arms": {}}
    if not seeds:
        return "(no finished pair of runs)", data
    epochs = [r["epoch"] for r in next(iter(runs["cnn8"].values()))["records"]]
    rows = ["| net, init | " + " | ".join(f"top-1 % after epoch {e}" for e in epochs) + " | per seed (last) | "
            "main train CE, last epoch |", "|---" * (len(epochs) + 3) + "|"]
    window = 10  # step records (100 steps) at the start and at the end
    grads = ["| net, init | layer | mean \\|∂L/∂W\\|, first 100 steps (geo. mean) | last 100 steps |", "|---|---|---|---|"]
    for key, arm in arms.items():
        per_epoch = [[r["records"][i].get("top1/main", math.nan) for r in runs[key].values()] for i in range(len(epochs))]
        ce = [r["last"]["ce/main"] for r in runs[key].values()]
        data["arms"][key] = {"label": arm.label, "spec": arm.spec, "overrides": list(arm.overrides),
                             "top1_per_epoch": per_epoch, "train_ce": ce, "grad": {}}
        rows.append(f"| {arm.label} | " + " | ".join(mean_std(v) for v in per_epoch) + " | "
                    + ", ".join(f"{100 * v:.2f}" for v in per_epoch[-1]) + f" | {statistics.mean(ce):.3f} |")
        for layer in LOWER_LAYERS:
            steps, values = grad_curves(runs[key], layer)
            early = math.exp(statistics.mean(math.log(max(v, 1e-30)) for v in values[:window]))
            late = math.exp(statistics.mean(math.log(max(v, 1e-30)) for v in values[-window:]))
            data["arms"][key]["grad"][layer] = {"steps": steps, "norm": values, "early": early, "late": late}
            grads.append(f"| {arm.label} | {layer} | {early:.3g} | {late:.3g} |")
    said = []
    for plain, branched in CNDS_PAIRS:
        vs = paired(top1(runs[branched]), top1(runs[plain]))
        data[f"{branched}_vs_{plain}"] = vs
        state = {k: "trains" if statistics.mean(top1(runs[k])) > 0.2 else "stays near chance (10 %)"
                 for k in (plain, branched)}
        said.append(f"{arms[plain].label}: {state[plain]}; {arms[branched].label}: {state[branched]}; CNDS-8 − CNN-8 "
                    f"(last epoch, paired) {fmt_paired(vs)} points — "
                    + verdict(vs, "CNDS-8 better (the paper direction)", "CNDS-8 worse"))
    data["verdicts"] = said
    return ("\n".join(rows) + "\n\n" + "\n".join(grads) + "\n\n" + "\n".join(f"- {x}" for x in said)), data


REPORTS = {"dks": dks_report, "mwbp": mwbp_report, "cnds": cnds_report}


# --- plots ---------------------------------------------------------------------------------------------------

def plot(table: Table, data: dict, folder: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 6.4) if table.name == "cnds" else (6.5, 3.6))
    FigureCanvasAgg(fig)
    if table.name == "cnds":
        grid = fig.subplots(len(CNDS_PAIRS), len(LOWER_LAYERS), sharex=True, sharey="row", squeeze=False)
        for row, pair in zip(grid, CNDS_PAIRS):
            for ax, layer in zip(row, LOWER_LAYERS):
                for key, colour in zip(pair, ("#999999", "#c44e52")):
                    g = data["arms"][key]["grad"][layer]
                    ax.plot(g["steps"], g["norm"], color=colour, label=data["arms"][key]["label"])
                ax.set(yscale="log", title=layer)
                ax.grid(alpha=0.3)
            row[0].set_ylabel("mean |∂L/∂W| (geo. mean over seeds)")
            row[0].legend(fontsize=7)
        for ax in grid[-1]:
            ax.set_xlabel("step")
        fig.suptitle("CNN-8 vs CNDS-8 from Gaussian init: mean |gradient| of the lower layers (cf. CNDS Fig. 2)", fontsize=10)
    else:
        ax = fig.subplots()
        if table.name == "dks":
            items = [(v["label"], v["top1"]) for v in data["arms"].values()]
        else:
            items = [(f"{v['label']} {h}", e["top1"]) for v in data["arms"].values() for h, e in v["exits"].items()]
        for i, (label, values) in enumerate(items):
            pct = [100 * x for x in values]
            ax.bar(i, statistics.mean(pct), yerr=statistics.stdev(pct) if len(pct) > 1 else 0, capsize=4, alpha=0.7)
            ax.scatter([i] * len(pct), pct, color="k", s=10, zorder=3)
        low = min(100 * x for _, values in items for x in values)
        ax.set_ylim(low - 2, None)
        ax.set_xticks(range(len(items)), [label for label, _ in items], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("test top-1 % (last epoch)")
        ax.set_title(f"{table.name}: mean ± std, dots = seeds", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = folder / f"reproduction_{table.name}.png"
    fig.savefig(path, dpi=110)
    return [path]


# --- main ----------------------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--table", choices=sorted(TABLES), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the table's (5 for dks, else 3)")
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (1 torch thread each)")
    p.add_argument("--out", type=Path, default=Path("/tmp/repro"), help="run directories go to OUT/<table>/")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch on 512 training / 1,000 test images, "
                                                        "seeds 0 1, into OUT/quick/<table> (numbers mean nothing)")
    p.add_argument("--fresh", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--collect", action="store_true", help="train nothing; tabulate the finished runs")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR", help="also copy the plot(s) into DIR")
    args = p.parse_args()
    table = TABLES[args.table]
    seeds = args.seeds or list(table.seeds)
    extra: tuple[str, ...] = ()
    root = args.out / args.table
    if args.quick:
        seeds, root = args.seeds or [0, 1], args.out / "quick" / args.table
        extra = ("train.epochs=1", "data.train_limit=512", "data.test_limit=1000", "train.eval_every=1",
                 "train.log_every_steps=1")
    root = root.resolve()

    jobs = sorted(((arm, s) for s in seeds for arm in table.arms), key=lambda j: (-j[0].cost, j[1]))
    started = time.perf_counter()
    results = []
    if not args.collect:
        print(f"{args.table}: {len(jobs)} runs, {args.jobs} at a time, into {root}", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda j: train_one(command(table, j[0], j[1], run_dir(root, *j), extra),
                                                        run_dir(root, *j), args.fresh), jobs))
    wall = time.perf_counter() - started

    runs = collect(table, root, seeds)
    body, data = REPORTS[table.name](table, runs)
    timing = ["| run | wall min (this call) | train min (sum of epochs) |", "|---|---|---|"]
    for (arm, s), r in zip(jobs, results or [None] * len(jobs)):
        done = read_run(run_dir(root, arm, s))
        wall_min = "–" if not r or r["wall"] is None else f"{r['wall'] / 60:.1f}"
        train_min = "–" if done is None else f"{done['train_seconds'] / 60:.1f}"
        timing.append(f"| {arm.key}_s{s} | {wall_min} | {train_min} |")
    budget = " ".join(table.budget + extra)
    text = (f"### {table.claim}\n\nbudget (every arm): `{budget}`; seeds {' '.join(map(str, seeds))} "
            f"(paired: seed s of every arm); {len(next(iter(runs.values())))} complete seed(s)\n\n{body}\n\n"
            f"timing: {'collected only' if args.collect else f'{wall / 60:.1f} min wall, {args.jobs} runs at once'}"
            f"\n\n" + "\n".join(timing))
    print(text)
    (root / "results.md").write_text(text + "\n")
    (root / "results.json").write_text(json.dumps({"table": table.name, "budget": list(table.budget + extra),
                                                   "seeds": seeds, "wall_seconds": wall, **data}, indent=1) + "\n")
    if any(runs[a.key] for a in table.arms):
        for path in plot(table, data, root):
            if args.plots:
                args.plots.mkdir(parents=True, exist_ok=True)
                (args.plots / path.name).write_bytes(path.read_bytes())
    return 1 if any(r["rc"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
