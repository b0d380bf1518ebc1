"""A prototxt or solver netspec cannot import is a `file:line: what — fix` error, exit 2, never a traceback;
and the solver's settings become `train:` (iterations → epochs with --train-size, else train.max_steps)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caffe_fixtures import ALEXNET  # noqa: E402

from netspec.cli import main  # noqa: E402
from netspec.solver import ExpLR, InvLR  # noqa: E402

BASE = """\
name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }
"""


def edit(line: int, old: str, new: str):
    def apply(lines: list[str]) -> list[str]:
        assert old in lines[line - 1], (line, old)
        lines[line - 1] = lines[line - 1].replace(old, new)
        return lines
    return apply


def append(text: str):
    return lambda lines: lines + text.splitlines()


# (case, edit, line of the error, what the message says)
CASES = [
    ("syntax: no colon", edit(9, "num_output:", "num_output"), 9, "expected ':' after 'num_output'"),
    ("syntax: stray character", edit(7, 'bottom: "data"', 'bottom: @"data"'), 7, "unexpected character '@'"),
    ("syntax: unterminated string", edit(5, 'name: "conv1"', 'name: "conv1'), 5, "unexpected character"),
    ("syntax: unclosed message", edit(10, "}", ""), 11, "'layer' inside the layer opened on line 4 — is that "
     "layer's closing '}' missing?"),
    ("syntax: unclosed at the end", edit(13, "num_output: 3 } }", "num_output: 3 }"), 13, "not closed"),
    ("syntax: extra brace", edit(11, 'top: "conv1" }', 'top: "conv1" } }'), 11, "unexpected '}'"),
    ("syntax: value missing", edit(9, "num_output: 4", "num_output: }"), 9, "expected a value for 'num_output'"),
    ("unknown layer", edit(6, "Convolution", "Convolutoin"), 6, "did you mean 'Convolution'"),
    ("unknown layer with a neighbour", edit(6, "Convolution", "Deconvolution"), 6, "closest netspec op: conv"),
    ("unsupported loss", append('layer { name: "l2" type: "EuclideanLoss" bottom: "fc" bottom: "fc" top: "l2" }'),
     14, "'l2' has type 'EuclideanLoss'"),
    ("dangling bottom", edit(7, '"data"', '"dat"'), 7, "reads bottom 'dat', which no layer before it produces"),
    ("dangling bottom later", edit(13, 'bottom: "pool1"', 'bottom: "pool2"'), 13, "did you mean 'pool1'"),
    ("unknown field", edit(9, "kernel_size", "kernal_size"), 9, "unknown field 'kernal_size' in ConvolutionParameter"),
    ("unknown layer field", edit(5, "name:", "nmae:"), 5, "unknown field 'nmae' in layer — did you mean 'name'"),
    ("unknown top-level field", edit(1, "name:", "nam:"), 1, "unknown field 'nam' in NetParameter"),
    ("number expected", edit(9, "num_output: 4", 'num_output: "4"'), 9, "'num_output' takes a number"),
    ("enum value", edit(12, "pool: MAX", "pool: MEAN"), 12, "'pool' must be one of MAX, AVE, STOCHASTIC"),
    ("no kernel", edit(9, " kernel_size: 3", ""), 4, "convolution 'conv1' has no kernel_size"),
    ("LRN within channel", append('layer { name: "n" type: "LRN" bottom: "pool1" top: "n"\n'
                                  "  lrn_param { norm_region: WITHIN_CHANNEL } }"), 15, "WITHIN_CHANNEL"),
    ("pooling rounding differs", edit(12, "kernel_size: 2 stride: 2", "kernel_size: 1 stride: 4"), 12,
     "their rounding differs"),
    ("pooling pad beyond half the kernel", edit(12, "kernel_size: 2 stride: 2", "kernel_size: 3 stride: 2 pad: 2"), 12, "more than half its kernel"),
    ("two inputs", edit(2, 'input: "data"', 'input: "data"\ninput: "extra"'), 2, "the net has 2 inputs"),
    ("V1 and V2 mixed", append('layers { name: "r" type: RELU bottom: "fc" top: "fc" }'), 14, "mixes `layer`"),
]


@pytest.mark.parametrize("case, change, line, message", CASES, ids=[c[0] for c in CASES])
def test_malformed_prototxt_is_a_one_line_error_at_its_line(tmp_path, capsys, case, change, line, message):
    net = tmp_path / "net.prototxt"
    net.write_text("\n".join(change(BASE.splitlines())) + "\n")
    code = main(["import-caffe", str(net), "-o", str(tmp_path / "x.yaml")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{net}:{line}: "), err
    assert message in err, err
    assert not (tmp_path / "x.yaml").exists()


def test_the_base_of_the_malformed_cases_imports(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(BASE)
    assert main(["import-caffe", str(net), "-o", str(tmp_path / "x.yaml")]) == 0


def test_text_format_variants_read_alike(tmp_path):
    """Comments, `<...>` messages, separators, enums as numbers, V1 types as numbers, optional colons."""
    text = (BASE.replace("layer {\n  name:", "layer <\n  name # the first conv\n  :", 1).replace("\n}\n", "\n>\n", 1)
            .replace("pool: MAX", "pool: 0;").replace('inner_product_param {', 'inner_product_param: {'))
    net = tmp_path / "net.prototxt"
    net.write_text("# a comment line\n" + text)
    assert main(["import-caffe", str(net), "-o", str(tmp_path / "x.yaml")]) == 0
    nodes = yaml.safe_load((tmp_path / "x.yaml").read_text())["nodes"]
    assert [n["op"] for n in nodes] == ["conv", "relu", "maxpool", "fc"]


def test_a_data_layer_without_a_known_shape_asks_for_input_shape(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    data = 'layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 8 } }\n'
    net.write_text(data + BASE.split("\n", 3)[3])
    assert main(["import-caffe", str(net), "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{net}:1: ") and "--input-shape C,H,W" in err
    assert main(["import-caffe", str(net), "-o", str(tmp_path / "x.yaml"), "--input-shape", "3,16,16"]) == 0
    assert yaml.safe_load((tmp_path / "x.yaml").read_text())["input"]["shape"] == [3, 16, 16]


# --- the solver ---------------------------------------------------------------------------------

SOLVER = """\
net: "train_val.prototxt"
test_iter: 1000
test_interval: 1000
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 100000
max_iter: 450000
momentum: 0.9
weight_decay: 0.0005
snapshot_prefix: "models/alexnet"
solver_mode: GPU
"""


def run_import(tmp_path, solver: str, *flags: str) -> tuple[int, dict | None]:
    (tmp_path / "net.prototxt").write_text(ALEXNET)
    (tmp_path / "solver.prototxt").write_text(solver)
    out = tmp_path / "x.yaml"
    code = main(["import-caffe", str(tmp_path / "net.prototxt"), "--solver", str(tmp_path / "solver.prototxt"),
                 "-o", str(out), *flags])
    return code, yaml.safe_load(out.read_text())["train"] if code == 0 else None


def test_solver_with_the_data_size_counts_epochs(tmp_path):
    code, train = run_import(tmp_path, SOLVER, "--train-size", "1281167")  # ImageNet: 5004.6 iterations of 256
    assert code == 0
    assert train["epochs"] == 90 and train["batch_size"] == 256 and "max_steps" not in train
    assert train["optimizer"] == {"type": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}
    assert train["lr_schedule"] == {"type": "step", "step_size": 20, "gamma": 0.1}
    multi = SOLVER.replace('"step"', '"multistep"').replace("stepsize: 100000", "stepvalue: 150000\nstepvalue: 300000")
    assert run_import(tmp_path, multi, "--train-size", "1281167")[1]["lr_schedule"]["milestones"] == [30, 60]


def test_solver_without_the_data_size_keeps_iterations(tmp_path, capsys):
    code, _ = run_import(tmp_path, SOLVER)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"{tmp_path / 'solver.prototxt'}:7: ") and "--train-size N" in err
    code, train = run_import(tmp_path, SOLVER.replace('"step"', '"poly"').replace("gamma: 0.1", "power: 0.5"))
    assert code == 0 and train["max_steps"] == 450000 and "epochs" not in train
    assert train["lr_schedule"] == {"type": "poly", "power": 0.5}


@pytest.mark.parametrize("policy", ["inv", "exp"])
def test_inv_and_exp_give_caffes_rate_at_every_iteration(tmp_path, policy):
    gamma = {"inv": 0.0001, "exp": 0.99999}[policy]
    solver = SOLVER.replace('"step"', f'"{policy}"').replace("gamma: 0.1", f"gamma: {gamma}\npower: 0.75")
    code, train = run_import(tmp_path, solver, "--train-size", "25600")  # 100 iterations of 256 per epoch
    assert code == 0
    schedule = train["lr_schedule"]
    netspec = (InvLR if policy == "inv" else ExpLR)(**schedule)
    for iteration in (0, 50, 100, 1234):
        caffe = (1 + gamma * iteration) ** -0.75 if policy == "inv" else gamma ** iteration
        assert netspec.factor(iteration / 100, 10, 0.01) == pytest.approx(caffe, rel=1e-6)


@pytest.mark.parametrize("change, line, message", [
    (('lr_policy: "step"', 'lr_policy: "sigmoid"'), 5, "lr_policy 'sigmoid' has no netspec counterpart"),
    (("momentum: 0.9", "momentom: 0.9"), 9, "unknown field 'momentom' in SolverParameter — did you mean 'momentum'"),
    (("base_lr: 0.01", 'type: "AdaDelta"\nbase_lr: 0.01'), 4, "solver type 'ADADELTA'"),
    (("base_lr: 0.01", "base_lr: fast"), 4, "'base_lr' takes a number"),
])
def test_solver_errors_name_their_line(tmp_path, capsys, change, line, message):
    code, _ = run_import(tmp_path, SOLVER.replace(*change), "--train-size", "1281167")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"{tmp_path / 'solver.prototxt'}:{line}: ") and message in err, err
    assert "Traceback" not in err


def test_adam_and_nesterov_solvers(tmp_path):
    adam = SOLVER.replace("momentum: 0.9", 'type: "Adam"\nmomentum: 0.9\nmomentum2: 0.995')
    train = run_import(tmp_path, adam, "--train-size", "1281167")[1]
    assert train["optimizer"] == {"type": "adam", "lr": 0.01, "betas": [0.9, 0.995], "weight_decay": 0.0005}
    nesterov = SOLVER.replace("momentum: 0.9", 'type: "Nesterov"\nmomentum: 0.9')
    assert run_import(tmp_path, nesterov, "--train-size", "1281167")[1]["optimizer"]["nesterov"] is True


def test_max_steps_ends_the_run_after_that_many_steps(tmp_path, monkeypatch):
    """Caffe's max_iter without a data size: train.max_steps, honoured by `netspec train`."""
    from netspec.compiler import compile_spec
    from netspec.runtime.checkpoint import load_checkpoint
    from netspec.runtime.train import train

    monkeypatch.chdir(tmp_path)
    net = BASE.replace("dim: 3 dim: 16 dim: 16", "dim: 1 dim: 8 dim: 8").replace("num_output: 3", "num_output: 2")
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text("base_lr: 0.01\nlr_policy: \"fixed\"\nmax_iter: 5\nmomentum: 0.9\n")
    assert main(["import-caffe", str(tmp_path / "net.prototxt"), "--solver", str(tmp_path / "solver.prototxt"),
                 "-o", str(tmp_path / "x.yaml")]) == 0
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (16, 8, 8), np.uint8), y_train=rng.integers(0, 2, 16),
             x_test=rng.integers(0, 256, (8, 8, 8), np.uint8), y_test=rng.integers(0, 2, 8))
    torch.set_num_threads(1)
    result = train(compile_spec(tmp_path / "x.yaml", ["data={source: npz, path: d.npz}", "train.batch_size=4",
                                                       "train.device=cpu"]))
    state = load_checkpoint(result.run / "checkpoints" / "last.pt")
    assert state["step"] == 5 and state["epoch"] == 2  # 4 steps an epoch: 4 + 1
