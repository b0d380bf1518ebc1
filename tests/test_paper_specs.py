"""The paper specs against hand-written PyTorch models (tests/reference_models.py) and the papers' / released
files' numbers: parameter counts, exits, multipliers, init, grad_scale, recipes. Shapes and counts come from
`analyse()` (meta device, no weights) so the 20-90M-parameter nets stay fast; one forward check lowers CNDS-8."""
from __future__ import annotations

import re

import pytest
import torch

from netspec.compiler import analyse, compile_spec
from netspec.compiler.lower import node_init
from netspec.ops import Gaussian, multipliers
from netspec.schedules import CNDSSchedule
from reference_models import CNDS8, CNDS13, CifarResNet, MWBPPreResNet, mwbp_gammas


def counts(path: str, overrides=()) -> dict[str, int]:
    """deploy / train / every branch alone / every exit model, from the compiled network."""
    _, net = analyse(path, list(overrides))
    out = {"deploy": sum(net.nodes[n].params for n in net.ancestry("main")),
           "train": sum(n.params for n in net)}
    for head in net.heads:
        if head != "main":
            out[head] = sum(n.params for n in net if n.branch == head)
            out[f"exit_{head}"] = sum(net.nodes[n].params for n in net.ancestry(head))
    return out


def meta(cls, *args, **kwargs):
    with torch.device("meta"):
        return cls(*args, **kwargs).param_counts()


# --- CNDS (paper 000_*; released lwwang/Places_CNDS_model train_val.prototxt) --------------------------------

def test_cnds8_places_deploy_and_branch_are_the_released_nets_counts():
    got = counts("specs/cnds8_places.yaml")
    assert got["deploy"] == 60_407_885 and got["aux1"] == 12_352_781
    ref = meta(CNDS8, 205)
    assert (got["deploy"], got["aux1"], got["exit_aux1"], got["train"]) == \
        (ref["deploy"], ref["branch"], ref["exit_aux1"], ref["train"]) == (60_407_885, 12_352_781, 13_321_357, 72_760_666)


def test_cnds8_imagenet_and_cnn8():
    got = counts("specs/cnds8.yaml")
    ref = meta(CNDS8, 1000)
    assert (got["deploy"], got["aux1"], got["exit_aux1"], got["train"]) == \
        (ref["deploy"], ref["branch"], ref["exit_aux1"], ref["train"]) == (63_665_000, 13_167_656, 14_136_232, 76_832_656)
    cnn8 = counts("specs/cnn8.yaml")
    assert cnn8 == {"deploy": 63_665_000, "train": 63_665_000}  # CNDS-8 without its branch


def test_cnds8_shapes_are_caffes_ceil_pooling_at_227():
    _, net = analyse("specs/cnds8.yaml")
    assert net.shape("relu3_2") == (256, 28, 28)  # the branch tap (issue 9: "256×28×28 at 227 input")
    assert net.shape("pool5") == (512, 4, 4) and net.shape("aux1.pool") == (256, 13, 13)
    assert net.shape("conv1") == (64, 112, 112)


def test_cnds13_against_the_reference():
    got = counts("specs/cnds13.yaml")
    ref = meta(CNDS13, 1000)
    assert {k: got[k] for k in ref} == ref
    assert (ref["deploy"], ref["train"], ref["aux1"], ref["aux2"], ref["aux3"]) == \
        (73_694_312, 93_700_320, 13_167_656, 4_467_752, 2_370_600)
    spec, net = analyse("specs/cnds13.yaml")
    convs = [n.name for n in net if n.op.op == "conv" and n.branch is None]
    assert len(convs) == 13 and convs[0] == "conv1"
    taps = {b: net.nodes[net.attach_point(b)].inputs[0] for b in ("aux1", "aux2", "aux3")}
    assert [convs.index(taps[b]) + 1 for b in ("aux1", "aux2", "aux3")] == [4, 7, 10]  # paper section 2
    assert spec.train.epochs == 67 and spec.train.batch_size == 128  # paper section 3.1


@pytest.mark.parametrize("path", ["specs/cnds8.yaml", "specs/cnds8_places.yaml", "specs/cnds13.yaml"])
def test_cnds_multipliers_init_and_alpha(path):
    """prototxt: blobs_lr 1, 2 and weight_decay 1, 0 on every layer; gaussian std 0.01 everywhere; biases
    conv1 0.5, other convs 0.1, fc6/fc7 (and branch fc1/fc2) 1, fc8 (and branch classifier) 0. Paper: α₀ 0.3, eq. (2)."""
    spec, net = analyse(path)
    weighted = [n for n in net if n.op.weighted]
    for node in weighted:
        train = spec.train
        assert multipliers(node.op, train.lr_mult, train.decay_mult, "weight") == (1, 1), node.name
        assert multipliers(node.op, train.lr_mult, train.decay_mult, "bias") == (2, 0), node.name
        weight, bias = node_init(node.op, spec.init)
        assert isinstance(weight, Gaussian) and (weight.mean, weight.std) == (0, 0.01), node.name
        if node.name == "conv1":
            want = 0.5
        elif node.op.op == "conv":
            want = 0.1
        elif node.op.out == spec.classes:
            want = 0
        else:
            want = 1
        assert bias == want, node.name
    aux = [loss for name, loss in spec.losses.items() if name != "main"]
    assert aux and all(loss.weight == 0.3 and isinstance(loss.schedule, CNDSSchedule) for loss in aux)
    assert "loss_weight: 0.4" in open("specs/cnds8.yaml").read()  # the released value, said next to α₀ = 0.3
    if "places" in path:
        assert (spec.classes, spec.train.batch_size) == (205, 256)


