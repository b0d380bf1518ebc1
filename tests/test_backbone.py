"""`backbone:` — a PyTorch module (tests/backbone_models.py, plain nn.Modules) as the backbone of a spec."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from netspec import cli
from netspec import compiler
from netspec.compiler.draw import default_view, to_dot
from netspec.compiler.prune import prune
from netspec.limits import Limits
from netspec.runtime import checkpoint as ckpt
from netspec.runtime.train import train
from backbone_models import Shared, TinyResNet
from conftest import error_of
from test_train import make_npz

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MODELS = Path(__file__).resolve().parent / "backbone_models.py"

SPEC = """\
name: byob
input: {{shape: [1, 8, 8], mean: [0.5], std: [0.25]}}
classes: 4
backbone: {{python: "{models}:{cls}", args: {{classes: 4}}{leaf}}}  # <-
branches:
  aux1:
    from: layer1
    nodes:
      - {{name: conv, op: conv, out: 4, kernel: 3, pad: 1}}
      - {{name: gap, op: gap}}
      - {{name: fc, op: fc, out: 4}}
  aux2:
    from: layer1.1.add
    nodes:
      - {{name: stage, op: copy_of, module: layer2}}
      - {{name: gap, op: gap}}
      - {{name: fc, op: fc, out: 4}}
losses:
  main: {{head: main}}
  aux1: {{head: aux1, weight: 0.3}}
  aux2: {{head: aux2, weight: 0.3}}
