"""Tests of runtime.train on a tiny spec and generated .npz data: the loop, its files, the LR policies, the CLI.

`tiny_spec` and `make_npz` are shared with test_checkpoint.py and test_ddp.py.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from netspec.compiler import compile_spec
from netspec import cli
from netspec.errors import UserError
from netspec.solver import TrainSpec
from netspec.runtime import train as train_mod
from netspec.runtime.metrics import Progress


pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """\
name: tiny
input: {{shape: [1, 8, 8], mean: [0.5], std: [0.25]}}
classes: 4
nodes:
  - {{name: conv1, op: conv, out: 4, kernel: 3, pad: 1}}
  - {{name: relu1, op: relu}}
  - {{name: pool1, op: maxpool, kernel: 2, stride: 2}}
  - {{name: conv2, op: conv, out: 8, kernel: 3, pad: 1}}
  - {{name: relu2, op: relu}}
  - {{name: gap, op: gap}}
{extra_nodes}  - {{name: fc, op: fc, out: 4}}
branches:
  aux1:
    from: pool1
    nodes:
      - {{name: gap, op: gap}}
      - {{name: fc, op: fc, out: 4}}
losses:
  main: {{head: main}}
  aux1: {{head: aux1, weight: 0.3, schedule: cnds}}
  synergy: {{type: synergy}}
data: {{source: npz, path: {data}, augment: {{flip: {flip}}}}}
train:
  epochs: 2
  batch_size: 16
  eval_batch_size: 16
  optimizer: {{type: sgd, lr: 0.1, momentum: 0.9}}
  lr_schedule: {{type: cosine, warmup_epochs: 0.5}}
  out: {out}
