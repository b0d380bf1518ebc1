"""Gradient-scaling edges (`branches.<name>.grad_scale`, MW-BP's γ_p/Γ_p): identity forward, gradient × x into
the backbone, visible in the graph, summary and drawing, gone from pruned and exported exits."""
from __future__ import annotations

import contextlib
import io

import onnx
import pytest
import torch

from netspec.cli import main
from netspec.compiler import analyse, compile_spec
from netspec.compiler.draw import to_dot
from netspec.compiler.lower import lower
from netspec.compiler.prune import prune
from netspec.compiler.summary import format_summary, summarise
from netspec.ops import scale_grad
from netspec.runtime.export import to_onnx
from conftest import error_of
from test_train import tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SCALE = 0.0629
SCALED = [f"branches.aux1.grad_scale={SCALE}"]


def grads(module, x, head):
    module.zero_grad(set_to_none=True)
    module(x)[head].square().sum().backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_backbone_gradient_from_a_scaled_branch_is_x_times_the_unscaled_one(tmp_path):
    spec = tiny_spec(tmp_path)
    plain, scaled = compile_spec(spec), compile_spec(spec, SCALED)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for (name, a), (_, b) in zip(plain.module.named_parameters(), scaled.module.named_parameters()):
        assert torch.equal(a, b), name  # the scaling node has no parameters: the same initial weights
    torch.testing.assert_close(plain.module(x)["aux1"], scaled.module(x)["aux1"], rtol=0, atol=0)  # identity forward
    g_plain, g_scaled = grads(plain.module, x, "aux1"), grads(scaled.module, x, "aux1")
    assert set(g_plain) == set(g_scaled) == {"conv1.weight", "conv1.bias", "aux1.fc.weight", "aux1.fc.bias"}
    for name in ("conv1.weight", "conv1.bias"):  # the backbone, before the branch point
        torch.testing.assert_close(g_scaled[name], SCALE * g_plain[name])
        assert g_plain[name].abs().sum() > 0
    for name in ("aux1.fc.weight", "aux1.fc.bias"):  # the head's own gradients are unchanged
        torch.testing.assert_close(g_scaled[name], g_plain[name], rtol=0, atol=0)
    m_plain, m_scaled = grads(plain.module, x, "main"), grads(scaled.module, x, "main")
    for name in m_plain:  # the main loss does not go through the edge
        torch.testing.assert_close(m_scaled[name], m_plain[name], rtol=0, atol=0)


def test_grad_scale_is_a_node_in_the_graph_summary_and_drawing(tmp_path):
    c = compile_spec(tiny_spec(tmp_path), SCALED)
    node = c.network.nodes["aux1.grad_scale"]
    assert node.inputs == ("pool1",) and node.branch == "aux1" and node.op.scale == SCALE
    assert c.network.nodes["aux1.gap"].inputs == ("aux1.grad_scale",)
    calls = [n for n in c.module.graph.nodes if n.op == "call_function" and n.target is scale_grad]
    assert [n.name for n in calls] == ["aux1_grad_scale"] and calls[0].kwargs == {"scale": SCALE}
    text = format_summary(summarise(c.network))
    line = next(line for line in text.splitlines() if line.startswith("aux1.grad_scale"))
    assert "grad_scale" in line and "∇×0.0629" in line
    dot = to_dot(c.network)
    assert '"pool1" -> "aux1.gap" [label="  ∇×0.063", color=red]' in dot
    assert '"aux1.grad_scale" [' not in dot  # drawn on the edge, not as a box


def test_pruned_and_single_exit_modules_have_no_grad_scale(tmp_path):
    spec = tiny_spec(tmp_path)
    plain, scaled = compile_spec(spec), compile_spec(spec, SCALED)
    for head in ("main", "aux1"):
        ours = prune(scaled.module, head)
        theirs = prune(plain.module, head)
        assert [(n.op, n.target) for n in ours.graph.nodes] == [(n.op, n.target) for n in theirs.graph.nodes]
        single = lower(scaled.network, [head], single=True)
        assert not any(n.target is scale_grad for n in single.graph.nodes)
    assert any(n.target is scale_grad for n in scaled.module.graph.nodes)  # the training module keeps it


def test_exit_export_of_a_scaled_branch_is_the_unscaled_onnx(tmp_path):
    spec = tiny_spec(tmp_path)
    outs = {}
    for name, overrides in (("plain", []), ("scaled", SCALED)):
        out = tmp_path / f"{name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["export", "--exit", "aux1", "--random-init", str(spec), *overrides, str(out)]) == 0
        outs[name] = onnx.load(out)
    assert [(n.op_type, list(n.input), list(n.output)) for n in outs["scaled"].graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in outs["plain"].graph.node]


def test_the_full_training_module_with_grad_scale_still_exports(tmp_path):
    """Without --exit/--prune-aux every head is exported: the scaling node is an identity there."""
    c = compile_spec(tiny_spec(tmp_path), SCALED)
    model = c.module.eval()
    proto = to_onnx(model, "data", (1, 8, 8), ["main", "aux1"])
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["main", "aux1"]


@pytest.mark.parametrize("value, message", [
    ("-0.5", "must be greater than or equal to 0"),
    (".nan", "must be a finite number"),
    ("big", "must be a number"),
    ("[0.5]", "must be a number"),
])
def test_bad_grad_scale_is_a_one_line_error_at_its_line(tmp_path, value, message):
    spec = tiny_spec(tmp_path)
    text = spec.read_text().replace("    from: pool1\n", f"    from: pool1\n    grad_scale: {value}\n")
    spec.write_text(text)
    err = error_of(analyse, spec)
    assert "grad_scale" in str(err) and message in str(err), str(err)
    assert err.pos.line == text.splitlines().index(f"    grad_scale: {value}") + 1


def test_a_branch_node_named_grad_scale_clashes_with_the_edge(tmp_path):
    spec = tiny_spec(tmp_path)
    spec.write_text(spec.read_text().replace("      - {name: gap, op: gap}", "      - {name: grad_scale, op: gap}"))
    err = error_of(analyse, spec, SCALED)
    assert "node name 'grad_scale' is used twice" in str(err)
