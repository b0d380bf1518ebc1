"""Early-exit cascades (`compiler/cascade.py`, `netspec export --cascade`, `runtime/cascade.py`) and `netspec time`."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from torch import fx

from netspec.cli import main
from netspec.compiler import compile_spec
from netspec.compiler.cascade import split
from netspec.ops import scale_grad
from netspec.runtime.calibrate import Outputs, Split, choose_and_report
from netspec.runtime.cascade import Cascade, exit_costs, read_manifest, simulate
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
    logits, where, flops = cascade.run(x.numpy(), [1.0, 1.0, 1.0])
    assert (where == 2).all() and np.array_equal(logits.argmax(1), full["main"].argmax(1).numpy())
    assert (flops == manifest["full_flops"]).all()  # the heads of exits no row can leave at are not run
    logits, where, flops = cascade.run(x.numpy(), [0.0, 0.0, 0.0])
    assert (where == 0).all() and np.array_equal(logits.argmax(1), full["aux1"].argmax(1).numpy())
    assert (flops == cumulative[0]).all()
    thresholds = [0.4, 0.45, 0.0]
    every, confidences = cascade.all_exits(x.numpy())
    exits = simulate(confidences, thresholds, len(x))
    logits, where, flops = cascade.run(x.numpy(), thresholds)
    assert np.array_equal(where, exits) and np.array_equal(flops, np.asarray(cumulative)[where])
    assert close(logits, np.stack(every)[where, np.arange(len(x))])


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
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(folder / "anytime.onnx")).metadata_props}  # rewritten for them
    deciding = [s["exit"] for s in manifest["segments"][:-1] if s["threshold"] < 1] + ["main"]
    assert json.loads(meta["netspec.deciding_exits"]) == deciding
    assert (folder / "calibration.png").stat().st_size > 1000
    assert "chosen:" in printed.getvalue() and "on the same test examples 0–59 (60)" in printed.getvalue()
    assert report["same_examples"] and report["report"] == report["choose"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["calibrate", str(spec), "--cascade", str(folder), "--target-drop", "0", "--no-latency"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    assert report["choose"]["chosen"]["top1"] >= report["choose"]["full_top1"]
    assert abs(sum(report["choose"]["chosen"]["share"]) - 1) < 1e-9
    assert main(["calibrate", str(spec), "--cascade", str(tmp_path / "nowhere")]) == 2


def outputs(split: Split, logits: list[np.ndarray]) -> Outputs:
    """Outputs with the max-softmax confidence, computed in numpy (`reference_confidence`)."""
    return Outputs(split, logits, [reference_confidence("max", v) for v in logits[:-1]])


def test_thresholds_are_chosen_on_one_split_and_reported_on_another():
    labels = np.zeros(10, np.int64)
    main_logits = np.tile([[5.0, 0, 0]], (10, 1))  # always right
    early = np.tile([[10.0, 0, 0]], (10, 1))  # always as confident: right but on examples 4 and 5
    early[4:6] = [0, 10.0, 0]
    segments = [{"flops": 1.0, "head_flops": 0.25}, {"flops": 2.0, "head_flops": 2.0}]  # leaving early costs 1
    choose = outputs(Split("val", 0, None, labels[:4]), [early[:4], main_logits[:4]])
    held = outputs(Split("test", 4, None, labels[4:]), [early[4:], main_logits[4:]])
    report = choose_and_report(choose, held, ["early", "main"], segments, 0.0)
    choose, held = report["choose"], report["report"]
    assert not report["same_examples"] and choose["examples"] == [0, 4] and held["examples"] == [4, 10]
    assert choose["split"] == "val" and held["split"] == "test" and held["description"] == "test examples 4–9 (6)"
    assert choose["full_top1"] == held["full_top1"] == 100
    assert choose["exit_top1"]["early"] == 100 and held["exit_top1"]["early"] == pytest.approx(400 / 6)
    assert choose["chosen"]["thresholds"] == [0.0, 1.0]  # every example of the choose split leaves early, rightly
    assert choose["chosen"]["top1"] == 100 and choose["chosen"]["share"] == [1.0, 0.0]
    assert held["chosen"]["thresholds"] == [0.0, 1.0] and held["chosen"]["share"] == [1.0, 0.0]
    assert held["chosen"]["top1"] == pytest.approx(400 / 6) and held["chosen"]["mean_flops"] == 1.0
    same = choose_and_report(outputs(Split("test", 0, None, labels), [early, main_logits]), None, ["early", "main"],
                             segments, 0.0)
    assert same["same_examples"] and same["report"] is same["choose"] and same["choose"]["examples"] == [0, 10]
    assert same["choose"]["chosen"]["share"] == [0.0, 1.0]  # exit early would lose examples 4 and 5


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
    latency = report["latency"]
    assert latency["inputs"] == 4 and latency["rounds"] == 1 and latency["threads"] == 1
    assert latency["examples"] == [20, 24] and latency["full_ms"] > 0 and latency["throughput"]["cascade"] > 0
    chosen, every_fifth = report["choose"]["chosen"], report["choose"]["shared"][::5]
    timed = [p for p in report["choose"]["shared"] if "latency_ms" in p]
    assert all(p in every_fifth or p == chosen for p in timed) and all(p in timed for p in every_fifth)
    assert all(p["latency_ms"] > 0 for p in timed)
    by_time = report["choose"]["by_time"]  # chosen by the runner's measured batch-1 latency on the choose split
    assert report["chosen_by"] == "latency" and by_time["inputs"] == 4 and by_time["batch"] == 1
    assert chosen == min(by_time["timed"], key=lambda p: p["measured_time_ratio"])
    assert [1.0, 1.0, 1.0] in [p["thresholds"] for p in by_time["timed"]]  # the main exit alone is always timed
    assert all(p["top1"] >= report["choose"]["full_top1"] - 0.5 and p["predicted_ms"] > 0 for p in by_time["timed"])
    assert "chosen by measured batch-1 latency" in printed
    assert chosen["latency_ratio"] == pytest.approx(chosen["latency_ms"] / latency["full_ms"])
    assert report["report"]["chosen"]["latency_ms"] == chosen["latency_ms"]
    assert "measured (the runner, 1 thread(s), 4 test examples 20–23" in printed
    record = read_manifest(folder)["calibration"]
    assert record["choose"]["examples"] == [0, 20] and record["report"]["examples"] == [20, 60]
    assert record["report"]["top1"] == report["report"]["chosen"]["top1"] and not record["same_examples"]

    def no_timing(*_):
        raise AssertionError("timed despite --no-latency")
    monkeypatch.setattr("netspec.runtime.calibrate.measure", no_timing)
    assert main(args + ["--no-latency"]) == 0
    report = json.loads((folder / "calibration.json").read_text())
    assert report["latency"] is None and "latency_ms" not in report["choose"]["chosen"]
    assert report["chosen_by"] == "flops" and "by_time" not in report["choose"]
    assert "measured" not in capsys.readouterr().out


def test_calibrate_chooses_by_throughput_and_refuses_time_without_timing(project, cascade_dir, tmp_path, capsys):
    import shutil

    _, spec = project
    folder = tmp_path / "c"
    shutil.copytree(cascade_dir, folder)
    args = ["calibrate", str(spec), "--cascade", str(folder), "--holdout", "30"]
    assert main(args + ["--no-latency", "--choose-by", "latency"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--choose-by latency needs timing" in err
    assert main(args + ["--choose-by", "throughput", "--latency-inputs", "8", "--latency-repeats", "1"]) == 0
    assert "chosen by measured time per input at batch 64" in capsys.readouterr().out
    report = json.loads((folder / "calibration.json").read_text())
    by_time = report["choose"]["by_time"]
    assert report["chosen_by"] == "throughput" and by_time["batch"] == 64 and by_time["inputs"] == 8
    assert report["choose"]["chosen"] == min(by_time["timed"], key=lambda p: p["measured_time_ratio"])
    assert all(p["measured_time_ratio"] > 0 for p in by_time["timed"])


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


def close(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-5) -> bool:
    """Equal up to float rounding: a plan's merged model may fuse ops differently from the segments'."""
    return a.shape == b.shape and np.abs(a - b).max() <= tolerance * max(1.0, np.abs(b).max())


def reference_confidence(criterion: str, logits: np.ndarray) -> np.ndarray:
    """The exit criteria in numpy, from their definitions (docs/cascade.md), in float64."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = -np.sort(-p, 1)
    if criterion == "max":
        return top[:, 0]
    if criterion == "margin":
        return top[:, 0] - top[:, 1]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)
    return np.clip(1 - entropy / np.log(z.shape[1]), 0.0, 1.0)


