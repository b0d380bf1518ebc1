"""`netspec export` and `netspec predict` on a tiny spec with a small .npz data set."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from netspec.compiler import compile_spec
from netspec.runtime.run import Run, spec_yaml
from netspec.compiler.lower import lower
from netspec.compiler.prune import unbranched_overrides
from netspec.cli import main
from netspec.runtime import verify
from netspec.runtime.data import Batches, load_dataset
from netspec.runtime.export import META, to_onnx
from netspec.runtime.train import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "emu"]
SPEC = """
name: tiny
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
  - {{name: drop, op: dropout, p: 0.5}}
  - {{name: fc, op: fc, out: "${{classes}}"}}
branches:
  aux1:
    from: pool1
    nodes:
      - {{name: conv, op: conv, out: 4, kernel: 1}}
      - {{name: gap, op: gap}}
      - {{name: fc, op: fc, out: "${{classes}}"}}
losses:
  main: {{type: cross_entropy, head: main}}
  aux1: {{type: cross_entropy, head: aux1, weight: 0.3}}
data: {{source: npz, path: "{data}"}}
train: {{out: "{run}", device: cpu}}
"""


class Project:
    """A spec, its data and a checkpoint with trained-looking weights (BatchNorm statistics set)."""

    def __init__(self, root: Path):
        self.root = root
        rng = np.random.default_rng(0)
        np.savez(root / "data.npz", x_train=rng.integers(0, 256, (6, 8, 8), np.uint8), y_train=rng.integers(0, 3, 6),
                 x_test=rng.integers(0, 256, (40, 8, 8), np.uint8), y_test=rng.integers(0, 3, 40), classes=CLASSES)
        self.spec = root / "tiny.yaml"
        self.spec.write_text(SPEC.format(data=root / "data.npz", run=root / "run"))
        self.compiled = compile_spec(self.spec)
        with torch.no_grad():
            self.compiled.module.bn1.running_mean.uniform_(-0.2, 0.2)
            self.compiled.module.bn1.running_var.uniform_(0.5, 2.0)
        self.checkpoint = root / "run" / "r1" / "checkpoints" / "best.pt"  # a run, and `latest` pointing at it
        self.printed: dict[str, str] = {}
        self.save_checkpoint(self.checkpoint, self.compiled.spec_hash)
        (root / "run" / "latest").symlink_to("r1")
        Run(root / "run" / "r1").start({"run": "r1", "spec_name": "tiny", "spec": str(self.spec), "overrides": [],
                                        "command": ["train"], "seed": 0}, spec_yaml(self.compiled.spec))

    def save_checkpoint(self, path: Path, spec_hash: str, misfit: bool = False) -> None:
        """`misfit`: the main classifier has another shape (a checkpoint of another spec)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = self.compiled.module.state_dict()
        if misfit:
            weights = {**weights, "fc.weight": torch.zeros(7, *weights["fc.weight"].shape[1:])}
        torch.save({"model": weights, "spec_name": "tiny", "spec_hash": spec_hash, "epoch": 3}, path)

    def export(self, *flags: str, name: str) -> Path:
        """Run `netspec export`; keep what it printed in `self.printed[name]`."""
        out, printed = self.root / name, io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["export", *flags, str(self.spec), str(out)]) == 0
        self.printed[name] = printed.getvalue()
        return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def full_model(project) -> Path:
    return project.export(name="full.onnx")


@pytest.fixture(scope="module")
def main_model(project) -> Path:
    return project.export("--prune-aux", name="main.onnx")


@pytest.fixture(scope="module")
def aux_model(project) -> Path:
    return project.export("--exit", "aux1", name="aux1.onnx")


def real_test_split(project) -> tuple[np.ndarray, np.ndarray]:
    spec = project.compiled.spec
    data = load_dataset(spec.data, spec.input.shape)
    x, y = next(iter(Batches(data.test_x, data.test_y, 1000, train=False, mean=spec.input.mean, std=spec.input.std)))
    return x.numpy(), y.numpy()


