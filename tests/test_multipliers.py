"""Per-parameter multipliers (Caffe's lr_mult / decay_mult): schema, parameter groups, one SGD step by hand, resume."""
from __future__ import annotations

import math

import pytest
import torch

from netspec.compiler import analyse, compile_spec
from netspec.compiler.lower import param_groups
from netspec.compiler.summary import format_summary, summarise
from netspec.errors import UserError
from netspec.runtime import checkpoint as ckpt
from netspec.runtime.train import train
from conftest import error_of
from test_checkpoint import interrupt_after_first_checkpoint
from test_train import tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPEC = """\
name: mults
input: {shape: [2, 6, 6]}
classes: 3
nodes:
  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: bn1, op: batchnorm, decay_mult: 0}
  - {name: relu1, op: relu}
  - {name: conv2, op: conv, out: 4, kernel: 3, pad: 1, lr_mult: {weight: 0.5}}
  - {name: relu2, op: relu}
  - {name: fc, op: fc, out: 3, lr_mult: 3, decay_mult: {weight: 2, bias: 0.5}}
train:
  lr_mult: {weight: 1, bias: 2}
  decay_mult: {weight: 1, bias: 0}
  optimizer: {type: sgd, lr: 0.1, momentum: MOMENTUM, weight_decay: 0.01}
"""

# (lr multiplier, decay multiplier) that each tensor must get from SPEC: node value over train default over 1
EXPECTED = {
    "conv1.weight": (1, 1), "conv1.bias": (2, 0),           # the train-wide defaults
    "bn1.weight": (1, 0), "bn1.bias": (2, 0),               # decay_mult: 0 on both tensors; lr from the default
    "conv2.weight": (0.5, 1), "conv2.bias": (2, 0),         # only the weight's lr given: the bias keeps the default
    "fc.weight": (3, 2), "fc.bias": (3, 0.5),               # a number is both tensors
}


def compiled(tmp_path, momentum=0.0):
    path = tmp_path / "mults.yaml"
    path.write_text(SPEC.replace("MOMENTUM", str(momentum)))
    return compile_spec(path)


def test_groups_follow_node_over_spec_default_over_one(tmp_path):
    c = compiled(tmp_path)
    groups = param_groups(c.network, c.module)
    got = {name: (g["lr_mult"], g["decay_mult"]) for g in groups for name in g["names"]}
    assert got == EXPECTED
    # one group per distinct pair, in order of first appearance: the layout is the same on every rank and resume
    assert [(g["lr_mult"], g["decay_mult"]) for g in groups] == [(1, 1), (2, 0), (1, 0), (0.5, 1), (3, 2), (3, 0.5)]
    again = compiled(tmp_path)
    assert [g["names"] for g in param_groups(again.network, again.module)] == [g["names"] for g in groups]


def test_without_multipliers_there_is_one_group_as_before(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(SPEC.split("train:")[0].replace(", decay_mult: 0", "").replace(", lr_mult: {weight: 0.5}", "")
                    .replace(", lr_mult: 3, decay_mult: {weight: 2, bias: 0.5}", ""))
    c = compile_spec(path)
    groups = param_groups(c.network, c.module)
    assert len(groups) == 1 and groups[0]["names"] == [n for n, _ in c.module.named_parameters()]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_sgd_step_equals_the_hand_computed_update_per_group(tmp_path, momentum):
    """p ← p − lr·lr_mult·(g + wd·decay_mult·p) for every tensor (the first step of momentum SGD is the same)."""
    c = compiled(tmp_path, momentum)
    model = c.module
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = c.spec.train.optimizer.build(param_groups(c.network, model))
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    loss = model(x)["main"].square().sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    lr, wd = 0.1, 0.01
    for name, p in model.named_parameters():
        lr_mult, decay_mult = EXPECTED[name]
        expected = before[name] - lr * lr_mult * (grads[name] + wd * decay_mult * before[name])
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_summary_shows_the_default_once_and_the_nodes_that_differ(tmp_path):
    c = compiled(tmp_path)
    s = summarise(c.network)
    assert s["multipliers"] == {"lr_mult": [1, 2], "decay_mult": [1, 0]}
    rows = {n["name"]: n for n in s["nodes"]}
    assert rows["fc"]["lr_mult"] == [3, 3] and rows["fc"]["decay_mult"] == [2, 0.5]
    assert "lr_mult" not in rows["relu1"]
    text = format_summary(s)
    assert "train.lr_mult/decay_mult): lr ×1/×2 decay ×1/×0" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert lines["fc"].endswith("lr ×3/×3 decay ×2/×0.5")
    assert lines["bn1"].endswith("lr ×1/×2 decay ×1/×0") is False and "decay ×0/×0" in lines["bn1"]
    assert "×" not in lines["conv1"]  # the spec-wide default is not repeated on every node


def test_resume_with_multipliers_continues_exactly(tmp_path, monkeypatch):
    extra = ["train.lr_mult={weight: 1, bias: 2}", "train.decay_mult={weight: 1, bias: 0}",
             "train.optimizer.weight_decay=0.01"]
    spec = tiny_spec(tmp_path, dropout=True)
    straight = train(compile_spec(spec, extra + [f"train.out={tmp_path / 'a'}"]))
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(compile_spec(spec, extra + [f"train.out={tmp_path / 'b'}"]))
    resumed = train(compile_spec(spec, extra + [f"train.out={tmp_path / 'b'}"]), resume=True)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    state = ckpt.load_checkpoint(tmp_path / "b/latest/checkpoints/last.pt")["optimizer"]
    assert [(g["lr_mult"], g["decay_mult"]) for g in state["param_groups"]] == [(1, 1), (2, 0)]
    assert math.isclose(state["param_groups"][1]["weight_decay"], 0.0)


@pytest.mark.parametrize("where, value, message", [
    ("node", "-1", "must be greater than or equal to 0"),
    ("node", ".nan", "must be a finite number"),
    ("node", "abc", "must be a number >= 0 or {weight: x, bias: y}, got 'abc'"),
    ("node", "true", "must be a number >= 0 or {weight: x, bias: y}, got True"),
    ("node", "{weight: -2}", "must be greater than or equal to 0"),
    ("node", "{wieght: 2}", "unknown key 'wieght'"),
    ("train", "-0.5", "must be greater than or equal to 0"),
    ("train", ".inf", "must be a finite number"),
    ("train", "[1, 2]", "must be a number >= 0 or {weight: x, bias: y}"),
])
@pytest.mark.parametrize("key", ["lr_mult", "decay_mult"])
def test_bad_multipliers_are_one_line_errors_at_their_line(tmp_path, where, value, message, key):
    lines = SPEC.replace("MOMENTUM", "0").splitlines()
    if where == "node":
        lines[4] = f"  - {{name: conv1, op: conv, out: 4, kernel: 3, pad: 1, {key}: {value}}}"
        line = 5
    else:
        line = next(i for i, l in enumerate(lines, 1) if l.startswith(f"  {key}:"))
        lines[line - 1] = f"  {key}: {value}"
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    err = error_of(analyse, path)
    assert message in str(err) and key in str(err)
    assert err.pos is not None and err.pos.line == line, str(err)


def test_multipliers_are_refused_on_ops_without_parameters(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("MOMENTUM", "0").replace("{name: relu1, op: relu}", "{name: relu1, op: relu, lr_mult: 2}"))
    err = error_of(analyse, path)
    assert "unknown key 'lr_mult'" in str(err) and err.pos.line == 7