def reference_run(logits: list[np.ndarray], confidences: list[np.ndarray], thresholds) -> np.ndarray:
    """The exit of every row, one row at a time, as the definition says: the first early exit whose confidence is
    strictly above its threshold, else the last."""
    where = []
    for i in range(len(logits[0])):
        k = next((k for k, c in enumerate(confidences) if c[i] > thresholds[k]), len(logits) - 1)
        where.append(k)
    return np.asarray(where)


@pytest.fixture(scope="module", params=["max", "margin", "entropy"])
def criterion_dir(request, project):
    root, spec = project
    out = root / f"casc_{request.param}"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", str(spec), "--random-init", "--cascade", str(out), "--confidence", request.param]) == 0
    return request.param, out


def batch_of(project, n=60):
    compiled = compile_spec(project[1])
    data = load_dataset(compiled.spec.data, compiled.spec.input.shape)
    x, _ = next(iter(Batches(data.test_x[:n], data.test_y[:n], n, train=False, mean=[0.5], std=[0.25])))
    return compiled, x


def random_thresholds(confidences: list[np.ndarray], rng) -> list[list[float]]:
    """Thresholds that split the rows: quantiles of each exit's confidences, plus the ends 0 and 1."""
    sets = [[float(np.quantile(c, rng.uniform(0, 1))) for c in confidences] + [1.0] for _ in range(12)]
    return sets + [[0.0] * len(confidences) + [1.0], [1.0] * (len(confidences) + 1)]


