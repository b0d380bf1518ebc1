"""DDP on CPU (gloo, 2 processes through torchrun): ranks stay identical and match one process with the same
global batch; `netspec train --nproc-per-node 2` launches it, and rank 0 alone writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from netspec.compiler import compile_spec
from netspec.runtime.checkpoint import load_checkpoint
from netspec.runtime.train import train
from test_train import tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Every epoch is one full batch of the 32 examples kept, so the two ranks' halves make up exactly the batch a
# single process sees (without augmentation or dropout, whose random draws differ per rank by design).
FULL_BATCH = ["data.train_limit=32", "train.batch_size=32", "train.epochs=4", "train.lr_schedule.type=constant"]

RANK_SCRIPT = """\
import os, sys, torch
from netspec.compiler import compile_spec
from netspec.runtime.train import train
result = train(compile_spec(sys.argv[1], sys.argv[2:]))
torch.save(result.model.state_dict(), os.path.join(os.path.dirname(sys.argv[1]), f"rank{os.environ['RANK']}.pt"))
"""


def torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_ranks_stay_identical_and_match_a_single_process(tmp_path):
    spec = tiny_spec(tmp_path)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    done = torchrun(tmp_path, str(script), str(spec), *FULL_BATCH, f"train.out={tmp_path / 'ddp'}")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = train(compile_spec(spec, [*FULL_BATCH, f"train.out={tmp_path / 'single'}"])).model.state_dict()
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(single["conv1.weight"], compile_spec(spec).module.state_dict()["conv1.weight"])  # it trained
    ddp, one = ([json.loads(line) for line in (tmp_path / run / "latest" / "metrics.jsonl").read_text().splitlines()]
                for run in ("ddp", "single"))
    assert len(ddp) == 4  # rank 0 alone writes
    for a, b in zip(ddp, one):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["top1/main"] == b["top1/main"]


def test_nproc_per_node_launches_torchrun(tmp_path):
    spec = tiny_spec(tmp_path)
    done = subprocess.run([sys.executable, "-m", "netspec.cli", "train", "--nproc-per-node", "2", str(spec),
                           "train.epochs=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchrun --standalone --nproc-per-node=2 -m netspec.cli train" in done.stderr
    assert "on 2 × cpu" in done.stderr and done.stdout.count("\nexit ") == 1
    assert load_checkpoint(tmp_path / "run/latest/checkpoints/last.pt")["epoch"] == 1
    assert len((tmp_path / "run/latest/metrics.jsonl").read_text().splitlines()) == 1


def test_sigterm_twice_to_the_launcher_saves_once_and_exits_143_without_traceback(tmp_path):
    """SIGTERM to `netspec train --nproc-per-node 2` reaches every rank: they stop at the same step, rank 0 saves
    and alone says so; the launcher exits 143, a second SIGTERM keeping that status; the printed command resumes."""
    spec = tiny_spec(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "netspec.cli", "train", "--nproc-per-node", "2", str(spec),
                              "train.epochs=30", "train.run_name=r1", "train.log_every_steps=1"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = tmp_path / "run/r1/steps.jsonl"
    deadline = time.monotonic() + 180
    while not (steps.is_file() and steps.read_text().count("\n") >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=180)
    assert child.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "Warning" not in err and "warning" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("netspec: SIGTERM")]
    assert len(said) == 1 and said[0].endswith(f"resume with: netspec train --resume --run {tmp_path / 'run/r1'} "
                                               "--nproc-per-node 2"), err[-3000:]
    state = load_checkpoint(tmp_path / "run/r1/checkpoints/last.pt")
    assert 0 < state["step"] and len(state["rng"]) == 2
    resumed = subprocess.run([sys.executable, "-m", "netspec.cli", *said[0].split("resume with: netspec ")[1].split()],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "run/r1/checkpoints/last.pt")["epoch"] == 30
