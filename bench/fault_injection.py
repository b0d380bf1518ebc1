"""Interrupt real `netspec train` processes and resume them: is every resumed run bitwise the uninterrupted one?

    python bench/fault_injection.py OUT_DIR [--kills 8] [--seed 0]

One uninterrupted run of a small cnds8_fmnist budget (dropout, flips, a validation split, a snapshot every 3
steps), then runs stopped by kill -9 at random moments, by SIGTERM and by SIGINT, each resumed with
`netspec train SPEC ... train.run_name=NAME --resume` (a run stopped before its directory existed starts anew) until
it finishes;
the final last.pt of each is compared tensor by tensor with the uninterrupted run's. Prints one table row per run.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SPEC = Path(__file__).resolve().parent.parent / "specs" / "cnds8_fmnist.yaml"
BUDGET = ["data.train_limit=512", "data.test_limit=128", "data.val_split=128", "train.epochs=3",
          "train.batch_size=32", "train.checkpoint_every_steps=3", "train.threads=1"]


def netspec(*words: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "netspec.cli", *words], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.out.resolve()
    straight = netspec("train", str(SPEC), *BUDGET, f"train.out={root}", "train.run_name=straight")
    started = time.monotonic()
    straight.communicate()
    duration = time.monotonic() - started
    reference = weights(root / "straight")
    cases = [("kill -9", signal.SIGKILL)] * args.kills + [("SIGTERM", signal.SIGTERM)] * 2 + [("SIGINT", signal.SIGINT)] * 2
    print(f"uninterrupted run: {duration:.1f} s; stopping each run at a random moment in (2 s, {0.7 * duration:.0f} s)")
    print("| # | signal | stopped after s | exit status | resumes | messages | tracebacks | bitwise equal |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (name, sig) in enumerate(cases):
        run = f"r{i}"
        child = netspec("train", str(SPEC), *BUDGET, f"train.out={root}", f"train.run_name={run}")
        delay = rng.uniform(2.0, 0.7 * duration)  # while it trains (start-up takes about 2 s)
        try:
            child.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            child.send_signal(sig)
        out, err = child.communicate()
        status, resumes, texts, tracebacks = child.returncode, 0, [], int("Traceback" in err)
        texts += [line for line in err.splitlines() if line.startswith("netspec:")]
        while True:
            resumes += 1
            again = netspec("train", str(SPEC), *BUDGET, f"train.out={root}", f"train.run_name={run}", "--resume")
            out, err = again.communicate()
            tracebacks += int("Traceback" in err)
            texts += [line for line in err.splitlines() if line.startswith("netspec:")]
            if again.returncode == 0 or resumes > 3:
                break
        equal = all(torch.equal(a, b) for a, b in zip(reference.values(), weights(root / run).values()))
        said = "; ".join(t[:70] for t in texts) or "-"
        print(f"| {i} | {name} | {delay:.1f} | {status} | {resumes} | {said} | {tracebacks} | {equal} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