def test_the_graphs_confidence_is_the_criterion(project, criterion_dir):
    criterion, folder = criterion_dir
    compiled, x = batch_of(project)
    logits, confidences = Cascade.load(folder).all_exits(x.numpy())
    assert read_manifest(folder)["criterion"] == criterion and len(confidences) == len(logits) - 1
    for value, conf in zip(logits, confidences):
        assert conf.shape == (len(x),) and (conf >= 0).all() and (conf <= 1).all()
        assert np.abs(conf - reference_confidence(criterion, value)).max() < 1e-5


def test_runner_decisions_equal_the_reference_loop(project, criterion_dir):
    """At random thresholds: the exits equal a row-by-row loop in numpy (confidences computed in numpy from the
    logits; rows within 1e-4 of a threshold they are compared to are left out), the logits are that exit's."""
    criterion, folder = criterion_dir
    _, x = batch_of(project)
    cascade = Cascade.load(folder)
    logits, confidences = cascade.all_exits(x.numpy())
    reference = [reference_confidence(criterion, v) for v in logits[:-1]]
    rng = np.random.default_rng(1)
    decided = 0
    for thresholds in random_thresholds(reference, rng):
        expected = reference_run(logits, reference, thresholds)
        got = cascade.run(x.numpy(), thresholds)
        near = np.zeros(len(x), bool)
        for k, conf in enumerate(reference):
            near |= (np.abs(conf - thresholds[k]) < 1e-4) & (expected >= k)
        assert np.array_equal(got.exit[~near], expected[~near]), thresholds
        assert close(got.logits, np.stack(logits)[got.exit, np.arange(len(x))])
        assert np.array_equal(got.flops, exit_costs(cascade.segments, thresholds)[got.exit])
        decided += len(set(expected.tolist())) > 1
    assert decided >= 5  # the thresholds did split the rows between exits


