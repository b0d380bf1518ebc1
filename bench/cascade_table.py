"""The markdown tables of a `bench/cascade_acceptance.sh` run: per seed, the figures of the report split (the test
split; the thresholds were chosen on another split, named in the heading), then mean ± std over the seeds.

Per seed: main top-1, each early exit alone, the chosen thresholds, the cascade's top-1 (Δ against main), mean
FLOPs ÷ the full net's, the share of inputs leaving at each exit; `calibrate`'s measured batch-1 latency of the
runner ÷ the full model's and batch-64 throughput ÷ the full model's (wall clock, A/A controls in brackets); and,
when OUT/SPEC/bench_seedS.json exists, the same two ratios (A/A) from `bench/bench_cascade.py` (CPU clock, an
independent run on its own subset of the test split), the batch-1 ratio of the If-model (`anytime.onnx`) and the
load average at its start.

    python bench/cascade_table.py OUT SPEC [SEED ...]     (default: every OUT/SPEC/cascadeS/calibration.json)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

# (key, label, scale, unit) of the figures summarised over seeds
SUMMARY = [("saved", "FLOPs saved", 100, " %"), ("delta", "Δ top-1", 1, " points"),
           ("latency", "batch-1 latency ÷ full (calibrate, wall clock)", 1, "×"),
           ("throughput", "batch-64 throughput ÷ full (calibrate)", 1, "×"),
           ("bench_latency", "batch-1 latency ÷ full (bench, CPU clock)", 1, "×"),
           ("bench_if", "batch-1 latency of the If-model ÷ full (bench, CPU clock)", 1, "×"),
           ("bench_throughput", "batch-64 throughput ÷ full (bench)", 1, "×")]


def span(examples: list[int]) -> str:
    return f"{examples[0]}–{examples[1] - 1}"


def row(seed: str, calibration: dict, bench: dict | None) -> tuple[list[str], dict[str, float]]:
    """(the table row's cells, the figures summarised over seeds)."""
    exits, held, latency = calibration["exits"], calibration["report"], calibration["latency"]
    c = held["chosen"]
    flops = c["mean_flops"] / calibration["full_flops"]
    figures = {"saved": 1 - flops, "delta": c["top1"] - held["full_top1"]}
    cells = [seed, f"{held['full_top1']:.2f}", ", ".join(f"{e} {held['exit_top1'][e]:.1f}" for e in exits[:-1]),
             ", ".join(f"{t:g}" for t in c["thresholds"][:-1]), f"{c['top1']:.2f} ({figures['delta']:+.2f})",
             f"{flops:.3f}", " / ".join(f"{s:.0%}" for s in c["share"])]
    if latency:
        throughput = latency["throughput"]
        figures |= {"latency": c["latency_ratio"], "throughput": latency["throughput_ratio"]}
        cells += [f"{latency['full_ms']:.3g} → {c['latency_ms']:.3g}",
                  f"{c['latency_ratio']:.3f} ({latency['aa_ratio']:.3f})",
                  f"{latency['throughput_ratio']:.3f} ({throughput['full (A/A)'] / throughput['full']:.3f})"]
    else:
        cells += ["-"] * 3
    if bench:
        per_second = bench["throughput_64"]
        figures |= {"bench_latency": bench["latency_ratio"], "bench_if": bench["if_ratio"],
                    "bench_throughput": bench["throughput_ratio"]}
        cells += [f"{bench['latency_ratio']:.3f} ({bench['aa_ratio']:.3f})", f"{bench['if_ratio']:.3f}",
                  f"{bench['throughput_ratio']:.3f} ({per_second['full (A/A)'] / per_second['full']:.3f})",
                  f"{bench['load_average'][0]:.1f}"]
    else:
        cells += ["-"] * 4
    return cells, figures


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else f"{values[0]:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("spec")
    parser.add_argument("seeds", nargs="*")
    args = parser.parse_args()
    folder = Path(args.out) / args.spec
    seeds = args.seeds or sorted((re.sub(r"\D", "", p.parent.name) for p in folder.glob("cascade*/calibration.json")),
                                 key=int)
    if not seeds:
        raise SystemExit(f"no cascade*/calibration.json under {folder}")
    rows, figures = [], []
    for seed in seeds:
        calibration = json.loads((folder / f"cascade{seed}" / "calibration.json").read_text())
        bench_file = folder / f"bench_seed{seed}.json"
        cells, f = row(seed, calibration, json.loads(bench_file.read_text()) if bench_file.is_file() else None)
        rows.append("| " + " | ".join(cells) + " |")
        figures.append(f)
    choose, held, latency = calibration["choose"], calibration["report"], calibration["latency"]
    print(f"{args.spec}: thresholds chosen by {calibration.get('chosen_by', 'flops')} (calibrate --choose-by) on "
          f"{choose['split']} examples {span(choose['examples'])}, every figure on "
          f"{held['split']} examples {span(held['examples'])}"
          + (" (the same examples chose the thresholds: optimistic)" if calibration["same_examples"] else "")
          + (f"; calibrate timed {held['split']} examples {span(latency['examples'])}, {latency['threads']} thread(s), "
             f"median of {latency['rounds']} interleaved rounds" if latency else "") + "\n")
    print("| seed | main top-1 | exits alone (top-1) | chosen thresholds | cascade top-1 (Δ) | mean FLOPs / full | "
          f"share {' / '.join(calibration['exits'])} | calibrate: batch-1 ms full → cascade | calibrate: batch-1 "
          "latency / full (A/A) | calibrate: batch-64 throughput / full (A/A) | bench: latency / full (A/A) | "
          "bench: If-model latency / full | bench: throughput / full (A/A) | load at bench |")
    print("|" + "---|" * 14)
    print("\n".join(rows))
    print(f"\nover {len(rows)} seed(s), mean ± std:")
    for key, label, scale, unit in SUMMARY:
        values = [scale * f[key] for f in figures if key in f]
        if values:
            print(f"- {label}: {spread(values)}{unit}")


if __name__ == "__main__":
    main()