data: {{source: npz, path: "{data}"}}
train: {{epochs: 2, batch_size: 16, out: "{run}", device: cpu, seed: 3}}
"""


TRUSTED = Limits(code=True)  # the test modules are ours


def compile_spec(path, overrides=(), limits=TRUSTED):
    return compiler.compile_spec(path, overrides, limits)


def write(tmp_path: Path, cls: str = "TinyResNet", leaf: str = "", text: str = SPEC, models: Path = MODELS) -> Path:
    data = tmp_path / "data.npz"
    if not data.exists():
        make_npz(data)
    path = tmp_path / "byob.yaml"
    path.write_text(text.format(models=models, cls=cls, leaf=leaf, data=data, run=tmp_path / "run"))
    return path


def test_traced_names_are_torchvisions_and_a_submodule_name_is_its_output(tmp_path):
    net = compile_spec(write(tmp_path)).network
    backbone = [n.name for n in net if n.branch is None]
    assert backbone[:3] == ["conv1", "relu", "layer1.0.conv1"]
    assert ["layer1.0.relu", "layer1.0.conv2", "layer1.0.bn2", "layer1.0.add", "layer1.0.relu_1"] == backbone[4:9]
    assert {"layer2.0.down", "adaptive_avg_pool2d", "flatten", "fc"} <= set(backbone)
    assert net.nodes["aux1.conv"].inputs == ("layer1.1.relu_1",)  # `layer1` = the output of its last call
    assert net.nodes["aux2.stage"].inputs == ("layer1.1.add",)
    assert net.heads["main"] == "fc" and net.nodes["layer2.1.relu_1"].shape == (8, 4, 4)
    assert net.nodes["layer1.0.conv1"].op.op == "Conv2d" and net.nodes["layer1.0.conv1"].op.weighted
    tv = pytest.importorskip("torchvision.models.feature_extraction")
    _, names = tv.get_graph_node_names(TinyResNet(4))
    assert backbone == [n for n in names if n not in ("x", "output")]


def test_params_flops_and_state_dict_names_are_the_modules(tmp_path):
    compiled = compile_spec(write(tmp_path))
    net, gm, plain = compiled.network, compiled.module, TinyResNet(4)
    own = sum(p.numel() for p in plain.parameters())
    deploy = sum(n.params for n in net if n.branch is None)
    branches = sum(n.params for n in net if n.branch is not None)
    assert deploy == own and sum(p.numel() for p in gm.parameters()) == own + branches
    assert net.nodes["aux2.stage"].params == sum(p.numel() for p in plain.layer2.parameters())
    backbone_keys = [k for k in gm.state_dict() if k.split(".")[0] not in ("aux1", "aux2")]
    assert sorted(backbone_keys) == sorted(plain.state_dict())
    assert all(k.startswith(("aux1.", "aux2.")) for k in set(gm.state_dict()) - set(backbone_keys))
    assert {k for k in gm.state_dict() if k.startswith("aux2.stage.")} == {"aux2.stage." + k for k in plain.layer2.state_dict()}
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        plain.eval()(torch.zeros(1, 1, 8, 8))
    assert sum(n.flops for n in net if n.branch is None) == counter.get_total_flops()
    assert net.nodes["aux2.stage"].flops > 0


def test_a_parameter_used_functionally_and_a_module_called_twice_count_once(tmp_path):
    text = SPEC.split("branches:")[0] + "data: {{source: npz, path: \"{data}\"}}\n"
    compiled = compile_spec(write(tmp_path, "Shared", text=text))
    net, plain = compiled.network, Shared(4)
    assert [n.name for n in net] == ["conv", "mul", "conv_1", "add", "size", "view", "fc"]
    assert sum(n.params for n in net) == sum(p.numel() for p in plain.parameters())
    assert net.nodes["mul"].params == 1 and net.nodes["conv_1"].params == 0
    assert list(compiled.module.state_dict()) == list(plain.state_dict())  # `offset` is not saved, as in the module
    plain.load_state_dict(compiled.module.state_dict(), strict=True)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(compiled.module(x)["main"], plain(x))


def test_the_lowered_forward_is_the_modules_own(tmp_path):
    compiled = compile_spec(write(tmp_path))
    plain = TinyResNet(4)
    deployed = prune(compiled.module, "main").eval()
    plain.load_state_dict(deployed.state_dict(), strict=True)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(deployed(x), plain.eval()(x))


def test_copy_of_has_the_structure_and_fresh_weights(tmp_path):
    gm = compile_spec(write(tmp_path)).module
    copy, source = gm.get_submodule("aux2.stage"), TinyResNet(4).layer2
    assert [(n, repr(m)) for n, m in copy.named_modules()] == [(n, repr(m)) for n, m in source.named_modules()]
    backbone = dict(gm.named_parameters())
    pairs = [(name, p, backbone["layer2." + name]) for name, p in copy.named_parameters()]
    assert len(pairs) == len(list(source.parameters())) and all(p.shape == q.shape for _, p, q in pairs)
    assert not any(torch.equal(p, q) for name, p, q in pairs if name.endswith("conv1.weight"))
    assert all(p.data_ptr() != q.data_ptr() for _, p, q in pairs)


def test_train_resume_bitwise_and_export_equal_the_modules_forward(tmp_path, monkeypatch):
    spec = write(tmp_path)
    straight = train(compile_spec(spec, [f"train.out={tmp_path / 'a'}"]))
    save = ckpt.save

    def save_then_stop(folder, state, **kwargs):
        save(folder, state, **kwargs)
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(ckpt, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(compile_spec(spec, [f"train.out={tmp_path / 'b'}"]))
    resumed = train(compile_spec(spec, [f"train.out={tmp_path / 'b'}"]), resume=True)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name

    checkpoint = tmp_path / "a" / "latest" / "checkpoints" / "last.pt"
    out = tmp_path / "main.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["export", "--allow-custom", "--prune-aux", "--checkpoint", str(checkpoint), str(spec), str(out)]) == 0
    weights = ckpt.load_checkpoint(checkpoint)["model"]
    plain = TinyResNet(4)
    plain.load_state_dict({k: v for k, v in weights.items() if not k.startswith(("aux1.", "aux2."))}, strict=True)
    x = torch.randn(5, 1, 8, 8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(onnx_out - plain.eval()(x).detach().numpy()).max() < 1e-5


def test_untraceable_module_is_a_one_line_error_naming_fx_and_leaf_modules(tmp_path, capsys):
    text = SPEC.split("branches:")[0] + "data: {{source: npz, path: \"{data}\"}}\n"
    spec = write(tmp_path, "Gated", text=text)
    err = error_of(compile_spec, spec)
    message = str(err)
    assert "\n" not in message and err.pos.line == 4
    assert "'gate' (Gate)" in message and "backbone_models.py:" in message
    assert "control flow" in message and "leaf_modules: [gate]" in message
    assert cli.main(["compile", "--allow-custom", str(spec)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    spec = write(tmp_path, "Gated", leaf=", leaf_modules: [gate]", text=text)
    net = compile_spec(spec).network
    assert net.nodes["gate"].op.op == "Gate"
    spec = write(tmp_path, "Gated", leaf=", leaf_modules: [Gate]", text=text)
    assert "gate" in compile_spec(spec).network
    spec = write(tmp_path, "Gated", leaf=", leaf_modules: [gates]", text=text)
    assert "did you mean 'gate'?" in str(error_of(compile_spec, spec))


def test_from_a_name_that_was_not_traced_suggests_one(tmp_path):
    spec = write(tmp_path, text=SPEC.replace("from: layer1.1.add", "from: layer1.1.ad"))
    assert "did you mean 'layer1.1.add'?" in str(error_of(compile_spec, spec))


@pytest.mark.parametrize("name", ["conv1", "layer1", "layer2", "fc", "relu", "flatten", "adaptive_avg_pool2d"])
def test_a_branch_may_not_take_a_top_level_name_of_the_backbone(tmp_path, name):
    text = SPEC.replace("  aux1:\n", f"  {name}:\n").replace("aux1: {{head: aux1", f"{name}: {{{{head: {name}")
    err = error_of(compile_spec, write(tmp_path, text=text))
    assert f"branch '{name}'" in err.what and "rename the branch" in err.fix


def test_running_code_is_opt_in_and_files_resolve_against_the_spec(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    shutil.copy(MODELS, tmp_path / "models" / "net.py")
    spec = write(tmp_path, models=Path("models/net.py"))
    err = error_of(compile_spec, spec, limits=Limits())
    assert "runs Python code" in err.what and "--allow-custom" in err.fix and err.pos.line == 4
    assert cli.main(["compile", "--allow-custom", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.relu_1" in out and "copy_of" in out
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../byob.yaml\nname: child\n")  # the path is the parent's
    assert compile_spec(tmp_path / "sub" / "child.yaml").network.heads["main"] == "fc"
    spec.write_text(spec.read_text().replace("models/net.py", "models/nett.py"))
    assert "does not exist" in str(error_of(compile_spec, spec))


@pytest.mark.parametrize("backbone, message", [
    ("{python: a.py}", "'file.py:Name'"), ("{python: 'a.py:A', module: 'b:B'}", "exactly one of"),
    ("{module: 'torch.nn:NoSuch'}", "has no callable 'NoSuch'"), ("{module: 'no_such_pkg:A'}", "cannot be imported"),
    ("{module: 'torch.nn:Linear', args: {bad: 1}}", "failed: "),
    ("{module: 'torch.nn:Identity'}", "returns its input, not one tensor computed from the input"),
    ("{module: 'torch.nn:ReLU'}", "outputs (1, 8, 8), not a vector of 4 class scores"),
])
def test_bad_backbones_are_one_line_errors(tmp_path, backbone, message):
    text = SPEC.split("branches:")[0].replace('{{python: "{models}:{cls}", args: {{classes: 4}}{leaf}}}',
                                              backbone.replace("{", "{{").replace("}", "}}"))
    err = error_of(compile_spec, write(tmp_path, text=text + "data: {{source: npz, path: \"{data}\"}}\n"))
    assert message in str(err) and "\n" not in str(err)


def test_copy_of_needs_a_backbone_and_a_submodule(tmp_path):
    err = error_of(compile_spec, write(tmp_path, text=SPEC.replace("module: layer2", "module: layer3")))
    assert "not a submodule" in err.what and "did you mean 'layer2'?" in err.fix
    from conftest import MINI
    plain = MINI + "branches:\n  aux: {from: relu1, nodes: [{name: c, op: copy_of, module: conv1}, {name: fc, op: fc, out: 3}]}\n"
    (tmp_path / "plain.yaml").write_text(plain + "losses: {main: {head: main}, aux: {head: aux}}\n")
    err = error_of(compile_spec, tmp_path / "plain.yaml")
    assert "the spec has no `backbone:`" in err.what and err.pos.line == 9


def test_draw_collapses_by_submodule(tmp_path):
    net, _ = default_view(compile_spec(write(tmp_path)).network, "collapse")
    assert [n.name for n in net if n.branch is None] == ["conv1", "relu", "layer1", "layer2", "adaptive_avg_pool2d",
                                                           "flatten", "fc"]
    assert net.nodes["aux1.conv"].inputs == ("layer1",) and '"layer1" -> "layer2"' in to_dot(net)


def test_probe_cascade_and_time_run_on_a_backbone_spec(tmp_path):
    spec = write(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["time", "--allow-custom", str(spec)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["probe", "--allow-custom", str(spec), "--iters", "2", "--out", str(tmp_path / "p")]) == 0
        assert cli.main(["export", "--allow-custom", str(spec), "--random-init", "--cascade", str(tmp_path / "c")]) == 0
    assert (tmp_path / "p" / "probe.json").exists()
    assert sorted(p.name for p in (tmp_path / "c").glob("*.onnx")) == ["00_aux2.onnx", "01_aux1.onnx", "02_main.onnx",
                                                                       "anytime.onnx", "full.onnx"]
    rows = {line.split()[0]: line.split()[1] for line in printed.getvalue().splitlines() if line.startswith("layer1.0.")}
    assert rows["layer1.0.add"] == "add" and rows["layer1.0.conv1"] == "Conv2d"  # the traced calls, by their names


def test_init_from_loads_a_plain_state_dict(tmp_path):
    plain = TinyResNet(4)
    torch.save(plain.state_dict(), tmp_path / "weights.pth")
    spec = write(tmp_path, text=SPEC + f"init: {{{{from: {tmp_path / 'weights.pth'}}}}}\n")
    result = train(compile_spec(spec, ["train.epochs=1", "train.lr_mult=0"]))
    assert torch.equal(result.model.state_dict()["layer1.0.conv1.weight"], plain.state_dict()["layer1.0.conv1.weight"])


def test_the_shipped_example_deploys_exactly_its_module(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    compiled = compile_spec("specs/dks_userresnet_fmnist.yaml")
    spec = importlib.util.spec_from_file_location("shipped_resnet", "specs/models/resnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = module.ResNet(depth=20, width=8, classes=10, channels=1)
    deployed = prune(compiled.module, "main")
    assert sorted(deployed.state_dict()) == sorted(plain.state_dict())
    plain.load_state_dict(deployed.state_dict(), strict=True)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(deployed.eval()(x), plain.eval()(x))


class Numbered(torch.nn.Module):
    """Leaves whose names end in _<digits>, one called twice, and calls that fx counts globally."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv_1 = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.conv_2 = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.fc_1 = torch.nn.Linear(2, classes)

    def forward(self, x):
        x = torch.relu(self.conv_1(x))
        x = torch.relu(self.conv_2(x)) + torch.relu(self.conv_2(x))
        return self.fc_1(x.mean((2, 3)))