def test_exit_costs_leave_out_the_heads_of_exits_no_row_leaves_at():
    """Generated: deciding everywhere costs the manifest's cumulative FLOPs; taking exit j out of the plan
    (threshold 1) lowers the cost of every later exit by exactly j's head and changes no other."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        flops = rng.integers(1, 10_000, k)
        segments = [{"flops": int(f), "head_flops": int(rng.integers(0, f + 1))} for f in flops]
        thresholds = [float(rng.choice([0.0, 0.5, 1.0])) for _ in range(k)]
        assert exit_costs(segments, [0.5] * k).tolist() == np.cumsum(flops).tolist()
        costs = exit_costs(segments, thresholds)
        for j in range(k - 1):
            if thresholds[j] < 1:
                off = exit_costs(segments, thresholds[:j] + [1.0] + thresholds[j + 1:])
                assert off[:j + 1].tolist() == costs[:j + 1].tolist()
                assert (costs[j + 1:] - off[j + 1:] == segments[j]["head_flops"]).all()


def test_float32_thresholds_decide_as_the_float64_comparison():
    """Generated: for float32 confidences c and float64 thresholds t (at, next to and between float32 values),
    c > float32_thresholds(t) exactly when c > t, as the `If` model and the stage loop compare."""
    from netspec.runtime.cascade_graph import float32_thresholds

    rng = np.random.default_rng(12)
    c = np.concatenate([rng.random(2000), [0.0, 1.0, 0.5, 0.8, 0.9995]]).astype(np.float32)
    picks = rng.choice(c, 300).astype(np.float64)
    t = np.concatenate([picks, picks + 1e-12, picks - 1e-12, np.nextafter(picks, 2), rng.random(300), [0.0, 0.8, 1.0]])
    t = np.clip(t, 0.0, 1.0)
    t32 = float32_thresholds(t)
    assert t32.dtype == np.float32
    assert np.array_equal(c[:, None] > t32[None, :], c[:, None].astype(np.float64) > t[None, :])


def test_batched_equals_batch_one_row_by_row(project, cascade_dir):
    _, x = batch_of(project)
    cascade = Cascade.load(cascade_dir)
    _, confidences = cascade.all_exits(x.numpy())
    for thresholds in random_thresholds(confidences, np.random.default_rng(2)):
        batched = cascade.run(x.numpy(), thresholds)
        for i in range(len(x)):
            one = cascade.run(x[i:i + 1].numpy(), thresholds)
            assert one.exit[0] == batched.exit[i] and one.flops[0] == batched.flops[i]
            assert np.abs(one.logits[0] - batched.logits[i]).max() <= 1e-5 * max(1.0, np.abs(one.logits).max())


def test_torch_cascade_equals_the_onnx_runner(project, criterion_dir):
    from netspec.runtime.cascade_torch import TorchCascade

    criterion, folder = criterion_dir
    compiled, x = batch_of(project)  # --random-init exported the weights `compile_spec` initialises (seeded by the spec)
    torch_cascade = TorchCascade.from_compiled(compiled, criterion)
    cascade = Cascade.load(folder)
    logits, confidences = cascade.all_exits(x.numpy())
    assert torch_cascade.exits == cascade.exits and torch_cascade.cumulative.tolist() == cascade.cumulative.tolist()
    for thresholds in random_thresholds(confidences, np.random.default_rng(3)):
        ours, theirs = cascade.run(x.numpy(), thresholds), torch_cascade.run(x, thresholds)
        near = np.zeros(len(x), bool)
        for k, conf in enumerate(confidences):
            near |= np.abs(conf - thresholds[k]) < 1e-4
        assert np.array_equal(ours.exit[~near], theirs.exit[~near])
        same = ~near
        assert np.abs(ours.logits[same] - theirs.logits[same]).max() <= 1e-4 * max(1.0, np.abs(ours.logits).max())


def test_anytime_model_equals_the_runner_at_batch_one(project, cascade_dir):
    from netspec.runtime.cascade import ANYTIME, session

    _, x = batch_of(project, 20)
    cascade = Cascade.load(cascade_dir)
    anytime = session(cascade_dir / ANYTIME)
    assert [i.name for i in anytime.get_inputs()] == [cascade.input_name]
    assert [i.name for i in anytime.get_overridable_initializers()] == ["thresholds"]  # a default, fed or not
    _, confidences = cascade.all_exits(x.numpy())
    for thresholds in random_thresholds(confidences, np.random.default_rng(4)):
        feed = np.asarray(thresholds[:-1], np.float32)
        for i in range(len(x)):
            logits, where = anytime.run(None, {cascade.input_name: x[i:i + 1].numpy(), "thresholds": feed})
            one = cascade.run(x[i:i + 1].numpy(), thresholds)
            assert int(where) == one.exit[0] and np.abs(logits - one.logits).max() <= 1e-5


def test_a_plan_runs_only_the_deciding_exits(cascade_dir):
    """Thresholds 1 run one model without any early head; forcing exit k runs the backbone to k and k's head."""
    from netspec.runtime.cascade_graph import plan

    cascade = Cascade.load(cascade_dir)
    never = plan(cascade.protos, cascade.segments, [1.0, 1.0, 1.0])
    assert len(never) == 1 and never[0].outputs == ["main"] and never[0].inputs == [cascade.input_name]
    ops = {n.name.split("/", 1)[1] for n in never[0].model.graph.node}
    assert not any(name.startswith(("aux1", "aux2")) for name in ops), ops
    second = plan(cascade.protos, cascade.segments, [1.0, 0.0, 1.0])
    assert [g.exit_index for g in second] == [1, 2] and second[0].outputs[:2] == ["aux2", "aux2:confidence"]
    assert not any(n.name.split("/", 1)[1].startswith("aux1") for n in second[0].model.graph.node)
    x = np.random.default_rng(5).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert len(cascade.prepare([1.0, 0.5, 1.0])[1]) == 2 and len(cascade.plans) >= 1
    assert (cascade.run(x, [1.0, 0.0, 1.0]).exit == 1).all()


