"""Pass 6 (shapes, params, FLOPs: built on the meta device, run on an empty CPU batch) checked against a real forward, and pass 8 (summary)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from netspec.compiler import analyse, compile_spec
from netspec.compiler.summary import format_summary, summarise
from conftest import MINI, SPECS, error_of, marked_line


@pytest.fixture(scope="module")
def fmnist():
    return compile_spec(SPECS / "cnds8_fmnist.yaml")


def test_inferred_shapes_match_a_real_forward(fmnist):
    g, module = fmnist.network, fmnist.module.eval()
    seen = {}
    for name, sub in ((n, m) for n, m in module.named_modules() if n in g):
        sub.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    shape = g.input.shape
    out = module(torch.randn(2, *shape))
    assert {n for n in seen if "." in n} and all(seen[name] == g.nodes[name].shape for name in seen)
    assert {h: tuple(t.shape) for h, t in out.items()} == {h: (2, fmnist.spec.classes) for h in fmnist.heads}


def test_params_and_flops_match_torch(fmnist):
    g, module = fmnist.network, fmnist.module.eval()
    for name, sub in ((n, m) for n, m in module.named_modules() if n in g):
        assert g.nodes[name].params == sum(p.numel() for p in sub.parameters())
    summary = summarise(g)
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *g.input.shape))
    assert summary["train"]["flops"] == counter.get_total_flops()
    assert summary["train"]["params"] == sum(p.numel() for p in module.parameters())


def test_summary_train_and_deploy(fmnist):
    g, s = fmnist.network, summarise(fmnist.network)
    branch = [n for n in s["nodes"] if n["branch"] == "aux1"]
    assert s["train"]["params"] - s["deploy"]["params"] == sum(n["params"] for n in branch) > 0
    assert s["deploy"]["nodes"] == len(g.ancestry("main")) == s["train"]["nodes"] - len(branch)
    heads = {h["head"]: h for h in s["heads"]}
    assert heads["main"]["depth_ratio"] == 1 and 0 < heads["aux1"]["depth_ratio"] < 1
    losses = {l["name"]: l for l in s["losses"]}
    assert losses["aux1"] == {"name": "aux1", "type": "cross_entropy", "schedule": "cnds", "head": "aux1", "weight": 0.3}
    text = format_summary(s)
    for node in s["nodes"]:
        assert node["name"] in text
    assert "deployed graph (branches pruned)" in text and "cnds" in text


def test_caffe_ceil_pooling(write_spec):
    base = MINI.replace("input: {shape: [1, 8, 8]}", "input: {shape: [1, 7, 7]}")
    pooled = lambda ceil: analyse(write_spec(base.replace(  # noqa: E731
        "{name: relu1, op: relu}", f"{{name: relu1, op: maxpool, kernel: 2, stride: 2, ceil: {ceil}}}")))[1]
    assert pooled("true").nodes["relu1"].shape == (4, 4, 4)
    assert pooled("false").nodes["relu1"].shape == (4, 3, 3)


def test_same_padding_depthwise_and_dilation(write_spec):
    text = MINI.replace("{name: relu1, op: relu}",
                        "{name: relu1, op: conv, out: 8, kernel: 3, pad: same, dilation: 2, groups: depthwise}")
    g = analyse(write_spec(text.replace("out: 4,", "out: 8,")))[1]
    assert g.nodes["relu1"].shape == (8, 8, 8)
    assert g.nodes["relu1"].params == 8 * 1 * 3 * 3 + 8


def test_add_mismatch_names_node_both_shapes_and_line(write_spec):
    text = MINI.replace("  - {name: fc", "  - {name: c2, op: conv, out: 6, kernel: 1, from: conv1}\n"
                                         "  - {name: sum, op: add, from: [relu1, c2]}  # <-\n  - {name: fc")
    err = error_of(analyse, write_spec(text))
    assert err.pos.line == marked_line(text)
    assert "node 'sum' (add)" in err.what and "(4, 8, 8) from 'relu1'" in err.what and "(6, 8, 8) from 'c2'" in err.what
    assert "equal shapes" in err.fix


def test_meta_inference_allocates_nothing():
    """CNDS-8's fc6 is 4096 x (256·6·6), 150 MB; shape inference must not materialise it."""
    g = analyse(SPECS / "cnds8.yaml")[1]
    assert g.nodes["fc6"].params == 4096 * torch.Size(g.nodes["pool5"].shape).numel() + 4096
    assert not hasattr(g.nodes["fc6"], "module")  # real modules are built by lowering, not by shape inference


def test_shape_inference_imports_neither_sympy_nor_dynamo():
    """The meta device's Python kernels (conv, linear) import sympy and torch._dynamo, 1-2 s per process; shapes
    come from the CPU kernels on an empty batch instead (every op and spec is checked by the tests above)."""
    code = ("import sys; from netspec.compiler import compile_spec; from netspec.compiler.artifacts import model_source;"
            f"model_source(compile_spec({str(SPECS / 'cnds8.yaml')!r})); model_source(compile_spec("
            f"{str(SPECS / 'mwbp_fmnist.yaml')!r})); print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


VARIANTS = {"conv": [{"out": 6, "kernel": 3}, {"out": 6, "kernel": 3, "stride": 2, "pad": 1},
                     {"out": 4, "kernel": 3, "dilation": 2, "groups": 4}],
            "fc": [{"out": 5}], "grad_scale": [{"scale": 0.5}],
            "maxpool": [{"kernel": 2}, {"kernel": 3, "stride": 2, "ceil": True}, {"kernel": 3, "stride": 2, "pad": 1}],
            "avgpool": [{"kernel": 3, "stride": 2, "ceil": True}, {"kernel": 3, "stride": 2, "pad": 1, "ceil": True}],
            "shortcut": [{"out": 8, "stride": 2}, {"out": 4}],
            "eltwise": [{}, {"operation": "max"}, {"operation": "prod"}]}


def _op_cases():
    from netspec.ops import REGISTRY

    for op, cls in REGISTRY.items():
        if op != "custom":
            for params in VARIANTS.get(op, [{}]):
                yield pytest.param(op, cls.arity[0], params, id=f"{op}-{'-'.join(f'{k}{v}' for k, v in params.items())}")


class _Record(torch.fx.Interpreter):
    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape[1:])
        return out


@pytest.mark.parametrize("op, arity, params", list(_op_cases()))
def test_every_op_infers_the_shape_a_real_forward_gives(write_spec, op, arity, params):
    """Shapes come from an empty CPU batch with weightless parameters: every op of the registry, odd sizes, strides,
    padding and ceil mode, against the lowered module run on two real examples."""
    fields = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    source = "[a, b]" if arity > 1 else "a"
    second = "  - {name: b, op: conv, out: 4, kernel: 1, from: data}\n" if arity > 1 else ""
    text = ("name: every_op\ninput: {shape: [4, 9, 9]}\nclasses: 3\nnodes:\n  - {name: a, op: conv, out: 4, kernel: 1}\n"
            f"{second}  - {{name: t, op: {op}, from: {source}{', ' + fields if fields else ''}}}\n"
            "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 3}\n")
    compiled = compile_spec(write_spec(text))
    recorder = _Record(compiled.module.eval())
    recorder.shapes = {}
    recorder.run(torch.randn(2, 4, 9, 9))
    assert {name: compiled.network.nodes[name].shape for name in compiled.network.nodes} == \
        {name: recorder.shapes[name] for name in compiled.network.nodes}
