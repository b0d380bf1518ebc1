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
from netspec.runtime.calibrate import add_latency, choose_and_report
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
        assert main(["calibrate", str(spec), "--cascade", str(folder), "--target-drop", "100", "--no-latency"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    manifest = read_manifest(folder)
    chosen = report["choose"]["chosen"]
    assert [s["threshold"] for s in manifest["segments"]][:-1] == chosen["thresholds"][:-1]
    assert chosen["share"][0] == 1.0 and chosen["mean_flops"] == manifest["segments"][0]["cumulative_flops"]
    assert (folder / "calibration.png").stat().st_size > 1000
    assert "chosen:" in printed.getvalue() and "on the same test examples 0–59 (60)" in printed.getvalue()
    assert report["same_examples"] and report["report"] == report["choose"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["calibrate", str(spec), "--cascade", str(folder), "--target-drop", "0", "--no-latency"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    assert report["choose"]["chosen"]["top1"] >= report["choose"]["full_top1"]
    assert abs(sum(report["choose"]["chosen"]["share"]) - 1) < 1e-9
    assert main(["calibrate", str(spec), "--cascade", str(tmp_path / "nowhere")]) == 2


def test_holdout_chooses_on_the_first_examples_and_reports_on_the_others():
    labels = np.zeros(10, np.int64)
    main_logits = np.tile([[5.0, 0, 0]], (10, 1))  # always right
    early = np.tile([[10.0, 0, 0]], (10, 1))  # always as confident: right but on examples 4 and 5
    early[4:6] = [0, 10.0, 0]
    cumulative = np.array([1.0, 3.0])
    report = choose_and_report([early, main_logits], labels, ["early", "main"], cumulative, 0.0, holdout=4)
    choose, held = report["choose"], report["report"]
    assert not report["same_examples"] and choose["examples"] == [0, 4] and held["examples"] == [4, 10]
    assert choose["full_top1"] == held["full_top1"] == 100
    assert choose["exit_top1"]["early"] == 100 and held["exit_top1"]["early"] == pytest.approx(400 / 6)
    assert choose["chosen"]["thresholds"] == [0.0, 1.0]  # every example of the choose split leaves early, rightly
    assert choose["chosen"]["top1"] == 100 and choose["chosen"]["share"] == [1.0, 0.0]
    assert held["chosen"]["thresholds"] == [0.0, 1.0] and held["chosen"]["share"] == [1.0, 0.0]
    assert held["chosen"]["top1"] == pytest.approx(400 / 6) and held["chosen"]["mean_flops"] == 1.0
    same = choose_and_report([early, main_logits], labels, ["early", "main"], cumulative, 0.0)
    assert same["same_examples"] and same["report"] is same["choose"] and same["choose"]["examples"] == [0, 10]
    assert same["choose"]["chosen"]["share"] == [0.0, 1.0]  # exit early would lose examples 4 and 5


def test_mean_latency_is_the_shares_times_the_per_exit_latency():
    points = [{"share": [0.25, 0.75]}, {"share": [1.0, 0.0]}]
    add_latency(points, {"exits": [2.0, 6.0], "full": 5.0})
    assert [p["mean_latency_ms"] for p in points] == [5.0, 2.0]


def test_calibrate_holdout_and_latency(project, cascade_dir, tmp_path, monkeypatch, capsys):
    import shutil

    _, spec = project
    folder = tmp_path / "c"
    shutil.copytree(cascade_dir, folder)
    args = ["calibrate", str(spec), "--cascade", str(folder)]
    for bad in ("0", "-3", "60", "99"):
        assert main(args + ["--holdout", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--holdout {bad} must be between 1 and 59" in err
    assert main(args + ["--holdout", "20", "--latency-inputs", "4", "--latency-repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "chosen on test examples 0–19 (20), reported on test examples 20–59 (40)" in printed
    report = json.loads((folder / "calibration.json").read_text())
    latency = report["latency_ms"]
    assert latency["inputs"] == 4 and latency["repeats"] == 1 and latency["threads"] == 1
    assert len(latency["exits"]) == 3 and all(v > 0 for v in latency["exits"]) and latency["full"] > 0
    for p in report["choose"]["shared"] + report["choose"]["per_exit"] + [report["report"]["chosen"]]:
        assert p["mean_latency_ms"] == pytest.approx(float(np.dot(p["share"], latency["exits"])))
    record = read_manifest(folder)["calibration"]
    assert record["choose"]["examples"] == [0, 20] and record["report"]["examples"] == [20, 60]
    assert record["report"]["top1"] == report["report"]["chosen"]["top1"] and not record["same_examples"]

    def no_timing(*_):
        raise AssertionError("timed despite --no-latency")
    monkeypatch.setattr(Cascade, "latency", no_timing)
    assert main(args + ["--no-latency"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    assert report["latency_ms"] is None and "mean_latency_ms" not in report["choose"]["chosen"]
    assert "mean ms" not in capsys.readouterr().out


def test_full_onnx_is_the_main_exit(project, cascade_dir):
    _, spec = project
    manifest = read_manifest(cascade_dir)
    assert manifest["full"] == "full.onnx" and (cascade_dir / "full.onnx").is_file()
    compiled = compile_spec(spec)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        expected = compiled.exit_module("main").eval()(x).numpy()
    full = Cascade.load(cascade_dir).full_session()
    got = full.run(None, {full.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