@pytest.mark.parametrize("thresholds, message", [
    ([0.5], "1 threshold(s) for a cascade of 3 exits"),
    ([0.5, 0.5, 0.5, 0.5], "4 threshold(s) for a cascade of 3 exits"),
    ([1.5, 0.5], "the threshold of exit aux1 is 1.5"),
    ([0.5, -0.1], "the threshold of exit aux2 is -0.1"),
    ([float("nan"), 0.5], "the threshold of exit aux1 is nan"),
    (["0.5", 0.5], "the threshold of exit aux1 is '0.5'"),
    ([True, 0.5], "the threshold of exit aux1 is True"),
    ([[0.5], 0.5], "the threshold of exit aux1 is [0.5]"),
    ("0.5", "thresholds must be a list of numbers"),
    (0.5, "thresholds must be a list of numbers"),
])
def test_bad_thresholds_are_one_line_errors(cascade_dir, thresholds, message):
    from netspec.errors import UserError

    cascade = Cascade.load(cascade_dir)
    with pytest.raises(UserError) as err:
        cascade.run(np.zeros((1, 1, 8, 8), np.float32), thresholds)
    assert message in str(err.value) and "\n" not in str(err.value)


def _mutations():
    """(description, change to the manifest dict, words of the expected error)."""
    def set_(path, value):
        def change(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return change

    def drop(path):
        def change(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        return change
    return [
        ("old format", set_(["format"], 1), "has format 1"),
        ("no format", drop(["format"]), "has format 1"),
        ("not an object", lambda m: m.clear() or m.update({"segments": 3}), "has format"),
        ("criterion", set_(["criterion"], 3), "'criterion'"),
        ("input shape", set_(["input", "shape"], [1, 8]), "'input'"),
        ("input name", drop(["input", "name"]), "'input'"),
        ("full file", set_(["full"], "../full.onnx"), "'full'"),
        ("full flops", set_(["full_flops"], "many"), "'full'"),
        ("segments", set_(["segments"], []), "'segments'"),
        ("segment", set_(["segments", 0], 7), "segment 0 must be an object"),
        ("file", set_(["segments", 1, "file"], "/etc/passwd"), "segment 1 (aux2): 'file'"),
        ("inputs", set_(["segments", 1, "inputs"], []), "segment 1 (aux2): 'inputs'"),
        ("unknown input", set_(["segments", 1, "inputs"], ["nowhere"]), "reads nowhere"),
        ("first output", set_(["segments", 0, "outputs"], ["x", "y", "pool1"]), "the first output"),
        ("confidence", set_(["segments", 0, "outputs"], ["aux1"]), "confidence"),
        ("flops", set_(["segments", 2, "cumulative_flops"], -1), "'cumulative_flops'"),
        ("no head flops", drop(["segments", 1, "head_flops"]), "'head_flops'"),
        ("head flops", set_(["segments", 1, "head_flops"], 10 ** 15), "more than the segment's 'flops'"),
        ("threshold", set_(["segments", 0, "threshold"], 2), "'threshold' must be a number from 0"),
        ("threshold type", set_(["segments", 0, "threshold"], None), "'threshold' must be a number from 0"),
    ]


@pytest.mark.parametrize("description, change, words", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_manifests_are_one_line_errors(cascade_dir, tmp_path, capsys, description, change, words):
    import shutil

    folder = tmp_path / "c"
    shutil.copytree(cascade_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.uint8))
    assert main(["predict", str(folder), str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err, err


def test_broken_json_and_missing_segment_are_one_line_errors(cascade_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "c"
    shutil.copytree(cascade_dir, folder)
    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.uint8))
    (folder / "01_aux2.onnx").unlink()
    assert main(["predict", str(folder), str(tmp_path / "x.npy")]) == 2
    assert "01_aux2.onnx is missing" in capsys.readouterr().err
    (folder / "manifest.json").write_text("{not json")
    assert main(["predict", str(folder), str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not JSON" in err and "\n" not in err


@pytest.mark.parametrize("command", [["time", "--cascade"], ["calibrate", "--cascade"]])
def test_a_missing_cascade_directory_or_manifest_is_one_line_naming_the_export(tmp_path, capsys, command):
    (tmp_path / "empty").mkdir()
    for folder, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "no manifest.json in")):
        assert main([*command, str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "netspec export SPEC --cascade DIR" in err and "\n" not in err, err


def test_load_cascade_is_the_documented_api(cascade_dir):
    import netspec

    cascade = netspec.load_cascade(cascade_dir)
    x = np.random.default_rng(6).standard_normal((5, 1, 8, 8)).astype(np.float32)
    logits, exit_index, flops = cascade.run(x, [0.0, 1.0])
    assert logits.shape == (5, 3) and (exit_index == 0).all() and (flops == cascade.cumulative[0]).all()
    one = cascade.run(x[0])  # one C×H×W image is a batch of one
    assert one.logits.shape == (1, 3) and one.exit[0] == 2


def test_time_cascade_reports_segments_decisions_and_forced_exits(cascade_dir):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["time", "--cascade", str(cascade_dir), "--repeats", "2", "--json"]) == 0
    report = json.loads(printed.getvalue())
    segments = report["stages"]["segments"]
    assert [s["exit"] for s in segments] == ["aux1", "aux2", "main"]
    assert all(s["us"] > 0 for s in segments) and all(s["decision_us"] > 0 for s in segments[:-1])
    forced = report["forced"]["exits"]
    assert [r["exit"] for r in forced] == ["aux1", "aux2", "main"] and all(r["ms"] > 0 for r in forced)
    assert forced[0]["flops_share"] < forced[1]["flops_share"] < forced[2]["flops_share"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["time", "--cascade", str(cascade_dir), "--repeats", "1"]) == 0
    assert "never exit early" in printed.getvalue() and "decision µs" in printed.getvalue()
    assert report["stages"]["clock"] == report["forced"]["clock"] == "cpu"  # one thread: the CPU clock by default
    assert "cpu clock, load average" in printed.getvalue()
    assert main(["time", "--cascade", str(cascade_dir), "--threads", "2", "--clock", "cpu"]) == 2
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["time", "--cascade", str(cascade_dir), "--repeats", "1", "--threads", "2", "--json"]) == 0
    assert json.loads(printed.getvalue())["forced"]["clock"] == "wall"


def test_export_anytime_writes_one_model(project, tmp_path, capsys):
    _, spec = project
    out = tmp_path / "anytime.onnx"
    assert main(["export", str(spec), "--random-init", "--anytime", str(out), "--thresholds", "1,0.5"]) == 0
    import onnx

    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["netspec.deciding_exits"]) == ["aux2", "main"]  # aux1's threshold 1: left out
    assert any(n.op_type == "If" for n in model.graph.node)
    assert main(["export", str(spec), "--random-init", "--anytime", str(out), "--thresholds", "1,x"]) == 2
    assert main(["export", str(spec), "--random-init", "--anytime", str(out), "--thresholds", "0.5"]) == 2
    assert main(["export", str(spec), "--random-init", "--prune-aux", str(tmp_path / "m.onnx"), "--confidence", "margin"]) == 2
