"""The ONNX passes every export goes through (`runtime.export.finish`), each on generated graphs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from netspec.runtime.export import fast_average_pools, to_onnx


def average_pool(shape, **attributes) -> onnx.ModelProto:
    node = helper.make_node("AveragePool", ["x"], ["y"], **attributes)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def slow(model: onnx.ModelProto) -> bool:
    """Whether the pool has the attributes onnxruntime runs on its slow path."""
    attrs = {a.name: a.i for a in model.graph.node[0].attribute if a.type == onnx.AttributeProto.INT}
    return bool(attrs.get("ceil_mode") and attrs.get("count_include_pad"))


def generated_pools(n: int, seed: int = 0):
    """2-D pools torch can express; most with the attribute pair the pass rewrites (ceil mode, pad cells counted)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        kernel = [int(k) for k in rng.integers(1, 6, 2)]
        stride = [int(rng.integers(1, k + 2)) for k in kernel] if rng.random() < 0.6 else [1, 1]
        pad = [int(rng.integers(0, k // 2 + 1)) for k in kernel] if rng.random() < 0.5 else [0, 0]
        size = [int(k + rng.integers(0, 10)) for k in kernel]
        ceil, include_pad = (True, True) if rng.random() < 0.7 else (bool(rng.integers(2)), bool(rng.integers(2)))
        yield kernel, stride, pad, ceil, include_pad, size


def rewritten(kernel, stride, pad) -> bool:
    """Whether the pass gives a ceil-mode, pad-counting pool its fast form (see `fast_average_pools`)."""
    return all(s <= k for s, k in zip(stride, kernel)) and (not any(pad) or all(s == 1 for s in stride))


@pytest.mark.parametrize("kernel, stride, pad, ceil, include_pad, size", list(generated_pools(120)))
def test_fast_average_pools_keeps_torchs_numbers(kernel, stride, pad, ceil, include_pad, size):
    x = np.random.default_rng(1).standard_normal((2, 3, *size)).astype(np.float32)
    expected = torch.nn.functional.avg_pool2d(torch.from_numpy(x), kernel, stride, pad, ceil_mode=ceil,
                                              count_include_pad=include_pad).numpy()
    model = average_pool([2, 3, *size], kernel_shape=kernel, strides=stride, pads=pad + pad, ceil_mode=int(ceil),
                         count_include_pad=int(include_pad))
    before = run(model, x)
    fast_average_pools(model)
    after = run(model, x)
    assert after.shape == expected.shape == before.shape
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert slow(model) == (ceil and include_pad and not rewritten(kernel, stride, pad))


@pytest.mark.parametrize("shape, attributes", [
    ([1, 2, 11], {"kernel_shape": [4], "strides": [2]}),  # 1-D, no pads attribute
    ([1, 2, 7, 8, 9], {"kernel_shape": [3, 2, 4], "strides": [2, 2, 3], "pads": [0] * 6}),  # 3-D
    ([1, 2, 9, 10], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 0]}),  # asymmetric pads, no strides attribute
    ([1, 2, 9, 10], {"kernel_shape": [3, 4], "strides": [1, 1], "pads": [1, 0, 0, 2]}),
])
def test_fast_average_pools_on_other_ranks_and_pads_keeps_the_numbers(shape, attributes):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    model = average_pool(shape, ceil_mode=1, count_include_pad=1, **attributes)
    before = run(model, x)
    fast_average_pools(model)
    after = run(model, x)
    assert not slow(model)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attributes", [{"auto_pad": "SAME_UPPER"}, {"dilations": [2, 2]}, {"strides": [4, 2]}])
def test_fast_average_pools_leaves_auto_pad_dilations_and_wide_strides_alone(attributes):
    model = average_pool([1, 1, 9, 9], **{"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                          "count_include_pad": 1, **attributes})
    fast_average_pools(model)
    assert slow(model)


def test_exports_run_ceil_pools_on_the_fast_path():
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AvgPool2d(5, 2, ceil_mode=True)).eval()
    proto = to_onnx(module, "data", (1, 14, 14), ["out"])
    (pool,) = [n for n in proto.graph.node if n.op_type == "AveragePool"]
    attrs = {a.name: a.i for a in pool.attribute if a.type == onnx.AttributeProto.INT}
    assert attrs["ceil_mode"] == 1 and attrs["count_include_pad"] == 0
    x = torch.randn(3, 1, 14, 14)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"data": x.numpy()})[0], module(x).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
