"""Runs you can trust (issue 11): consistent checkpoints under faults, heads that know their graph, a run as a record.

Tiny spec and data from test_train.py; every run is a few steps on CPU.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from netspec import cli
from netspec.compiler import compile_spec
from netspec.errors import UserError
from netspec.runtime import checkpoint as ckpt
from netspec.runtime import train as train_mod
from netspec.runtime.train import train
from test_train import tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SHORT = ["train.epochs=1", "train.steps_per_epoch=1"]


def same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def scripted_accuracy(monkeypatch, main_top1: dict[int, float]):
    """Make evaluation report a fixed main top-1 per epoch (so which epoch is best is known in advance)."""
    evaluate = train_mod.evaluate

    def fake(model, batches, heads, ctx, autocast):
        result = evaluate(model, batches, heads, ctx, autocast)
        frame = sys._getframe(1)
        while "epoch" not in frame.f_locals:  # the training loop's frame, however deep evaluate is called from it
            frame = frame.f_back
        epoch = frame.f_locals["epoch"]
        return {**result, "main": (main_top1[epoch + 1], result["main"][1])}

    monkeypatch.setattr(train_mod, "evaluate", fake)


# --- §0 checkpoint integrity ---------------------------------------------------------------

def test_a_kill_between_the_best_and_last_writes_is_repaired_on_resume(tmp_path, monkeypatch, capsys):
    spec = tiny_spec(tmp_path, dropout=True)
    scripted_accuracy(monkeypatch, {1: 0.3, 2: 0.5, 3: 0.4})  # best: epoch 2
    straight = train(compile_spec(spec, ["train.epochs=3", f"train.out={tmp_path / 'a'}"]))

    write, written = ckpt._write, []

    def killed_after_best_of_epoch_2(path, data):
        written.append(path.name)
        if written.count(ckpt.LAST) == 2:  # epoch 2: best.pt is on disk, last.pt is not
            raise KeyboardInterrupt
        write(path, data)

    with monkeypatch.context() as m:
        m.setattr(ckpt, "_write", killed_after_best_of_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(compile_spec(spec, ["train.epochs=3", f"train.out={tmp_path / 'b'}"]))
    folder = tmp_path / "b/latest/checkpoints"
    index = json.loads((folder / ckpt.INDEX).read_text())
    # the record (spec.yaml, run.json, the manifest's `record`), then epoch 1's best, last, manifest; epoch 2's best
    assert written == ["spec.yaml", "run.json", ckpt.INDEX, ckpt.BEST, ckpt.LAST, ckpt.INDEX, ckpt.BEST, ckpt.LAST]
    assert ckpt.load_checkpoint(folder / ckpt.BEST)["epoch"] == 2 and index["best"]["epoch"] == 1  # never older
    capsys.readouterr()

    resumed = train(compile_spec(spec, ["train.epochs=3", f"train.out={tmp_path / 'b'}"]), resume=True)
    err = capsys.readouterr().err
    assert "the manifest said best.pt holds epoch 1 step 4; it holds epoch 2 step 8" in err
    index = json.loads((folder / ckpt.INDEX).read_text())
    best, last = ckpt.load_checkpoint(folder / ckpt.BEST), ckpt.load_checkpoint(folder / ckpt.LAST)
    assert (index["best"]["epoch"], index["best"]["value"]) == (best["epoch"], best["best"]) == (2, 0.5)
    assert (index["last"]["epoch"], index["last"]["step"]) == (last["epoch"], last["step"]) == (3, 12)
    assert last["best"] == 0.5
    same_weights(best["model"], ckpt.load_checkpoint(tmp_path / "a/latest/checkpoints/best.pt")["model"])
    same_weights(resumed.model.state_dict(), straight.model.state_dict())


def test_verify_names_the_repair(tmp_path, monkeypatch, capsys):
    spec = tiny_spec(tmp_path)
    train(compile_spec(spec, ["train.epochs=1"]))
    folder = tmp_path / "run/latest/checkpoints"
    index = json.loads((folder / ckpt.INDEX).read_text())
    index["best"]["epoch"] = 7
    (folder / ckpt.INDEX).write_text(json.dumps(index))
    assert ckpt.verify(folder) == ["the manifest said best.pt holds epoch 7 step 4; it holds epoch 1 step 4"]
    assert ckpt.verify(folder) == []


def test_non_finite_parameters_never_reach_a_checkpoint(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    step, calls = torch.optim.SGD.step, []

    def poisoned_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 8:  # the last step of epoch 2: its loss was finite, its update is not
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_step)
    with pytest.raises(UserError, match=r"epoch 2, step 8: the update of step 8 made conv1 non-finite .*nothing of "
                                        r"it was saved, the last good checkpoint is .*last.pt"):
        train(compile_spec(spec, ["train.epochs=3"]))
    folder = tmp_path / "run/latest/checkpoints"
    for name in (ckpt.LAST, ckpt.BEST):
        state = ckpt.load_checkpoint(folder / name)
        assert state["epoch"] == 1 and not ckpt.non_finite(state["model"])
    assert json.loads((folder / ckpt.INDEX).read_text())["last"]["epoch"] == 1
    with pytest.raises(UserError, match="not saving step 8: non-finite values in conv1"):
        ckpt.save(folder, {**state, "step": 8, "model": {"conv1.weight": torch.full((2,), float("nan"))}}, best=True)
    assert ckpt.load_checkpoint(folder / ckpt.BEST)["epoch"] == 1


def test_disk_full_is_one_line_and_stale_temp_files_go(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    folder = tmp_path / "run/latest/checkpoints"
    before = (folder / ckpt.LAST).read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(ckpt, "_write", full)
        assert cli.main(["train", str(spec), *SHORT, "train.epochs=2", "--resume", "--allow-change"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("netspec: disk full while writing ") and "Traceback" not in err, err
    assert (folder / ckpt.LAST).read_bytes() == before

    (folder / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    assert cli.main(["train", str(spec), *SHORT, "train.epochs=2", "--resume", "--allow-change"]) == 0
    assert "removed 1 temp file(s) of interrupted writes" in capsys.readouterr().err
    assert not list(folder.glob(".*.tmp"))


def test_sigterm_saves_the_step_and_the_printed_command_resumes_exactly(tmp_path, monkeypatch, capsys):
    """A real process: SIGTERM mid-run saves and prints the resume command; a second trainer is refused meanwhile;
    the printed command continues to the same weights as an uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path, dropout=True, flip=True)
    words = [str(spec), "train.epochs=6", "train.log_every_steps=1", "train.run_name=r1", "train.threads=1"]
    child = subprocess.Popen([sys.executable, "-m", "netspec.cli", "train", *words], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    steps = tmp_path / "run/r1/steps.jsonl"
    deadline = time.monotonic() + 120
    while not (steps.is_file() and steps.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(UserError, match=rf"run .*r1 is in use by another `netspec train` \(process {child.pid}\)"):
        train(compile_spec(spec, words[1:]), resume=True)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("netspec: SIGTERM: saved ") and "resume with: netspec train " in line
    state = ckpt.load_checkpoint(tmp_path / "run/r1/checkpoints/last.pt")
    assert 0 < state["step"] < 24

    command = line.split("resume with: netspec ")[1].split()
    assert command[:3] == ["train", "--resume", "--run"] and command[3:] == [str(tmp_path / "run/r1")]  # the run
    (tmp_path / "other").mkdir()
    assert cli.main(["compile", str(tiny_spec(tmp_path / "other"))]) == 0  # another current build in between
    assert cli.main(command) == 0
    straight = train(compile_spec(spec, [*words[1:2], "train.threads=1", f"train.out={tmp_path / 'straight'}"]))
    same_weights(ckpt.load_checkpoint(tmp_path / "run/r1/checkpoints/last.pt")["model"], straight.model.state_dict())


def test_mid_epoch_snapshot_resumes_exactly(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, dropout=True, flip=True)
    every = ["train.checkpoint_every_steps=3"]
    straight = train(compile_spec(spec, [*every, f"train.out={tmp_path / 'a'}"]))
    save = ckpt.save

    def stop_after_snapshot_at_step_6(folder, state, **kwargs):
        save(folder, state, **kwargs)
        if state["step"] == 6:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ckpt, "save", stop_after_snapshot_at_step_6)
        with pytest.raises(KeyboardInterrupt):
            train(compile_spec(spec, [*every, f"train.out={tmp_path / 'b'}"]))
    snap = ckpt.load_checkpoint(tmp_path / "b/latest/checkpoints/last.pt")
    assert (snap["epoch"], snap["batch"], snap["step"]) == (1, 2, 6)  # 2 steps into the second epoch
    resumed = train(compile_spec(spec, [*every, f"train.out={tmp_path / 'b'}"]), resume=True)
    same_weights(resumed.model.state_dict(), straight.model.state_dict())
    a, b = (ckpt.load_checkpoint(tmp_path / r / "latest/checkpoints/last.pt") for r in ("a", "b"))
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    metrics = [(tmp_path / r / "latest/metrics.jsonl").read_text().splitlines() for r in ("a", "b")]
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("seconds", "examples_per_second")}  # noqa: E731
    assert [strip(x) for x in metrics[0]] == [strip(x) for x in metrics[1]]


