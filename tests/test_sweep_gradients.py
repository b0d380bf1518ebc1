"""bench/sweep_gradients.py: a sweep's gradient records (steps.jsonl), geometric means over seeds, on a fabricated
sweep folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gradient_table_and_plot_of_a_sweep(tmp_path):
    home = tmp_path / "sweeps" / "s"
    arms = []
    for spec, scale in (("cnn8", 1e-6), ("cnds8", 1e-3)):
        runs = []
        for seed in (0, 1):
            run = home / "runs" / f"{spec}-s{seed}"
            run.mkdir(parents=True)
            steps = [{"step": 10 * i, "grad/conv1": scale * (seed + 1) * (10 if i > 12 else 1)} for i in range(1, 25)]
            (run / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
            runs.append(f"elsewhere/runs/{run.name}")  # results.json holds paths relative to where the sweep ran
        arms.append({"id": spec, "label": f"spec={spec}.yaml, init.weight=a", "state": "complete", "runs": runs,
                     "params": {"spec": f"specs/{spec}.yaml", "init.weight": "a"}})
    arms.append({"id": "x", "label": "failed", "state": "failed", "runs": [], "params": {}})
    (home / "results.json").write_text(json.dumps({"sweep": "s", "arms": arms}))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep_gradients.py"), str(home), "--layers", "conv1"],
                         capture_output=True, text=True, check=True).stdout
    # geometric mean of 1e-6 and 2e-6 over the first 10 records, ten times that over the last 10
    assert "| spec=cnn8.yaml, init.weight=a | conv1 | 1.41e-06 | 1.41e-05 |" in out
    assert "| spec=cnds8.yaml, init.weight=a | conv1 | 0.00141 | 0.0141 |" in out and "failed" not in out
    assert (home / "gradients.png").read_bytes()[:4] == b"\x89PNG"
