"""The prune pass: a pruned exit is node for node and parameter for parameter the net built for that exit alone."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from torch import fx

from netspec.compiler import compile_spec
from netspec.compiler.lower import lower
from netspec.compiler.prune import head_outputs, prune, unbranched_overrides
from netspec.errors import UserError
from netspec.limits import Limits
from netspec.spec import MAIN_HEAD

SPECS = sorted(Path(__file__).resolve().parents[1].glob("specs/*.yaml"))
# Specs that take several seconds to compile (twice here): run them with NETSPEC_SLOW_TESTS=1.
SLOW_SPECS = {"resnet1202.yaml", "dks_resnet1202.yaml"}
RUN_SLOW = os.environ.get("NETSPEC_SLOW_TESTS") == "1"

SYNTHETIC = """
name: synthetic
input: {shape: [3, 12, 12], mean: [0.5], std: [0.25]}
classes: 5
nodes:
  - {name: conv1, op: conv, out: 8, kernel: 3, pad: 1}
  - {name: bn1, op: batchnorm}
  - {name: relu1, op: relu}
  - {name: conv2, op: conv, out: 8, kernel: 3, pad: 1}
  - {name: res, op: add, from: [conv2, relu1]}
  - {name: relu2, op: relu}
  - {name: pool, op: maxpool, kernel: 2}
  - {name: flat, op: flatten}
  - {name: drop, op: dropout, p: 0.5}
  - {name: fc, op: fc, out: "${classes}"}
branches:
  early:
    from: relu1
    nodes:
      - {name: gap, op: gap}
      - {name: fc, op: fc, out: "${classes}"}
  late:
    from: pool
    nodes:
      - {name: conv, op: conv, out: 4, kernel: 1}
      - {name: cat, op: concat, from: [conv, pool]}
      - {name: flat, op: flatten}
      - {name: fc, op: fc, out: "${classes}"}
losses:
  main: {type: cross_entropy, head: main}
  early: {type: cross_entropy, head: early, weight: 0.3}
  late: {type: cross_entropy, head: late, weight: 0.3, schedule: dsn}
  synergy: {type: synergy, heads: all}
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "synthetic.yaml"
    path.write_text(SYNTHETIC)
    return path


@functools.cache
def compiled(path: Path, overrides: tuple[str, ...] = ()):
    # the shipped specs are ours (dks_userresnet_fmnist runs specs/models/resnet.py)
    return compile_spec(path, list(overrides), Limits(code=True))


def signature(gm: fx.GraphModule) -> list[tuple]:
    """Every node as (op, name, target, args, kwargs), inputs by name."""
    return [(n.op, n.name, n.target, fx.node.map_arg(n.args, lambda a: a.name), fx.node.map_arg(n.kwargs, lambda a: a.name))
            for n in gm.graph.nodes]


def assert_same_net(pruned: fx.GraphModule, reference: fx.GraphModule) -> None:
    assert signature(pruned) == signature(reference)
    assert [name for name, _ in pruned.named_modules()] == [name for name, _ in reference.named_modules()]
    ours, theirs = pruned.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert pruned.code == reference.code


def spec_param(path: Path):
    if path.name in SLOW_SPECS:
        return pytest.param(path, id=path.name, marks=pytest.mark.skipif(
            not RUN_SLOW, reason=f"{path.name} compiles slowly; run with NETSPEC_SLOW_TESTS=1"))
    return pytest.param(path, id=path.name)


@pytest.fixture(params=[pytest.param(None, id="synthetic")] + [spec_param(p) for p in SPECS])
def spec_path(request, synthetic) -> Path:
    return request.param or synthetic


def test_pruned_main_is_the_spec_compiled_without_branches(spec_path):
    full = compiled(spec_path)
    plain = compiled(spec_path, tuple(unbranched_overrides(full.spec)))
    assert list(plain.heads) == [MAIN_HEAD]
    assert_same_net(prune(full.module), lower(plain.network, [MAIN_HEAD], single=True))


def test_every_exit_is_the_net_lowered_for_it_alone(spec_path):
    full = compiled(spec_path)
    for head in full.heads:
        pruned = prune(full.module, head)
        assert_same_net(pruned, lower(full.network, [head], single=True))
        assert pruned.meta["heads"] == [head]


def test_prune_leaves_the_training_module_untouched(synthetic):
    full = compiled(synthetic)
    before = (signature(full.module), list(full.module.state_dict()))
    prune(full.module, "early")
    assert (signature(full.module), list(full.module.state_dict())) == before


def test_pruned_exit_computes_the_same_logits(synthetic):
    full = compiled(synthetic)
    module = full.module.eval()
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        expected = module(x)
        for head in full.heads:
            assert torch.equal(prune(module, head)(x), expected[head])


def test_an_exit_keeps_the_backbone_up_to_it_and_its_own_head(synthetic):
    pruned = prune(compiled(synthetic).module, "late")
    names = set(pruned.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "conv2.weight", "late.conv.weight", "late.fc.weight"} <= names
    assert not any(n.startswith(("early.", "fc.")) for n in names)
    assert not hasattr(pruned, "early") and not hasattr(pruned, "fc")


def test_unknown_exit_suggests_the_closest(synthetic):
    with pytest.raises(UserError, match="no exit named 'eraly'") as err:
        prune(compiled(synthetic).module, "eraly")
    assert "did you mean 'early'" in err.value.fix


def test_a_single_head_module_is_refused(synthetic):
    with pytest.raises(ValueError, match="single tensor"):
        head_outputs(prune(compiled(synthetic).module))