def run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def node_list(model: onnx.ModelProto) -> list[tuple]:
    return [(n.op_type, tuple(n.input), tuple(n.output), str(n.attribute)) for n in model.graph.node]


def test_full_export_has_every_head_as_a_named_output_with_a_dynamic_batch(full_model, project):
    model = onnx.load(full_model)
    assert [o.name for o in model.graph.output] == ["main", "aux1"]
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META + "exit"] == "all"
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = project.compiled.module.eval()(torch.from_numpy(x))
    for got, head in zip(run_onnx(full_model, x), ["main", "aux1"]):
        np.testing.assert_allclose(got, expected[head].numpy(), atol=1e-5)


def test_metadata_says_how_to_use_the_model(main_model, project):
    meta = {p.key: p.value for p in onnx.load(main_model).metadata_props}
    assert meta[META + "exit"] == "main"
    assert meta[META + "spec_name"] == "tiny" and meta[META + "spec_hash"] == project.compiled.spec_hash
    assert json.loads(meta[META + "input_shape"]) == [1, 8, 8]
    assert json.loads(meta[META + "mean"]) == [0.5] and json.loads(meta[META + "std"]) == [0.25]
    assert json.loads(meta[META + "classes"]) == CLASSES
    assert meta[META + "weights"] == f"{project.checkpoint} (epoch 3)"
    assert meta[META + "version"]


def test_pruned_model_is_the_never_branched_net(main_model, project):
    pruned = onnx.load(main_model)
    assert "aux1" not in str(pruned.graph)
    plain = compile_spec(project.spec, unbranched_overrides(project.compiled.spec))
    plain_module = lower(plain.network, ["main"], single=True)
    plain_module.load_state_dict({k: v for k, v in project.compiled.module.state_dict().items() if not k.startswith("aux1.")})
    never_branched = to_onnx(plain_module.eval(), "data", (1, 8, 8), ["main"])
    assert node_list(pruned) == node_list(never_branched)
    assert [t.name for t in pruned.graph.initializer] == [t.name for t in never_branched.graph.initializer]


def test_exit_accuracy_in_onnxruntime_equals_netspec_eval(aux_model, project, capsys):
    rows = {row["exit"]: row for row in evaluate_checkpoint(project.compiled, project.checkpoint).rows}
    x, y = real_test_split(project)
    (logits,) = run_onnx(aux_model, x)
    assert [o.name for o in onnx.load(aux_model).graph.output] == ["aux1"]
    assert (logits.argmax(1) == y).mean() == pytest.approx(rows["aux1"]["top1"], abs=1e-12)
    assert 0 < rows["aux1"]["top1"] < 1  # the check means something: predictions are neither all right nor all wrong


def test_export_reports_the_difference_on_random_and_test_batches(project, main_model):
    printed = project.printed[main_model.name]
    assert "onnx.checker: ok" in printed and f"weights {project.checkpoint} (epoch 3)" in printed
    assert "random batch of 8" in printed and "40 test images" in printed and "(limit " in printed


