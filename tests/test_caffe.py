"""`netspec import-caffe`: Caffe nets (V1 and V2) come in as specs that compile, with the parameter count of
the same net written by hand in PyTorch; a .caffemodel comes in as a checkpoint giving the same logits."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caffe_fixtures import (ALEXNET, BN_NET, CNDS8, CNDS8_V1, GOOGLENET, BNNet, GoogLeNetLike,  # noqa: E402
                            alexnet_torch, caffemodel, randomise)

from netspec.cli import main  # noqa: E402
from netspec.compiler.caffe import import_caffe  # noqa: E402
from netspec.compiler.draw import to_dot  # noqa: E402
from netspec.runtime.checkpoint import load_checkpoint, load_weights  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def imported(tmp_path: Path, text: str, name: str, **kw):
    net = tmp_path / f"{name}.prototxt"
    net.write_text(text)
    return import_caffe(net, tmp_path / f"{name}.yaml", **kw)


def test_alexnet_with_grouped_convs_has_bvlc_alexnets_60965224_parameters(tmp_path):
    result = imported(tmp_path, ALEXNET, "alexnet")
    assert params(result.compiled.module) == params(alexnet_torch()) == 60_965_224
    spec = result.compiled.spec
    assert spec.input.shape == (3, 227, 227) and spec.classes == 1000 and list(result.compiled.heads) == ["main"]
    nodes = {n.name: n for n in spec.nodes}
    assert nodes["conv2"].groups == 2 and nodes["conv4"].groups == 2 and nodes["conv3"].groups == 1
    assert nodes["relu1"].op == "relu" and nodes["pool1"].ceil  # in-place ReLU: a node of its own; Caffe rounding
    assert spec.data.augment.flip and spec.train.batch_size == 256
    text = result.spec_path.read_text()
    assert text.startswith("# Imported from alexnet.prototxt") and "train_lmdb" in text
    assert "accuracy" not in yaml.safe_load(text)["nodes"]  # Accuracy is TEST-only and dropped anyway


def test_cnds8_like_v1_net_with_a_dsn_branch(tmp_path):
    result = imported(tmp_path, CNDS8_V1, "cnds8")
    compiled = result.compiled
    assert params(compiled.module) == params(CNDS8())
    assert list(compiled.heads) == ["main", "ss_loss"]
    branch = compiled.spec.branches["ss_loss"]
    # the in-place ReLU of conv3_2 ran before the branch reads the blob: the branch leaves after relu3_2
    assert branch.from_ == "relu3_2" and [n.name for n in branch.nodes][0] == "ss_pool"
    assert compiled.network.nodes["ss_loss.ss_pool"].inputs == ("relu3_2",)
    losses = compiled.spec.losses
    assert losses["main"].weight == 1.0 and losses["ss_loss"].weight == 0.3
    assert "ss_loss.ss_fc2.weight" in compiled.module.state_dict()  # branch parameters are qualified by the branch


def test_googlenet_like_v2_net_with_two_auxiliary_losses(tmp_path):
    result = imported(tmp_path, GOOGLENET, "googlenet")
    compiled = result.compiled
    assert params(compiled.module) == params(GoogLeNetLike())
    assert list(compiled.heads) == ["main", "loss1", "loss2"]
    spec = compiled.spec
    assert spec.branches["loss1"].from_ == "inception_4a_output"
    assert spec.branches["loss2"].from_ == "inception_4b_output"
    assert {k: v.weight for k, v in spec.losses.items()} == {"main": 1.0, "loss1": 0.3, "loss2": 0.3}
    ops = {n.name: n.op for n in spec.nodes}
    assert ops["inception_3a_output"] == "concat" and ops["pool1_norm1"] == "lrn"
    assert ops["pool5_7x7_s1"] == "avgpool" and ops["pool5_drop_7x7_s1"] == "dropout"
    text = result.spec_path.read_text()
    assert "Caffe 'conv1/7x7_s2'" in text  # renamed layers say what they were


def test_batchnorm_and_scale_fold_into_one_batchnorm_node(tmp_path):
    result = imported(tmp_path, BN_NET, "bn")
    compiled = result.compiled
    assert params(compiled.module) == params(BNNet())
    nodes = {n.name: n for n in compiled.spec.nodes}
    assert "scale1" not in nodes and nodes["bn1"].op == "batchnorm" and nodes["bn1"].affine
    assert nodes["bn2a"].eps == 1e-3
    assert nodes["sum2"].op == "eltwise" and nodes["sum2"].coeff == [1.0, 0.5, -0.25]
    assert (nodes["prod2"].operation, nodes["max2"].operation) == ("prod", "max")
    assert nodes["relu1"].op == "leaky_relu" and nodes["relu1"].slope == 0.1
    assert nodes["conv2a"].kernel == (3, 1) and nodes["conv2a"].pad == (1, 0) and nodes["conv2b"].dilation == 2
    assert list(compiled.heads) == ["main", "gloss"] and compiled.spec.branches["gloss"].from_ == "pool2"
    # the new ops (eltwise, sigmoid, tanh) count FLOPs as torch does
    from torch.utils.flop_counter import FlopCounterMode
    from netspec.compiler.summary import summarise
    with FlopCounterMode(display=False) as counter:
        compiled.module.eval()(torch.zeros(1, *compiled.spec.input.shape))
    assert summarise(compiled.network)["train"]["flops"] == counter.get_total_flops()


@pytest.mark.parametrize("name, text, model, v1", [
    ("bn", BN_NET, BNNet, False),
    ("cnds8", CNDS8_V1, CNDS8, True),
])
def test_caffemodel_round_trip_gives_the_pytorch_models_logits(tmp_path, name, text, model, v1):
    torch_model = randomise(model())
    weights = tmp_path / f"{name}.caffemodel"
    weights.write_bytes(caffemodel(torch_model.caffe_blobs(), v1=v1))
    result = imported(tmp_path, text, name, weights=weights)
    assert result.checkpoint == tmp_path / f"{name}.pt" and not result.unused_blobs
    state = load_checkpoint(result.checkpoint)  # what eval, export and init.from read (weights_only)
    assert state["spec_hash"] == result.compiled.spec_hash and state["spec_name"] == name
    module = result.compiled.module.eval()
    load_weights(module, state["model"], result.checkpoint)  # every tensor present, none extra
    x = torch.randn(4, *result.compiled.spec.input.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = module(x), torch_model(x)
    assert set(got) == set(want)
    for head in want:
        assert (got[head] - want[head]).abs().max().item() < 1e-5, head


def test_weights_of_another_net_are_refused_with_the_layer_named(tmp_path, capsys):
    (tmp_path / "bn.prototxt").write_text(BN_NET)
    blobs = randomise(BNNet()).caffe_blobs()
    blobs["fc"][0] = blobs["fc"][0][:, :10]
    del blobs["gfc"]
    (tmp_path / "w.caffemodel").write_bytes(caffemodel(blobs))
    code = main(["import-caffe", str(tmp_path / "bn.prototxt"), "--weights", str(tmp_path / "w.caffemodel"),
                 "-o", str(tmp_path / "bn.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "layer 'fc'" in err and "Traceback" not in err
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff\xff\xff")
    assert main(["import-caffe", str(tmp_path / "bn.prototxt"), "--weights", str(tmp_path / "junk.caffemodel"),
                 "-o", str(tmp_path / "bn.yaml")]) == 2
    assert "is not a Caffe model" in capsys.readouterr().err


def test_imported_branches_are_drawn_dashed_and_pruned_by_export(tmp_path, capsys):
    weights = tmp_path / "bn.caffemodel"
    weights.write_bytes(caffemodel(randomise(BNNet()).caffe_blobs()))
    result = imported(tmp_path, BN_NET, "bn", weights=weights)
    dot = to_dot(result.compiled.network)
    assert 'subgraph "cluster_gloss"' in dot and "style=dashed" in dot
    out = tmp_path / "bn.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # the imported checkpoint is what export deploys
        assert main(["export", str(result.spec_path), "--checkpoint", str(result.checkpoint), "--prune-aux",
                     str(out)]) == 0
    import onnx
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["main"]
    assert not [i.name for i in graph.initializer if "gloss" in i.name or "gfc" in i.name]


def test_the_command_prints_what_it_wrote(tmp_path, capsys):
    (tmp_path / "g.prototxt").write_text(GOOGLENET)
    assert main(["import-caffe", str(tmp_path / "g.prototxt"), "-o", str(tmp_path / "g.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'g.yaml'}" in out and "heads main, loss1, loss2" in out


def test_lr_mult_and_decay_mult_become_the_specs_multipliers(tmp_path):
    from netspec.compiler.lower import param_groups

    frozen = CNDS8_V1.replace("blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0", "blobs_lr: 0 blobs_lr: 0 "
                              "weight_decay: 1 weight_decay: 0", 1)  # V1: conv1 frozen
    compiled = imported(tmp_path, frozen, "cnds8").compiled
    train = compiled.spec.train
    assert (train.lr_mult.weight, train.lr_mult.bias, train.decay_mult.weight, train.decay_mult.bias) == (1, 2, 1, 0)
    groups = {name: (g["lr_mult"], g["decay_mult"]) for g in param_groups(compiled.network, compiled.module)
              for name in g["names"]}
    assert groups["conv1.weight"] == (0, 1) and groups["conv1.bias"] == (0, 0)
    assert groups["conv2.weight"] == (1, 1) and groups["ss_loss.ss_fc2.bias"] == (2, 0)
    # V2 `param { lr_mult decay_mult }`; a BatchNorm's Scale without param specs keeps 1 and 1 under any default
    text = BN_NET.replace('bias_term: false weight_filler { type: "msra" } } }',
                          'bias_term: false weight_filler { type: "msra" } }\n  param { lr_mult: 3 decay_mult: 0 } }')
    compiled = imported(tmp_path, text, "bn").compiled
    groups = {name: (g["lr_mult"], g["decay_mult"]) for g in param_groups(compiled.network, compiled.module)
              for name in g["names"]}
    assert groups["conv1.weight"] == (3, 0) and groups["bn1.weight"] == (1, 1) and groups["bn1.bias"] == (1, 1)
