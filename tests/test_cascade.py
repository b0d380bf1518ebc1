"""Early-exit cascades (`compiler/cascade.py`, `netspec export --cascade`, `runtime/cascade.py`) and `netspec time`."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx

from netspec.cli import main
from netspec.compiler import compile_spec
from netspec.compiler.cascade import split
from netspec.ops import scale_grad
from netspec.runtime.cascade import Cascade, read_manifest, simulate
from netspec.runtime.data import Batches, load_dataset

SPEC = """
name: casc
input: {{shape: [1, 8, 8], mean: [0.5], std: [0.25]}}
classes: 3
init: {{weight: {{type: gaussian, std: 0.3}}, bias: 0.05}}
nodes:
  - {{name: conv1, op: conv, out: 4, kernel: 3, pad: 1}}
  - {{name: bn1, op: batchnorm}}
  - {{name: relu1, op: relu}}
  - {{name: pool1, op: maxpool, kernel: 2}}
  - {{name: conv2, op: conv, out: 8, kernel: 3, pad: 1}}
  - {{name: relu2, op: relu}}
  - {{name: conv3, op: conv, out: 8, kernel: 3, pad: 1}}
  - {{name: add, op: add, from: [conv3, relu2]}}
  - {{name: gap, op: gap}}
  - {{name: fc, op: fc, out: "${{classes}}"}}
branches:
  aux2:
    from: relu2
    nodes:
      - {{name: gap, op: gap}}
      - {{name: fc, op: fc, out: "${{classes}}"}}
  aux1:
    from: pool1
    grad_scale: 0.5
    nodes:
      - {{name: conv, op: conv, out: 4, kernel: 1}}
      - {{name: gap, op: gap}}
      - {{name: fc, op: fc, out: "${{classes}}"}}
losses:
  main: {{type: cross_entropy, head: main}}
  aux1: {{type: cross_entropy, head: aux1, weight: 0.3}}
  aux2: {{type: cross_entropy, head: aux2, weight: 0.3}}
data: {{source: npz, path: "{data}"}}
train: {{out: "{run}", device: cpu, batch_size: 4}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x_train=rng.integers(0, 256, (6, 8, 8), np.uint8), y_train=rng.integers(0, 3, 6),
             x_test=rng.integers(0, 256, (60, 8, 8), np.uint8), y_test=rng.integers(0, 3, 60))
    spec = root / "casc.yaml"
    spec.write_text(SPEC.format(data=root / "data.npz", run=root / "run"))
    return root, spec


def activations(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every fx node's value in the full training module."""
    values = {}

    class Record(fx.Interpreter):
        def run_node(self, n):
            values[n.name] = super().run_node(n)
            return values[n.name]
    with torch.no_grad():
        Record(gm).run(x)
    return values


def test_segments_are_the_full_models_activations(project):
    compiled = compile_spec(project[1])
    gm = compiled.module.eval()
    segments = split(gm, compiled.network)
    assert [s.exit for s in segments] == ["aux1", "aux2", "main"]
    computed = [n for s in segments for n in s.nodes]
    assert len(computed) == len(set(computed)) == len(compiled.network.nodes) - 1  # the grad_scale is dropped
    assert not any(n.target is scale_grad for s in segments for n in s.module.graph.nodes)
    x = torch.randn(5, 1, 8, 8)
    full = activations(gm, x)
    values = {"data" if "data" in full else compiled.spec.input.name: x}
    values[compiled.spec.input.name] = x
    with torch.no_grad():
        for seg in segments:
            outs = seg.module(*(values[name] for name in seg.inputs))
            values.update(zip(seg.outputs, outs))
            assert torch.equal(outs[0], gm(x)[seg.exit])
            for name, value in zip(seg.outputs[1:], outs[1:]):
                assert torch.equal(value, full[name]), name
    assert segments[0].inputs == (compiled.spec.input.name,)
    assert "pool1" in segments[0].outputs and "relu2" in segments[1].outputs
    assert segments[2].inputs == ("relu2",)


@pytest.fixture(scope="module")
def cascade_dir(project):
    root, spec = project
    out = root / "casc_cascade"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(spec), "--random-init", "--cascade", str(out)]) == 0
    assert "cascade (thresholds 1.0) vs main" in printed.getvalue()
    return out