# --- §2 a run is a record ------------------------------------------------------------------

def test_each_run_is_a_record_and_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    first = train(compile_spec(spec, SHORT), command=["train", str(spec), *SHORT])
    second = train(compile_spec(spec, SHORT))
    first, second = first.run.path, second.run.path
    assert first != second and first.parent == second.parent == tmp_path / "run"
    assert (tmp_path / "run/latest").resolve() == second.resolve()
    assert (first / "checkpoints/last.pt").is_file()
    record = json.loads((first / "run.json").read_text())
    assert record["overrides"] == SHORT and record["command"] == ["train", str(spec), *SHORT]
    assert record["seed"] == 0 and record["versions"]["torch"] == torch.__version__ and "python" in record["versions"]
    assert record["data"]["source"] == "npz" and record["data"]["train"] == 64 and len(record["data"]["checksum"]) == 32
    assert record["data"]["bytes"] == (tmp_path / "data.npz").stat().st_size and "git" in record
    assert yaml.safe_load((first / "spec.yaml").read_text())["train"]["epochs"] == 1

    with pytest.raises(UserError, match="exists already .*continue it with --resume"):
        train(compile_spec(spec, [*SHORT, f"train.run_name={first.name}"]))


def test_resume_keeps_the_recorded_settings_unless_a_change_is_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT, "train.batch_size=8"]) == 0
    capsys.readouterr()
    assert cli.main(["train", str(spec), "--resume"]) == 0  # the recorded overrides come back by themselves
    assert "1 of 1 epoch done" in capsys.readouterr().err
    assert cli.main(["train", str(spec), "--resume", "train.epochs=2", "train.optimizer.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "differs from the one the run was started with: train.epochs: 1 → 2; train.optimizer.lr: 0.1 → 0.01" in err
    assert "--allow-change" in err and "Traceback" not in err
    assert cli.main(["train", str(spec), "--resume", "train.epochs=2", "--allow-change", "train.device=cpu"]) == 0
    run = tmp_path / "run/latest"
    change = json.loads((run / "changes.jsonl").read_text())
    assert change["changes"] == ["train.epochs: 1 → 2"] and change["step"] == 1
    assert ckpt.load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 2


def test_step_and_epoch_logs_carry_raw_ce_weighted_terms_factors_lr_and_speed(tmp_path):
    result = train(compile_spec(tiny_spec(tmp_path), ["train.log_every_steps=2"]))
    steps = [json.loads(line) for line in (result.run.path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4, 6, 8]
    epoch = json.loads((result.run.path / "metrics.jsonl").read_text().splitlines()[0])
    for record in (steps[0], epoch):
        assert {"ce/main", "ce/aux1", "loss/aux1", "alpha/aux1", "alpha/main", "lr", "examples_per_second"} <= set(record)
        assert record["alpha/main"] == 1.0 and 0 < record["alpha/aux1"] <= 0.3
    # the aux1 term is its raw cross-entropy times its weight × schedule factor
    assert steps[0]["loss/aux1"] == pytest.approx(steps[0]["ce/aux1"] * steps[0]["alpha/aux1"], rel=1e-5)


def test_tensorboard_event_files_when_the_package_is_present(tmp_path):
    pytest.importorskip("tensorboard")
    result = train(compile_spec(tiny_spec(tmp_path), [*SHORT, "train.log_every_steps=1"]))
    assert list((result.run.path / "tensorboard").glob("events.out.tfevents.*"))


# --- §1 a checkpoint knows its graph -------------------------------------------------------

def test_a_moved_branch_is_never_loaded_onto_the_new_attach_point(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    state = ckpt.load_checkpoint(tmp_path / "run/latest/checkpoints/last.pt")
    assert set(state["structure"]["heads"]) == {"main", "aux1"}
    assert state["structure"]["params"]["aux1.fc.weight"] == "aux1.fc"
    capsys.readouterr()
    moved = "branches.aux1.from=relu1"  # the same shapes: only the structure tells the heads apart
    for words in (["eval", str(spec), moved], ["export", str(spec), moved, "--exit", "aux1", str(tmp_path / "a.onnx")],
                  ["export", str(spec), moved, str(tmp_path / "b.onnx")]):
        assert cli.main(words) == 2, words
        err = capsys.readouterr().err
        assert "aux1: was from pool1, now from relu1" in err and "Traceback" not in err, err
        assert "`--exit main` / `--prune-aux` still work (main unchanged)" in err and "retrain" in err
    assert cli.main(["train", str(spec), moved, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the network (branches) changed: a resume continues the same network" in err and len(err.splitlines()) == 1
    assert cli.main(["eval", str(spec), moved, "--exit", "main"]) == 0  # the unchanged exit still evaluates
    assert "test split: 24 examples" in capsys.readouterr().out
    assert not (tmp_path / "a.onnx").exists()
    assert cli.main(["export", str(spec), moved, "--prune-aux", str(tmp_path / "main.onnx")]) == 0
    changed = "nodes.conv2.kernel=1"
    assert cli.main(["eval", str(spec), changed, "nodes.conv2.pad=0"]) == 2
    assert "conv2: kernel 3 → 1, pad 1 → 0" in capsys.readouterr().err