"""


def make_npz(path: Path, n_train: int = 64, n_test: int = 24) -> Path:
    """4 classes of 8×8 grey images: noise with a central square whose brightness is the label (flip-invariant)."""
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
        x[:, 2:6, 2:6] += (60 * y).astype(np.uint8)[:, None, None]
        return x, y

    (xt, yt), (xv, yv) = split(n_train), split(n_test)
    np.savez(path, x_train=xt, y_train=yt, x_test=xv, y_test=yv)
    return path


def tiny_spec(tmp_path: Path, name: str = "tiny.yaml", *, dropout: bool = False, flip: bool = False,
              extra: str = "") -> Path:
    """Write the tiny spec (and its data) into tmp_path; `extra` is appended (e.g. an `init:` section)."""
    data = tmp_path / "data.npz"
    if not data.exists():
        make_npz(data)
    extra_nodes = "  - {name: drop, op: dropout, p: 0.3}\n" if dropout else ""
    text = SPEC.format(extra_nodes=extra_nodes, data=data, flip=str(flip).lower(), out=tmp_path / "run") + extra
    path = tmp_path / name
    path.write_text(text)
    return path


def test_train_writes_metrics_plots_checkpoints_and_the_exit_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # build/ and runs/ stay inside tmp_path
    spec = tiny_spec(tmp_path, flip=True)
    assert cli.main(["train", str(spec), "train.epochs=3"]) == 0
    out, err = capsys.readouterr()
    run = tmp_path / "run" / "latest"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    terms = {"loss/main", "loss/aux1", "loss/synergy:main->aux1", "loss/synergy:aux1->main"}
    assert terms | {"top1/main", "top5/main", "top1/aux1", "top5/aux1", "lr", "step"} <= set(records[0])
    assert math.isclose(records[0]["loss"], sum(records[0][k] for k in terms))
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["top1/main"] >= 0.4  # chance is 0.25
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,lr") and len(csv_lines) == 4
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert {"last.pt", "best.pt", "checkpoints.json"} <= {p.name for p in (run / "checkpoints").iterdir()}
    assert err.count("epoch ") >= 3 and "ETA" in err
    table = out[out.index("\nexit ") + 1:].splitlines()
    assert table[0].split() == ["exit", "depth", "params", "FLOPs", "test", "top-1", "test", "top-5"]
    assert [line.split()[0] for line in table[1:3]] == ["aux1", "main"]
    exits = json.loads((run / "exits.json").read_text())["exits"]
    assert exits[1]["top1"] == records[-1]["top1/main"]

    assert cli.main(["eval", str(spec), "train.epochs=3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[-2:] == table[2].split()[-2:]


def policy(**fields):
    """An lr policy as the schema reads it from `train.lr_schedule`."""
    return TrainSpec(lr_schedule=fields).lr_schedule


def test_lr_policies_and_warmup():
    def lr(steps_per_epoch=10, epochs=4, **kw):
        f = train_mod.lr_factor(policy(**kw), 0.1, epochs, steps_per_epoch)
        return [round(f(s), 6) for s in (0, 10, 20, 30, 39)]

    assert lr(type="constant") == [1, 1, 1, 1, 1]
    assert lr(type="step", step_size=2, gamma=0.1) == [1, 1, 0.1, 0.1, 0.1]
    assert lr(type="multistep", milestones=[1, 3], gamma=0.5) == [1, 0.5, 0.5, 0.25, 0.25]
    assert lr(type="poly", power=2) == [1, 0.5625, 0.25, 0.0625, round((1 - 3.9 / 4) ** 2, 6)]
    assert lr(type="cosine", min_lr=0.01)[:3] == [1, round(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 6), 0.55]
    warm = train_mod.lr_factor(policy(type="constant", warmup_epochs=1), 0.1, 4, 10)
    assert [warm(s) for s in (0, 4, 9, 10)] == [0.1, 0.5, 1.0, 1.0]


def test_optimizers(tmp_path):
    spec = compile_spec(tiny_spec(tmp_path), ["train.optimizer={type: adamw, weight_decay: 0.01}"]).spec
    opt = spec.train.optimizer.build([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01
    spec = compile_spec(tiny_spec(tmp_path), ["train.optimizer.nesterov=true", "train.optimizer.momentum=0"]).spec
    with pytest.raises(UserError, match="nesterov needs momentum"):
        spec.train.optimizer.build([torch.nn.Parameter(torch.zeros(1))])


def test_progress_without_a_terminal_prints_one_line_per_epoch():
    stream = io.StringIO()
    bar = Progress(4, stream=stream)
    for i in range(2):
        bar.step("epoch 1/2", i + 1, 2, 0.5)
    bar.end_epoch("epoch 1/2 done")
    assert stream.getvalue().startswith("epoch 1/2 done  ETA 0:0") and stream.getvalue().count("\n") == 1


def test_user_errors_have_no_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), "--resume", "train.epochs=1", "train.steps_per_epoch=1"]) == 0
    assert "--resume: no run in " in capsys.readouterr().err  # a requeued job with nothing saved starts fresh
    assert cli.main(["train", str(spec), "train.batch_size=200"]) == 2
    assert "smaller than one batch of 200" in capsys.readouterr().err
    narrow = ["classes=3", "nodes.fc.out=3", "branches.aux1.nodes.fc.out=3"]  # heads must give `classes` scores
    assert cli.main(["train", str(spec), *narrow]) == 2
    assert "the data has 4 classes" in capsys.readouterr().err
    assert cli.main(["train", str(spec), "classes=3"]) == 2  # found at compile time, at the head's line
    assert "gives 4 scores but the spec has classes: 3" in capsys.readouterr().err


def test_bf16_autocast_runs(tmp_path):
    spec = tiny_spec(tmp_path)
    result = train_mod.train(compile_spec(spec, ["train.epochs=1", "train.steps_per_epoch=2", "train.amp=bf16"]))
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert {r["exit"] for r in result.rows} == {"main", "aux1"}


def test_eval_every_tests_only_every_nth_and_the_last_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), "train.epochs=5", "train.eval_every=2"]) == 0
    run = tmp_path / "run" / "latest"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in records if "top1/main" in r] == [2, 4, 5]  # the last epoch always
    assert all("loss" in r and "ce/main" in r for r in records)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] in (2, 4, 5) and best["best"] == max(r["top1/main"] for r in records if "top1/main" in r)
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_log_gradients_records_every_weight_layers_mean_gradient(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), "train.epochs=1", "train.log_every_steps=2", "train.log_gradients=true"]) == 0
    steps = [json.loads(line) for line in (tmp_path / "run" / "latest" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4]  # 64 examples / batch 16
    weights = {"grad/conv1", "grad/conv2", "grad/fc", "grad/aux1.fc"}
    assert {k for k in steps[0] if k.startswith("grad/")} == weights
    assert all(s[k] > 0 and math.isfinite(s[k]) for s in steps for k in weights)


def test_grad_magnitudes_are_the_mean_absolute_weight_gradients():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3))
    model(torch.randn(4, 1, 5, 5)).square().sum().backward()
    means = train_mod.grad_magnitudes(model)
    assert set(means) == {"grad/0", "grad/3"}  # batchnorm's 1-d weight is not a layer's weight matrix
    assert means["grad/0"] == pytest.approx(model[0].weight.grad.abs().mean().item())


@pytest.mark.parametrize("words", [["train.log_gradients=true"], ["train.eval_every=0"], ["train.eval_every=x"]])
def test_bad_logging_and_evaluation_settings_are_one_line_errors(tmp_path, capsys, monkeypatch, words):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert cli.main(["train", str(spec), *words]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "train." in err