def test_cnds8_places_computes_what_the_reference_computes():
    """The compiled net with the reference's weights gives the reference's outputs (main and branch)."""
    c = compile_spec("specs/cnds8_places.yaml")
    ref = CNDS8(205)
    ours = [p for name, p in c.module.named_parameters()]
    theirs = list(ref.features_to_tap.parameters()) + list(ref.features_rest.parameters()) + \
        list(ref.classifier.parameters()) + list(ref.branch.parameters())
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in theirs]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    c.module.eval(), ref.train()  # dropout off in ours; the reference returns the branch only in train mode
    for m in ref.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.randn(1, 3, 227, 227, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = c.module(x)
        main, aux = ref(x)
    torch.testing.assert_close(out["main"], main, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["aux1"], aux, rtol=1e-4, atol=1e-5)


def test_eq2_falls_below_one_percent_by_epoch_23_of_65():
    factor = CNDSSchedule(type="cnds").factor
    assert factor(22, 65, 1) > 0.01 > factor(23, 65, 1)


# --- ResNets with DKS heads (paper 002_*; heads: DHM's code) -----------------------------------------------

@pytest.mark.parametrize("depth, n, dks, plain", [
    (32, 5, "specs/dks_resnet32.yaml", "specs/resnet32.yaml"),
    (110, 18, "specs/dks_resnet110.yaml", "specs/resnet110.yaml"),
    (1202, 200, "specs/dks_resnet1202.yaml", "specs/resnet1202.yaml"),
])
def test_cifar_resnets_and_their_dks_heads(depth, n, dks, plain):
    ref = meta(CifarResNet, depth, 100, CifarResNet.DHM_HEADS[depth])
    got = counts(dks)
    assert {k: got[k] for k in ref} == ref
    assert counts(plain) == {"deploy": ref["deploy"], "train": ref["deploy"]}
    expected = {32: (470_004, 2_147_644), 110: (1_733_812, 7_770_108), 1202: (19_427_124, 87_652_092)}[depth]
    assert (ref["deploy"], ref["train"]) == expected
    if depth == 1202:
        assert ref["aux2"] == 58_987_108 > 3 * ref["deploy"]  # DHM's deep head: large, as the spec says


@pytest.mark.parametrize("path", ["specs/dks_resnet32.yaml", "specs/dks_resnet110.yaml", "specs/dks_resnet1202.yaml",
                                  "specs/ds_resnet32.yaml", "specs/resnet32.yaml"])
def test_dks_recipe_is_section_4_1(path):
    """SGD momentum 0.9 (no Nesterov), batch 64, wd 1e-4, 200 epochs, lr 0.1 ÷ 10 every 60 epochs."""
    train = analyse(path)[0].train
    opt, lr = train.optimizer, train.lr_schedule
    assert (opt.type, opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.1, 0.9, False, 1e-4)
    assert (train.batch_size, train.epochs) == (64, 200)
    assert [lr.factor(e, 200, 0.1) for e in (0, 59, 60, 119, 120, 180)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001])


def test_dks_synergy_is_the_official_smoothed_kl_by_default():
    spec, _ = analyse("specs/dks_resnet32.yaml")
    loss = spec.losses["synergy"]
    assert (loss.smoothing, loss.beta, loss.direction, loss.temperature) == (1e-8, 1, "bidirectional", 1)


# --- MW-BP (tanmingkui/multiwaybp, multiwaybp-pytorch) ------------------------------------------------------

def block_index(name: str, n: int = 9) -> int:
    """`stage2.3` → block 13: blocks counted from 1 in forward order, as aux_trainer._network_split does."""
    stage, copy = re.fullmatch(r"stage(\d)\.(\d+)", name).groups()
    return (int(stage) - 1) * n + int(copy) + 1


def test_mwbp_exits_sit_after_blocks_8_13_18_23_with_the_reference_counts():
    spec, net = analyse("specs/mwbp_resnet56.yaml")
    assert [block_index(spec.branches[e].from_) for e in ("exit8", "exit13", "exit18", "exit23")] == [8, 13, 18, 23]
    ref = meta(MWBPPreResNet, 56, 10, shortcut="A")
    got = counts("specs/mwbp_resnet56.yaml")
    assert got["deploy"] == ref["deploy"] == 853_018
    for p in (8, 13, 18, 23):
        assert got[f"exit_exit{p}"] == ref[f"exit_model_{p}"], p
        assert got[f"exit{p}"] == ref[f"exit{p}"], p
    assert got["train"] == ref["train"]
    # the authors' 1x1-conv shortcuts are the one parameter difference (documented in the spec)
    assert meta(MWBPPreResNet, 56, 10, shortcut="conv")["deploy"] - ref["deploy"] == 2_560
    assert net.depth["main"] == 56 and spec.classes == 10