def test_names_are_unique_and_a_modules_path_is_kept(tmp_path, monkeypatch):
    import backbone_models
    monkeypatch.setattr(backbone_models, "Numbered", Numbered, raising=False)
    text = SPEC.split("branches:")[0].replace('{{python: "{models}:{cls}"', '{{module: "backbone_models:Numbered"')
    net = compile_spec(write(tmp_path, text=text + "data: {{source: npz, path: \"{data}\"}}\n")).network
    names = [n.name for n in net]
    assert names == ["conv_1", "relu", "conv_2", "relu_1", "conv_2_1", "relu_2", "add", "mean", "fc_1"]
    assert [n.name for n in net if n.op.weighted] == ["conv_1", "conv_2", "fc_1"]  # conv_2's second call: no new layer


def test_spec_wide_multipliers_reach_every_backbone_parameter(tmp_path):
    from netspec.compiler.lower import param_groups
    text = SPEC.split("branches:")[0] + "data: {{source: npz, path: \"{data}\"}}\n"
    compiled = compile_spec(write(tmp_path, "Shared", text=text), ["train.lr_mult={weight: 2, bias: 3}"])
    groups = {name: (g["lr_mult"]) for g in param_groups(compiled.network, compiled.module) for name in g["names"]}
    assert groups == {"conv.weight": 2, "conv.bias": 3, "scale": 2, "fc.weight": 2, "fc.bias": 3}