def test_export_cascade_thresholds_and_manifest(project, cascade_dir):
    root, spec = project
    manifest = read_manifest(cascade_dir)
    assert json.loads(json.dumps(manifest)) == manifest
    assert [s["exit"] for s in manifest["segments"]] == ["aux1", "aux2", "main"]
    cumulative = [s["cumulative_flops"] for s in manifest["segments"]]
    assert cumulative == sorted(cumulative) and cumulative[-1] >= manifest["full_flops"]
    compiled = compile_spec(spec)
    data = load_dataset(compiled.spec.data, compiled.spec.input.shape)
    x, _ = next(iter(Batches(data.test_x, data.test_y, 60, train=False, mean=[0.5], std=[0.25])))
    with torch.no_grad():
        full = compiled.module.eval()(x)
    cascade = Cascade.load(cascade_dir)
    logits, where = cascade.run(x.numpy(), [1.0, 1.0, 1.0])
    assert (where == 2).all() and np.array_equal(logits.argmax(1), full["main"].argmax(1).numpy())
    logits, where = cascade.run(x.numpy(), [0.0, 0.0, 0.0])
    assert (where == 0).all() and np.array_equal(logits.argmax(1), full["aux1"].argmax(1).numpy())
    thresholds = [0.4, 0.45, 0.0]
    predicted, exits = simulate(cascade.all_exits(x.numpy()), thresholds)
    logits, where = cascade.run(x.numpy(), thresholds)
    assert np.array_equal(where, exits) and np.array_equal(logits.argmax(1), predicted)


def test_predict_runs_a_cascade(project, cascade_dir):
    root, _ = project
    images = root / "images.npy"
    np.save(images, np.random.default_rng(1).integers(0, 256, (3, 8, 8), np.uint8))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["predict", str(cascade_dir), str(images)]) == 0
    lines = [l for l in printed.getvalue().splitlines() if "images.npy[" in l]
    assert len(lines) == 3 and all("exit main" in l for l in lines)  # thresholds 1.0: every input goes to main


def test_time_lists_every_node(project):
    _, spec = project
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["time", str(spec), "--repeats", "2", "--warmup", "1", "--json"]) == 0
    report = json.loads(printed.getvalue())
    compiled = compile_spec(spec)
    assert {n["name"] for n in report["nodes"]} == set(compiled.network.nodes)
    assert all(n["forward_ms"] > 0 for n in report["nodes"])
    assert sum(n["backward_ms"] or 0 for n in report["nodes"]) > 0
    total = report["total"]
    assert total["train_step_ms"] > 0 and total["deploy_forward_ms"] > 0
    assert total["deploy_flops"] < total["train_flops"]
    assert json.loads(json.dumps(report)) == report
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["time", str(spec), "--repeats", "1", "--warmup", "0"]) == 0
    table = printed.getvalue()
    assert all(any(line.startswith(name + " ") for line in table.splitlines()) for name in compiled.network.nodes)
    assert main(["time", str(spec), "--repeats", "0"]) == 2


def test_calibrate_picks_and_stores_thresholds(project, cascade_dir, tmp_path):
    import shutil

    _, spec = project
    folder = tmp_path / "c"
    shutil.copytree(cascade_dir, folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["calibrate", str(spec), "--cascade", str(folder), "--target-drop", "100"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    manifest = read_manifest(folder)
    chosen = report["chosen"]
    assert [s["threshold"] for s in manifest["segments"]][:-1] == chosen["thresholds"][:-1]
    assert chosen["share"][0] == 1.0 and chosen["mean_flops"] == manifest["segments"][0]["cumulative_flops"]
    assert (folder / "calibration.png").stat().st_size > 1000
    assert "chosen:" in printed.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["calibrate", str(spec), "--cascade", str(folder), "--target-drop", "0"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    assert report["chosen"]["top1"] >= report["full_top1"]
    assert abs(sum(report["chosen"]["share"]) - 1) < 1e-9
    assert main(["calibrate", str(spec), "--cascade", str(tmp_path / "nowhere")]) == 2