def test_mwbp_gamma_and_cumulative_gamma_are_the_codes_values():
    gammas = mwbp_gammas((8, 13, 18, 23))
    assert [round(g, 4) for g, _ in gammas.values()] == [0.1308, 0.33, 0.6197, 1.0]
    assert [round(G, 4) for _, G in gammas.values()] == [2.0806, 1.9498, 1.6197, 1.0]


# MW-BP's rule on ResNet-56 (the code's pivots) and on the CPU-sized ResNet-20 of docs/reproduction.md (ours)
MWBP_NETS = [("specs/mwbp_resnet56.yaml", (8, 13, 18, 23), 9), ("specs/mwbp_resnet20_fmnist.yaml", (3, 4, 6, 8), 3)]


@pytest.mark.parametrize("path, pivots, n", MWBP_NETS)
def test_mwbp_exits_sit_after_their_blocks_with_grad_scale_gamma_over_cumulative_gamma(path, pivots, n):
    spec, net = analyse(path)
    gammas = mwbp_gammas(pivots)
    assert sorted(h for h in net.heads if h != "main") == sorted(f"exit{p}" for p in pivots)
    for p, (g, G) in gammas.items():
        assert block_index(spec.branches[f"exit{p}"].from_, n) == p
        assert spec.branches[f"exit{p}"].grad_scale == pytest.approx(g / G, abs=1e-6), p
    for loss in spec.losses.values():
        assert loss.weight == 1 and loss.schedule.type == "constant" and loss.type == "cross_entropy"


@pytest.mark.parametrize("path, pivots, n", MWBP_NETS)
def test_mwbp_decay_multipliers_reproduce_the_per_exit_optimizers_weight_decay(path, pivots, n):
    """Each exit's optimizer decays the backbone before it at lr/Γ_p; with one optimizer that is
    decay_mult = 1 + Σ_{exits p ≥ block} 1/Γ_p on every tensor of the block (and the stem); heads 1."""
    spec, net = analyse(path)
    gammas = mwbp_gammas(pivots)
    train = spec.train
    for node in net:
        if not node.params:
            continue
        decay = multipliers(node.op, train.lr_mult, train.decay_mult, "weight")[1]
        assert multipliers(node.op, train.lr_mult, train.decay_mult, "weight")[0] == 1
        if node.branch or node.name.startswith("head."):
            want = 1.0
        else:
            block = 0 if node.name == "conv1" else block_index(".".join(node.name.split(".")[:2]), n)
            want = 1 + sum(1 / G for p, (_, G) in gammas.items() if block <= p)
        assert decay == pytest.approx(want, abs=1e-5), node.name
    if n != 9:
        return
    opt, lr = train.optimizer, train.lr_schedule
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == (0.1, 0.9, True, 1e-4)
    assert (train.epochs, train.batch_size, lr.milestones, lr.gamma) == (400, 128, [160, 240], 0.1)


def test_the_plain_preact_resnet56_is_the_mwbp_backbone_without_exits_or_extra_decay():
    spec, net = analyse("specs/preresnet56_fmnist.yaml")
    mw_spec, mw = analyse("specs/mwbp_resnet56.yaml", ["vars.w=8", "input.shape=[1, 28, 28]", "input.mean=[0.286]",
                                                      "input.std=[0.353]"])
    assert list(net.heads) == ["main"] and net.depth["main"] == 56
    assert sum(n.params for n in net) == sum(mw.nodes[n].params for n in mw.ancestry("main"))
    train = spec.train
    assert {multipliers(n.op, train.lr_mult, train.decay_mult, "weight") for n in net if n.params} == {(1.0, 1.0)}
    assert analyse("specs/preresnet56_fmnist.yaml", ["vars.n=3"])[1].depth["main"] == 20


def test_the_simple_dks_heads_are_gap_and_two_fc_on_the_same_attach_points():
    """DKS Table 3's simplest auxiliary classifier, AP+2FC, on dks_resnet20_fmnist's attach points."""
    spec, net = analyse("specs/dks_resnet20_simple_fmnist.yaml")
    designed, _ = analyse("specs/dks_resnet20_fmnist.yaml")
    for head in ("aux1", "aux2"):
        assert [n.op.op for n in net if n.branch == head] == ["gap", "fc", "relu", "fc"]
        assert spec.branches[head].from_ == designed.branches[head].from_
    assert "synergy" in spec.losses and "synergy" not in analyse("specs/ds_resnet20_simple_fmnist.yaml")[0].losses