def test_mismatch_fails_with_status_1_and_writes_nothing(project, monkeypatch, capsys):
    monkeypatch.setattr(verify, "TOLERANCE", -1.0)  # every difference is now too large
    out = project.root / "never.onnx"
    code = main(["export", "--random-init", "--prune-aux", str(project.spec), "data.path=/nonexistent.npz", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and not out.exists()
    assert "no test data" in captured.err and "comparing on a random batch only" in captured.err
    assert "onnxruntime differs from torch beyond the tolerance" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("words, message", [
    (["--exit", "axu1"], "there is no exit named 'axu1' — did you mean 'aux1'?"),
    (["--checkpoint", "{root}/nothing.pt"], "no checkpoint at"),
    (["--checkpoint", "{root}/foreign.pt"], "was trained from spec 'tiny' (hash 0123456789abcdef), whose weights "
                                            "do not fit"),
    (["train.out={root}/elsewhere"], "pass --random-init"),
    (["--random-init", "--checkpoint", "{root}/foreign.pt"], "exclude each other"),
])
def test_user_errors_are_one_line_and_exit_2(project, words, message, capsys):
    project.save_checkpoint(project.root / "foreign.pt", "0123456789abcdef", misfit=True)
    words = [w.format(root=project.root) for w in words]
    assert main(["export", *words, str(project.spec), str(project.root / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (project.root / "x.onnx").exists()


def test_export_needs_one_onnx_output(project, capsys):
    assert main(["export", "--random-init", str(project.spec)]) == 2
    assert "give one output file ending in .onnx" in capsys.readouterr().err


def write_inputs(root: Path) -> tuple[list[Path], np.ndarray]:
    """A PNG, a .npy of three images and an .npz; returns the files and their 5 images as uint8."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 8, 8), np.uint8)
    Image.fromarray(images[0]).save(root / "one.png")
    np.save(root / "three.npy", images[1:4])
    np.savez(root / "last.npz", x=images[4:, :, :, None])  # N×H×W×C
    return [root / "one.png", root / "three.npy", root / "last.npz"], images


def test_predict_prints_the_top_classes_by_name(aux_model, project, tmp_path, capsys):
    files, images = write_inputs(tmp_path)
    assert main(["predict", str(aux_model), *map(str, files), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "exit aux1" in lines[0] and "top 2 of 3 classes" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == [str(files[0]), *(f"{files[1]}[{i}]" for i in range(3)), str(files[2])]
    x = (images[:, None].astype(np.float32) / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = project.compiled.module.eval()(torch.from_numpy(x))["aux1"].argmax(1)
    assert [line.split()[1] for line in lines[1:]] == [CLASSES[i] for i in expected]


def test_predict_does_not_import_torch(aux_model, tmp_path):
    files, _ = write_inputs(tmp_path)
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
            "from pathlib import Path\nfrom netspec.runtime.predict import predict\n"
            "from netspec.runtime.report import Report\n"
            f"predict(Path({str(aux_model)!r}), [Path(p) for p in {list(map(str, files))!r}], 3)\n"  # quiet
            f"predict(Path({str(aux_model)!r}), [Path(p) for p in {list(map(str, files))!r}], 3, report=Report(print))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 6


@pytest.mark.parametrize("content, message", [(None, "no model at"), (b"not onnx", "cannot load")])
def test_predict_refuses_what_is_not_a_model(content, message, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    if content is not None:
        model.write_bytes(content)
    assert main(["predict", str(model), str(tmp_path / "x.npy")]) == 2
    assert message in capsys.readouterr().err


def test_predict_refuses_inputs_of_the_wrong_shape(aux_model, tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((2, 8, 9), np.uint8))
    assert main(["predict", str(aux_model), str(tmp_path / "wide.npy")]) == 2
    assert "is not one or many 1×8×8 images" in capsys.readouterr().err


def test_checkpoint_whose_weights_fit_exports_with_a_note(project, capsys):
    """A moved branch changes the spec hash but not the pruned model's weights: export goes on, and says so."""
    project.save_checkpoint(project.root / "moved.pt", "0123456789abcdef")
    out = project.root / "moved.onnx"
    assert main(["export", "--prune-aux", "--checkpoint", str(project.root / "moved.pt"), str(project.spec), str(out)]) == 0
    assert "every weight this model needs is in it" in capsys.readouterr().err and out.exists()


def test_onnx_nodes_and_tensors_carry_the_spec_names(full_model, main_model):
    """Netron shows the user's graph: `conv2`, `aux1.fc`, not `node_conv2d_1`."""
    full = onnx.load(full_model).graph
    nodes = [n.name for n in full.node]
    assert {"relu1", "pool1", "conv2", "relu2", "fc", "aux1.conv", "aux1.gap", "aux1.fc"} <= set(nodes)  # conv1+bn1: one Conv
    assert not [n for n in nodes if n.startswith("node_")] and len(set(nodes)) == len(nodes)
    produced = {out: n.name for n in full.node for out in n.output}
    assert produced["conv2"] == "conv2" and produced["aux1"] == "aux1.fc" and produced["main"] == "fc"
    assert [n.name for n in onnx.load(main_model).graph.node if n.name.startswith("aux1")] == []
