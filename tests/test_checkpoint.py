"""Tests of runtime.checkpoint and what train does with checkpoints: exact resume, damage, NaN stops, init.from."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from netspec.compiler import compile_spec
from netspec import cli
from netspec.errors import UserError
from netspec.runtime import checkpoint as ckpt
from netspec.runtime.run import Run
from netspec.runtime import objective
from netspec.runtime.train import train
from test_train import tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def interrupt_after_first_checkpoint(monkeypatch):
    """Make `save` raise KeyboardInterrupt once it has written epoch 1, as a Ctrl-C would."""
    save = ckpt.save

    def save_then_stop(folder, state, **kwargs):
        save(folder, state, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", save_then_stop)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, dropout=True, flip=True)
    straight = train(compile_spec(spec, [f"train.out={tmp_path / 'a'}"]))

    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(compile_spec(spec, [f"train.out={tmp_path / 'b'}"]))
    assert ckpt.load_checkpoint(tmp_path / "b/latest/checkpoints/last.pt")["epoch"] == 1
    resumed = train(compile_spec(spec, [f"train.out={tmp_path / 'b'}"]), resume=True)

    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    a, b = (ckpt.load_checkpoint(tmp_path / run / "latest/checkpoints/last.pt") for run in ("a", "b"))
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert [line.split(",")[0] for line in (tmp_path / "b/latest/metrics.csv").read_text().splitlines()] == ["epoch", "1", "2"]


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    result = train(compile_spec(tiny_spec(tmp_path), ["train.epochs=1"]))
    state = ckpt.load_checkpoint(result.run / "checkpoints" / "best.pt")
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "step", "best", "spec_name", "spec_hash"} <= set(state)
    assert state["spec_name"] == "tiny" and state["epoch"] == 1 and len(state["rng"]) == 1
    assert Run.latest(compile_spec(tiny_spec(tmp_path)).spec).best_checkpoint() == result.run / "checkpoints/best.pt"
    assert not [p for p in (result.run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_rng_state_round_trip():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    saved = ckpt.rng_state()
    draws = torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand()
    ckpt.set_rng_state(saved)
    assert (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand())[1:] == draws[1:]
    ckpt.set_rng_state(saved)
    assert torch.equal(torch.rand(3), draws[0])


def test_damaged_checkpoint_is_a_clear_error_and_the_other_survives(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    train(compile_spec(spec, ["train.epochs=1"]))
    folder = tmp_path / "run" / "latest" / "checkpoints"
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(UserError, match=f"cannot read checkpoint {last}"):
        ckpt.load_checkpoint(last)
    assert ckpt.load_checkpoint(folder / "best.pt")["epoch"] == 1
    assert cli.main(["train", str(spec), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "Traceback" not in err
    assert cli.main(["eval", str(spec), "--checkpoint", str(folder / "best.pt")]) == 0

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    with pytest.raises(UserError, match="damaged or not a checkpoint"):
        ckpt.load_checkpoint(evil)
    assert "pwned" not in capsys.readouterr().out


def test_nan_stops_naming_the_term_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    poisoned = {"on": False}
    save, synergy = ckpt.save, objective.synergy

    def save_then_poison(folder, state, **kwargs):
        save(folder, state, **kwargs)
        poisoned["on"] = True

    monkeypatch.setattr(ckpt, "save", save_then_poison)
    monkeypatch.setattr(objective, "synergy",
                        lambda t, s, *args: synergy(t, s, *args) * (float("nan") if poisoned["on"] else 1))
    with pytest.raises(UserError, match=r"epoch 2, step 5: loss term 'synergy:main->aux1' = nan, "
                                        r"'synergy:aux1->main' = nan; the last good checkpoint is .*last.pt"):
        train(compile_spec(spec))
    state = ckpt.load_checkpoint(tmp_path / "run/latest/checkpoints/last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_init_from_copies_every_layer_whose_name_and_shape_match(tmp_path, capsys):
    source = train(compile_spec(tiny_spec(tmp_path), ["train.epochs=1"])).run / "checkpoints" / "last.pt"
    capsys.readouterr()
    renamed = tiny_spec(tmp_path, "renamed.yaml", extra=f"init: {{from: {source}}}\n")
    before = ckpt.load_checkpoint(source)["model"]
    result = train(compile_spec(renamed, ["branches.aux1.nodes.fc.name=head", f"train.out={tmp_path / 'renamed'}",
                                          "train.epochs=1", "train.steps_per_epoch=1", "train.optimizer.lr=1e-9"]))
    assert f"init.from {source}: copied conv1, conv2, fc; new: aux1.head" in capsys.readouterr().err
    torch.testing.assert_close(result.model.state_dict()["conv1.weight"], before["conv1.weight"])

    capsys.readouterr()
    spec = compile_spec(tiny_spec(tmp_path, "changed.yaml", extra=f"init: {{from: {source}}}\n"),
                        ["nodes.conv2.out=6", f"train.out={tmp_path / 'changed'}", "train.epochs=1",
                         "train.steps_per_epoch=1", "train.optimizer.lr=1e-9"])
    result = train(spec)  # copies by name and shape (as Caffe), says what is new and what changed shape
    err = capsys.readouterr().err
    assert (f"init.from {source}: copied conv1, aux1.fc; new: none; conv2 changed (weight (8, 4, 3, 3) → "
            "(6, 4, 3, 3)); fc changed (weight (4, 8) → (4, 6))") in err, err
    torch.testing.assert_close(result.model.state_dict()["aux1.fc.weight"], before["aux1.fc.weight"], atol=1e-6,
                               rtol=0)
    torch.save({"state_dict": before}, tmp_path / "plain.pth")  # a plain PyTorch state dict (as trainers save it)
    spec = compile_spec(tiny_spec(tmp_path, "plain.yaml", extra=f"init: {{from: {tmp_path / 'plain.pth'}}}\n"),
                        [f"train.out={tmp_path / 'plain'}", "train.epochs=1", "train.steps_per_epoch=1"])
    train(spec)
    assert f"init.from {tmp_path / 'plain.pth'}: copied conv1, conv2, fc, aux1.fc; new: none" in capsys.readouterr().err
    torch.testing.assert_close(result.model.state_dict()["aux1.fc.weight"], before["aux1.fc.weight"], atol=1e-6,
                               rtol=0)
    assert torch.equal(ckpt.load_checkpoint(source)["model"]["conv1.weight"], before["conv1.weight"])


def test_a_file_that_is_no_checkpoint_at_all_is_a_user_error(tmp_path):
    from netspec.errors import UserError
    from netspec.runtime.checkpoint import load_checkpoint

    text = tmp_path / "passwd.pt"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(UserError, match="damaged or not a checkpoint"):
        load_checkpoint(text)
