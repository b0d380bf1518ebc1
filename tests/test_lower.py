"""Pass 7, lower: a torch.fx GraphModule named after the spec's nodes; init; moving a branch keeps the backbone."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from netspec.compiler import analyse, compile_spec
from netspec.compiler.lower import lower, lower_graph
from conftest import MINI, SPECS, WITH_BRANCH, error_of


def test_module_computes_the_spec(write_spec):
    c = compile_spec(write_spec(MINI))
    assert isinstance(c.module, fx.GraphModule)
    sd = c.module.state_dict()
    assert list(sd) == ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
    x = torch.randn(2, 1, 8, 8)
    expected = F.linear(F.relu(F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], padding=1)).flatten(1),
                        sd["fc.weight"], sd["fc.bias"])
    torch.testing.assert_close(c.module(x)["main"], expected)


def test_training_module_returns_every_head_and_one_head_lowers_alone(write_spec):
    c = compile_spec(write_spec(WITH_BRANCH))
    out = c.module(torch.randn(3, 1, 8, 8))
    assert set(out) == {"main", "aux"} and out["aux"].shape == (3, 3)
    deploy = lower(c.network, ["main"], single=True)
    assert isinstance(deploy(torch.randn(3, 1, 8, 8)), torch.Tensor)
    assert not any(k.startswith("aux.") for k in deploy.state_dict())
    err = error_of(lower, c.network, ["axu"])
    assert "no head named 'axu'" in err.what and "aux" in err.fix


def test_init_default_and_per_node_override(write_spec):
    text = MINI.replace("nodes:", "init: {weight: {type: gaussian, std: 0.01}, bias: 0.5}\nnodes:").replace(
        "{name: fc, op: fc, out: 3}", "{name: fc, op: fc, out: 3, init: {weight: {type: constant, value: 0.25}, bias: 1}}")
    text = text.replace("out: 4,", "out: 64,")
    sd = compile_spec(write_spec(text)).module.state_dict()
    assert abs(sd["conv1.weight"].std().item() - 0.01) < 0.002 and torch.all(sd["conv1.bias"] == 0.5)
    assert torch.all(sd["fc.weight"] == 0.25) and torch.all(sd["fc.bias"] == 1)


def test_seed_makes_weights_reproducible(write_spec):
    path = write_spec(MINI)
    first, second = (compile_spec(path).module.state_dict() for _ in range(2))
    other = compile_spec(path, ["train.seed=1"]).module.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


def test_generated_code_names_the_nodes(write_spec):
    code = compile_spec(write_spec(WITH_BRANCH)).module.code
    assert "self.conv1(" in code and "aux" in code and "'main'" in code


@pytest.fixture(scope="module")
def cnds8_moved(tmp_path_factory):
    """specs/cnds8.yaml as released, and a copy whose only change is the branch's `from:` line."""
    original = (SPECS / "cnds8.yaml").read_text()
    assert original.count("from: relu3_2") == 1
    moved = tmp_path_factory.mktemp("moved") / "cnds8.yaml"
    moved.write_text(original.replace("from: relu3_2", "from: relu4_1"))
    return compile_spec(SPECS / "cnds8.yaml"), compile_spec(moved)


def test_moving_a_branch_keeps_the_backbone(cnds8_moved):
    before, after = cnds8_moved
    assert after.network.nodes["aux1.pool"].inputs == ("relu4_1",)
    backbone = lambda c: {k: v.shape for k, v in c.module.state_dict().items() if not k.startswith("aux1.")}  # noqa
    assert backbone(before) == backbone(after)
    state = {k: v for k, v in before.module.state_dict().items() if not k.startswith("aux1.")}
    result = after.module.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("aux1.") for k in result.missing_keys)
    # the branch's shapes were re-inferred from its new attachment point
    assert after.network.nodes["aux1.pool"].shape[0] == after.network.nodes["relu4_1"].shape[0]


def test_moving_a_branch_by_override(write_spec):
    path = write_spec((SPECS / "cnds8_fmnist.yaml").read_text())
    g0 = analyse(path)[1]
    g = analyse(path, ["branches.aux1.from=relu4_2"])[1]
    assert g0.nodes["aux1.pool"].inputs == ("relu3_2",) and g.nodes["aux1.pool"].inputs == ("relu4_2",)
    assert g.depth["aux1"] == g0.depth["aux1"] + 2  # conv4_1 and conv4_2 now come first


# sha256 (first 16 hex digits) over each state_dict entry's name and float32 bytes, and the next `torch.rand(1)`
# after building: what `compile_spec(spec).module` gave at commit c53d750, before lowering became lazy.
INIT_BEFORE = {"cnds8_fmnist.yaml": ("c5dae7c10defbd83", 0.6896851062774658),
               "dks_resnet20_fmnist.yaml": ("dd0f9d6f7c8b0445", 0.2864948511123657),
               "mwbp_fmnist.yaml": ("607c6ec9166bf128", 0.7238398790359497)}


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("spec", sorted(INIT_BEFORE))
def test_lazy_lowering_keeps_the_initial_weights_and_the_generator_bit_for_bit(spec):
    torch.manual_seed(1234)  # whatever state the generator is in before, the weights do not depend on it
    compiled = compile_spec(SPECS / spec)
    torch.rand(7)  # draws between compiling and lowering change nothing either
    digest, next_draw = INIT_BEFORE[spec]
    assert _digest(compiled.module.state_dict()) == digest
    assert torch.rand(1).item() == next_draw  # the generator is left where the eager lowering left it
    assert compiled.module is compiled.module  # built once


def test_compile_summary_and_drawing_build_no_module_and_draw_no_random_number(tmp_path):
    from netspec.compiler.artifacts import write_build
    from netspec.compiler.draw import default_view, to_dot
    from netspec.compiler.summary import summarise

    before = torch.get_rng_state()
    compiled = compile_spec(SPECS / "cnds8.yaml")  # 60 M parameters
    summary = summarise(compiled.network)
    write_build(compiled, [], summary, tmp_path)
    to_dot(default_view(compiled.network)[0])
    assert "module" not in vars(compiled)  # the cached property was never read
    assert torch.equal(torch.get_rng_state(), before)
    assert (tmp_path / "model.py").read_text().endswith(compiled.graph.python_code(root_module="self").src)


@pytest.mark.parametrize("spec", ["mwbp_fmnist.yaml", "cnds8_fmnist.yaml", "dks_resnet20_fmnist.yaml"])
def test_graph_without_weights_is_the_modules_graph(spec):
    """lower_graph (model.py's code) is node for node the graph of the lowered module, calls (flatten, add,
    grad_scale) and all, for every head set and for a single exit."""
    net = analyse(SPECS / spec)[1]
    for heads, single in ((None, False), (["main"], True), ([list(net.heads)[-1]], False)):
        graph = lower_graph(net, heads, single)
        module = lower(net, heads, single)
        assert graph.python_code(root_module="self").src == module.code


def test_graph_without_weights_leaves_custom_ops_unbuilt(write_spec, monkeypatch):
    from netspec.limits import Limits
    from netspec.ops import Custom

    text = MINI.replace("  - {name: relu1, op: relu}", "  - {name: relu1, op: custom, target: 'torch.nn:ReLU'}")
    net = analyse(write_spec(text), limits=Limits(code=True))[1]
    monkeypatch.setattr(Custom, "build", lambda self, shapes: pytest.fail("a custom op was built"))
    assert lower_graph(net).python_code(root_module="self").src.count("self.relu1(") == 1
