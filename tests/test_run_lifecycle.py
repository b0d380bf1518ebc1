"""One run, one record: the run's files vouched for by the manifest, a resume that applies what it records, a
validation split that selects best.pt, and commands that read a run once. Tiny spec and data from test_train.py."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
import yaml

from netspec import cli
from netspec.compiler import compile_spec
from netspec.errors import UserError
from netspec.runtime import checkpoint as ckpt
from netspec.runtime import train as train_mod
from netspec.runtime.data.sources import hold_out
from netspec.runtime.run import CHANGES, RECORD, SPEC_FILE, Run
from netspec.runtime.train import train
from test_train import tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SHORT = ["train.epochs=1", "train.steps_per_epoch=2"]


@pytest.fixture
def changed_run(tmp_path, monkeypatch):
    """A run of the tiny spec with one accepted change, so every record file exists: (spec path, run)."""
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    assert cli.main(["train", str(spec), "--resume", "--allow-change", "train.epochs=2"]) == 0
    return spec, Run.latest(compile_spec(spec).spec)


# --- damage to any run file is named in one line; what the docs promise to rebuild is rebuilt --------------------

def _damaged(path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\xff{[: not json or yaml\x00")
    else:  # valid but wrong: the same format, one value edited
        if path.suffix == ".json":
            record = json.loads(data)
            record["seed" if "seed" in record else "spec_name"] = 12345 if "seed" in record else "other"
            path.write_text(json.dumps(record, indent=1) + "\n")
        elif path.suffix == ".yaml":
            spec = yaml.safe_load(data)
            spec["train"]["optimizer"]["lr"] = 0.5
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
        else:
            line = json.loads(data.splitlines()[-1])
            line["changes"] = ["train.epochs: 1 → 9"]
            path.write_text(json.dumps(line) + "\n")


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "valid-but-wrong"])
@pytest.mark.parametrize("name", [RECORD, SPEC_FILE, CHANGES])
@pytest.mark.parametrize("command", ["train", "eval", "export"])
def test_a_damaged_record_file_is_named_in_one_line(changed_run, capsys, name, kind, command):
    spec, run = changed_run
    _damaged(run / name, kind)
    before = {p.name: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    capsys.readouterr()
    words = {"train": ["train", "--resume", "--run", str(run)], "eval": ["eval", "--run", str(run)],
             "export": ["export", "--run", str(run), "--prune-aux", "m.onnx"]}[command]
    assert cli.main(words) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"netspec: {run / name} is damaged") and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before  # nothing overwritten


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "valid-but-wrong"])
def test_a_damaged_manifest_is_rebuilt_and_said(changed_run, capsys, kind):
    spec, run = changed_run
    _damaged(run.checkpoints / ckpt.INDEX, kind)
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(run)]) == 0
    err = capsys.readouterr().err
    said = "rebuilt it from the checkpoint files" if kind != "valid-but-wrong" else "the manifest said"
    assert said in err or kind == "valid-but-wrong", err
    index = json.loads((run.checkpoints / ckpt.INDEX).read_text())
    assert index["last"]["step"] == ckpt.load_checkpoint(run.checkpoints / ckpt.LAST)["step"]
    assert Run(run.path).check() == []


@pytest.mark.parametrize("written", [1, 2, 3])
def test_a_change_cut_short_by_a_kill_is_completed(tmp_path, monkeypatch, capsys, written):
    """--allow-change writes changes.jsonl, spec.yaml, run.json, then the manifest: a kill after any of them is
    completed at the next read, not reported as damage, and the change takes effect."""
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    run = Run.latest(compile_spec(spec).spec)
    write, count = ckpt._write, []

    def killed(path, data):
        if path.name in (CHANGES, SPEC_FILE, RECORD, ckpt.INDEX):
            count.append(path.name)
            if len(count) > written:
                raise KeyboardInterrupt
        write(path, data)

    with monkeypatch.context() as m:
        m.setattr(ckpt, "_write", killed)
        with pytest.raises(KeyboardInterrupt):
            train(compile_spec(spec, [*SHORT, "train.epochs=2", "train.optimizer.lr=0.05"]), resume=True,
                  allow_change=True)
    assert count[:3] == [CHANGES, SPEC_FILE, RECORD][:len(count[:3])]
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--run", str(run)]) == 0  # the run's own spec: the change, completed
    err = capsys.readouterr().err
    assert "completed the --allow-change of step 2 that was cut short (train.epochs: 1 → 2; train.optimizer.lr: " \
           "0.1 → 0.05)" in err, err
    state = ckpt.load_checkpoint(run.checkpoints / ckpt.LAST)
    assert state["epoch"] == 2 and run.spec()["train"]["optimizer"]["lr"] == 0.05


# --- --allow-change does what it says ---------------------------------------------------------------------------

CHANGES_APPLIED = {
    "lr": (["train.optimizer.lr=0.05"], lambda g: g["initial_lr"] == pytest.approx(0.05)),
    "momentum": (["train.optimizer.momentum=0.5"], lambda g: g["momentum"] == 0.5),
    "weight decay": (["train.optimizer.weight_decay=0.01"], lambda g: g["weight_decay"] == pytest.approx(0.01)),
    "nesterov": (["train.optimizer.nesterov=true"], lambda g: g["nesterov"] is True),
    "optimizer type": (["train.optimizer={type: adam, lr: 0.001}"], lambda g: g["betas"] == (0.9, 0.999)),
    "lr schedule": (["train.lr_schedule={type: constant}"], lambda g: g["lr"] == pytest.approx(g["initial_lr"])),
}


@pytest.mark.parametrize("what", CHANGES_APPLIED)
def test_an_allowed_change_is_applied_to_the_optimizer(tmp_path, monkeypatch, capsys, what):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    words, holds = CHANGES_APPLIED[what]
    seen = []
    build = train_mod._solver

    def spy(*args, **kwargs):
        optimizer, scheduler = build(*args, **kwargs)
        seen.append(optimizer)
        return optimizer, scheduler

    monkeypatch.setattr(train_mod, "_solver", spy)
    capsys.readouterr()
    assert cli.main(["train", str(spec), "--resume", "train.epochs=2", *words]) == 2  # refused without the flag
    assert "--allow-change" in capsys.readouterr().err
    assert cli.main(["train", str(spec), "--resume", "--allow-change", "train.epochs=2", *words]) == 0
    err = capsys.readouterr().err
    groups = seen[-1].param_groups
    assert all(holds(g) for g in groups), groups  # what the optimizer uses, not what the log says
    if what == "optimizer type":
        assert "a fresh optimizer" in err and type(seen[-1]).__name__ == "Adam"
    run = Run.latest(compile_spec(spec).spec)
    change = run.changes()[-1]
    assert change["step"] == 2 and "train.epochs: 1 → 2" in change["changes"]
    assert ckpt.load_checkpoint(run.checkpoints / ckpt.LAST)["epoch"] == 2
    assert cli.main(["train", str(spec), "--resume"]) == 0  # later resumes keep the change: no traceback, no refusal


def test_the_lr_multipliers_are_kept_under_a_changed_lr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    mult = ["train.lr_mult={weight: 1, bias: 2}", "train.lr_schedule={type: constant}"]
    assert cli.main(["train", str(spec), *SHORT, *mult]) == 0
    seen = []
    build = train_mod._solver
    monkeypatch.setattr(train_mod, "_solver", lambda *a, **k: seen.append(build(*a, **k)) or seen[-1])
    assert cli.main(["train", str(spec), "--resume", "--allow-change", "train.epochs=2",
                     "train.optimizer.lr=0.02"]) == 0
    assert sorted({round(g["lr"], 9) for g in seen[-1][0].param_groups}) == [0.02, 0.04]


@pytest.mark.parametrize("words, reason", [
    (["data.train_limit=32"], "the data set and its splits are part of a run"),
    (["data.val_split=8"], "the data set and its splits are part of a run"),
    (["train.batch_size=8"], "it changes the data order"),
    (["train.seed=3"], "it changes the data order"),
    (["losses.aux1.head=main"], "it changes which loss terms are computed"),
    (["nodes.conv2.out=6"], "the network (nodes) changed"),
])
def test_a_change_outside_the_list_is_refused_with_its_reason(tmp_path, monkeypatch, capsys, words, reason):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    capsys.readouterr()
    assert cli.main(["train", str(spec), "--resume", "--allow-change", *words]) == 2
    err = capsys.readouterr().err
    assert reason in err and len(err.splitlines()) == 1, err


# --- the validation split ---------------------------------------------------------------------------------------

def test_the_validation_split_is_seeded_disjoint_and_taken_before_train_limit():
    from netspec.data_spec import DataSpec

    a, b = hold_out(100, DataSpec(val_split=10)), hold_out(100, DataSpec(val_split=0.1))
    assert np.array_equal(a[0], b[0]) and len(a[0]) == 10 and len(a[1]) == 90
    assert not set(a[0]) & set(a[1]) and set(a[0]) | set(a[1]) == set(range(100))
    limited = hold_out(100, DataSpec(val_split=10, train_limit=20))
    assert np.array_equal(limited[0], a[0]) and np.array_equal(limited[1], a[1][:20])
    assert not np.array_equal(hold_out(100, DataSpec(val_split=10, val_seed=1))[0], a[0])
    for bad in (0, 100, 0.999999, 1.5, -1, True):
        with pytest.raises((UserError, ValueError)):
            hold_out(100, DataSpec(val_split=bad))


def test_best_is_selected_on_validation_and_every_epoch_reports_both_splits(tmp_path, monkeypatch, capsys):
    spec = tiny_spec(tmp_path)
    evaluate = train_mod.evaluate
    calls = []

    def scripted(model, batches, heads, ctx, autocast):  # val: best at epoch 1; test: best at epoch 3
        result = evaluate(model, batches, heads, ctx, autocast)
        calls.append(len(batches.y))
        epoch = (len(calls) - 1) // 2
        value = [0.9, 0.5, 0.4][epoch] if len(batches.y) == 16 else [0.1, 0.2, 0.8][epoch]
        return {**result, "main": (value, result["main"][1])}

    monkeypatch.setattr(train_mod, "evaluate", scripted)
    result = train(compile_spec(spec, ["train.epochs=3", "data.val_split=16"]))
    records = [json.loads(line) for line in (result.run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1/main"] for r in records] == [0.9, 0.5, 0.4] and [r["top1/main"] for r in records] == [0.1, 0.2, 0.8]
    assert {"val_top1/aux1", "val_top5/main", "top5/aux1"} <= set(records[0])
    best = ckpt.load_checkpoint(result.run.checkpoints / ckpt.BEST)
    assert best["epoch"] == 1 and best["metric"] == "val_top1/main"
    record = json.loads((result.run / RECORD).read_text())["data"]
    assert (record["train"], record["val"], record["test"]) == (48, 16, 24)
    assert "no validation split" not in capsys.readouterr().err


def test_without_a_validation_split_the_run_says_best_is_selected_on_test(tmp_path, capsys):
    train(compile_spec(tiny_spec(tmp_path), SHORT))
    assert capsys.readouterr().err.count("best.pt is selected on the test split") == 1


# --- commands read a run once, with its own spec ------------------------------------------------------------------

def test_eval_uses_the_runs_record_and_says_split_and_count(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT, "data.test_limit=12", "data.val_split=8"]) == 0
    end = json.loads((tmp_path / "run/latest/exits.json").read_text())["exits"]
    capsys.readouterr()
    assert cli.main(["eval", str(spec)]) == 0  # the spec file says nothing of the limit: the run's record does
    out = capsys.readouterr().out
    assert "val split: 8 examples, test split: 12 examples" in out
    main_row = [line for line in out.splitlines() if line.startswith("main")][0]
    assert f"{100 * end[-1]['top1']:.2f}%" in main_row
    (tmp_path / "other").mkdir()
    assert cli.main(["compile", str(tiny_spec(tmp_path / "other", "other.yaml"))]) == 0
    assert cli.main(["eval", "--run", str(tmp_path / "run/latest")]) == 0  # --run: whatever the current build
    assert "test split: 12 examples" in capsys.readouterr().out


def test_a_failed_start_leaves_no_empty_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    for _ in range(2):
        assert cli.main(["train", str(spec), "data.path=/nonexistent/data.npz"]) == 2
    assert not (tmp_path / "run").exists() or not [p for p in (tmp_path / "run").iterdir()]
    assert cli.main(["train", str(spec), *SHORT]) == 0
    first = (tmp_path / "run/latest").resolve()
    assert cli.main(["train", str(spec), "data.path=/nonexistent/data.npz"]) == 2
    assert (tmp_path / "run/latest").resolve() == first and len(list((tmp_path / "run").iterdir())) == 2


def test_threads_are_set_recorded_and_printed(tmp_path, capsys):
    result = train(compile_spec(tiny_spec(tmp_path), [*SHORT, "train.threads=1"]))
    assert json.loads((result.run / RECORD).read_text())["threads"] == 1
    assert "(1 thread)" in capsys.readouterr().err


def test_keep_snapshots_keeps_the_last_n_in_the_manifest_and_never_best(tmp_path):
    result = train(compile_spec(tiny_spec(tmp_path), ["train.epochs=4", "train.keep_snapshots=2"]))
    folder = result.run.checkpoints
    index = json.loads((folder / ckpt.INDEX).read_text())
    assert [s["file"] for s in index["snapshots"]] == ["step-12.pt", "step-16.pt"]
    assert sorted(p.name for p in folder.glob("step-*.pt")) == ["step-12.pt", "step-16.pt"]
    assert ckpt.load_checkpoint(folder / "step-12.pt", resume=True)["step"] == 12 and (folder / ckpt.BEST).is_file()
    (folder / "step-12.pt").unlink()
    assert "1 snapshot(s) it listed are gone" in ckpt.verify(folder)[0]


def test_eval_of_an_exit_that_does_not_exist_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *SHORT]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(spec), "--exit", "axu1"]) == 2
    err = capsys.readouterr().err
    assert "there is no exit named 'axu1'" in err and "did you mean 'aux1'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("stage", ["parse", "run"])
def test_sigterm_before_training_exits_143_without_traceback(monkeypatch, capsys, stage):
    """Outside the training loop (which saves first) SIGTERM stops a command as SIGINT does: one line, 128 + 15;
    the caller's SIGTERM handler is back afterwards."""
    import os

    from netspec import cli

    before = signal.getsignal(signal.SIGTERM)
    real_parse = cli.parse

    def parse_then_signal(argv):
        args = real_parse(argv)
        if stage == "run":
            args.module = "netspec.commands.build"
            monkeypatch.setattr("netspec.commands.build.run", lambda a: os.kill(os.getpid(), signal.SIGTERM) or 0)
        else:
            os.kill(os.getpid(), signal.SIGTERM)
        return args

    monkeypatch.setattr(cli, "parse", parse_then_signal)
    assert cli.main(["compile", "specs/cnn8_fmnist.yaml"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.strip() == "netspec: terminated (SIGTERM)" and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before