def test_the_spec_hash_follows_the_modules_layers(tmp_path):
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "net.py"
    shutil.copy(MODELS, model)
    spec = write(tmp_path, models=Path("models/net.py"))
    before = compile_spec(spec).spec_hash
    assert compile_spec(spec).spec_hash == before
    model.write_text(model.read_text().replace("nn.Conv2d(cin, cout, 1, stride, bias=False)",
                                               "nn.Conv2d(cin, cout, 1, stride, bias=True)"))
    assert compile_spec(spec).spec_hash != before


@pytest.mark.parametrize("extra, message", [
    ("nodes:\n  - {{name: fc2, op: fc, out: 4}}\n", "either as `nodes:`"),
    ("output: layer1\n", "delete `output:`"),
])
def test_a_backbone_is_nodes_or_a_module_not_both(tmp_path, extra, message):
    text = SPEC.split("branches:")[0] + extra + "data: {{source: npz, path: \"{data}\"}}\n"
    err = error_of(compile_spec, write(tmp_path, text=text))
    assert message in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("folder", ["netspec", "compiler", "torch"])
def test_the_users_frame_is_named_whatever_their_folder_is_called(tmp_path, folder):
    """The user's line in an untraceable module is found by where netspec and torch are installed, not by folder
    names: a checkout called netspec/ (or compiler/, torch/) is still the user's code."""
    (tmp_path / folder).mkdir()
    shutil.copy(MODELS, tmp_path / folder / "models.py")
    text = SPEC.split("branches:")[0] + "data: {{source: npz, path: \"{data}\"}}\n"
    err = error_of(compile_spec, write(tmp_path, "Gated", text=text, models=tmp_path / folder / "models.py"))
    assert "'gate' (Gate)" in err.what and " at models.py:" in err.what
