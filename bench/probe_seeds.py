"""How stable is the probe's suggestion across seeds? (docs/probe.md, issue 9)

    python bench/probe_seeds.py [--seeds 0 1 2 3 4 5 6 7] [--out /tmp/probe_seeds] [--collect]

Runs, per seed (one process each, OMP_NUM_THREADS=1):
    netspec probe specs/cnds8_fmnist.yaml --init spec "init.weight={type: gaussian, std: 0.01}" --seed S --out OUT/sS
(the setting of docs/probe.md's conv3_2 claim: the paper's N(0, 0.01²) weights with the spec's biases), then
prints per seed the suggested layer, its mean |gradient| and the one of the conv layer just above it, both
as a factor of the threshold, and how often each layer was picked. `--collect` only reads OUT/s*/probe.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/cnds8_fmnist.yaml"
ARGS = ["--init", "spec", "init.weight={type: gaussian, std: 0.01}"]


def run(seed: int, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETSPEC_BUILD": str(out / "build")}
    cmd = [sys.executable, "-m", "netspec.cli", "probe", SPEC, *ARGS, "--seed", str(seed), "--out", str(out / f"s{seed}")]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def summarise(probe: dict) -> dict:
    mean = {layer: sum(v) / len(v) for layer, v in probe["gradients"].items()}
    convs = [layer for layer in probe["layers"] if layer.startswith("conv")]  # the candidates (conv layers)
    pick = probe["points"][0]["layer"] if probe["points"] else None
    above = convs[convs.index(pick) + 1] if pick and convs.index(pick) + 1 < len(convs) else None
    t = probe["threshold"]
    return {"seed": probe["seed"], "pick": pick, "pick_grad": mean.get(pick), "pick_margin": mean[pick] / t if pick else None,
            "above": above, "above_grad": mean.get(above), "above_margin": mean[above] / t if above else None,
            "mean": mean}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--out", type=Path, default=Path("/tmp/probe_seeds"))
    p.add_argument("--collect", action="store_true", help="only read the probe.json files")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        if not args.collect:
            run(seed, args.out)
        rows.append(summarise(json.loads((args.out / f"s{seed}" / "probe.json").read_text())))
    print("| seed | suggested | its mean \\|grad\\| (× threshold) | conv layer above | its mean \\|grad\\| (× threshold) |")
    print("|---:|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['pick']} | {r['pick_grad']:.2e} ({r['pick_margin']:.4g}×) | {r['above']} | "
              f"{r['above_grad']:.2e} ({r['above_margin']:.4g}×) |")
    counts = Counter(r["pick"] for r in rows)
    print("\npicked: " + ", ".join(f"{layer} {n}/{len(rows)}" for layer, n in counts.most_common()))
    layers = list(rows[0]["mean"])
    print("\n| layer | " + " | ".join(f"s{r['seed']}" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for layer in layers:
        print(f"| {layer} | " + " | ".join(f"{r['mean'][layer]:.1e}" for r in rows) + " |")


if __name__ == "__main__":
    main()
