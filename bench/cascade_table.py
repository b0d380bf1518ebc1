"""One markdown table of a `bench/cascade_acceptance.sh` run, per seed, figures of the report split (not used to
choose the thresholds), then mean ± std over the seeds of the FLOPs saving and Δ top-1.

    python bench/cascade_table.py OUT SPEC [SEED ...]     (default: every OUT/SPEC/cascadeS/calibration.json)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def row(seed: str, calibration: dict, bench: dict | None) -> tuple[str, float, float]:
    """(the table row, FLOPs saved, Δ top-1 in points)."""
    exits, held = calibration["exits"], calibration["report"]
    c = held["chosen"]
    delta, flops = c["top1"] - held["full_top1"], c["mean_flops"] / calibration["full_flops"]
    measured_by_calibrate = f"{c['latency_ratio']:.3f}" if "latency_ratio" in c else "-"
    measured = ratio = "-"
    if bench:
        ms = bench["latency_ms"]
        measured = f"{ms['full']:.3g} → {ms['runner']:.3g}"
        ratio = f"{bench['latency_ratio']:.2f} ({bench['aa_ratio']:.2f})"
    cells = [seed, f"{held['full_top1']:.2f}", ", ".join(f"{e} {held['exit_top1'][e]:.1f}" for e in exits[:-1]),
             ", ".join(f"{t:g}" for t in c["thresholds"][:-1]), f"{c['top1']:.2f} ({delta:+.2f})", f"{flops:.3f}",
             " / ".join(f"{s:.0%}" for s in c["share"]), measured_by_calibrate, measured, ratio]
    return "| " + " | ".join(cells) + " |", 1 - flops, delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("spec")
    parser.add_argument("seeds", nargs="*")
    args = parser.parse_args()
    folder = Path(args.out) / args.spec
    seeds = args.seeds or sorted((re.sub(r"\D", "", p.parent.name) for p in folder.glob("cascade*/calibration.json")),
                                 key=int)
    rows, saved, deltas = [], [], []
    for seed in seeds:
        calibration = json.loads((folder / f"cascade{seed}" / "calibration.json").read_text())
        bench_file = folder / f"bench_seed{seed}.json"
        line, s, d = row(seed, calibration, json.loads(bench_file.read_text()) if bench_file.is_file() else None)
        rows.append(line)
        saved.append(s)
        deltas.append(d)
    if not rows:
        raise SystemExit(f"no cascade*/calibration.json under {folder}")
    exits = " / ".join(calibration["exits"])
    held = calibration["report"]
    print(f"{args.spec}: report split = test examples {held['examples'][0]}–{held['examples'][1] - 1}"
          + (" (the same examples chose the thresholds: optimistic)" if calibration["same_examples"] else
             f", thresholds chosen on {calibration['choose']['examples'][0]}–{calibration['choose']['examples'][1] - 1}")
          + "\n")
    print(f"| seed | main top-1 | exits alone (top-1) | chosen thresholds | cascade top-1 (Δ) | mean FLOPs / full | "
          f"share {exits} | calibrate's measured latency / full | bench latency full → cascade (ms, batch 1) | ratio (A/A) |")
    print("|" + "---|" * 10)
    print("\n".join(rows))
    spread = (lambda v: f"{statistics.mean(v):.3g} ± {statistics.stdev(v):.2g}" if len(v) > 1 else f"{v[0]:.3g}")
    print(f"\nover {len(rows)} seed(s), mean ± std: FLOPs saved {spread([100 * s for s in saved])} %, "
          f"Δ top-1 {spread(deltas)} points")


if __name__ == "__main__":
    main()
