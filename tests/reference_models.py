"""Hand-written plain-PyTorch reference models of the paper specs (no netspec imports), for
tests/test_paper_specs.py: each model's `param_counts()` pins the compiled spec against an independent
implementation, written from the papers and the authors' released files.

Sources (see report.md for the full table):
  CNDS-8 : lwwang/Places_CNDS_model train_val.prototxt / deploy.prototxt (the authors' released Places model),
           Caffe PoolingLayer (ceil rounding), CNDS paper (Wang et al. 2015) sections 2-3.
  CNDS-13: CNDS paper section 2 ("13-layer model", branches after the 4th, 7th, 10th conv) and section 3.1
           ("stride of 2 and filter size of 7 at the first layer"); Fig. 1 is not in our copy of the paper,
           so every layer size except the stem is OUR choice (see CNDS13 docstring).
  ResNet : He et al. 2016 CIFAR ResNet-6n+2, option A; DKS heads as in d-li14/DHM models/cifar/resnet.py.
  MW-BP  : tanmingkui/multiwaybp multiwaybp-pytorch/models/official/PreResNet.py, aux_classifier.py,
           aux_trainer.py, options.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def n_params(*modules: nn.Module) -> int:
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


# ----------------------------------------------------------------------------------------------- CNDS-8


class CNDS8(nn.Module):
    """Places/ImageNet CNDS-8 exactly as the released Places train_val.prototxt (Caffe V1).

    Backbone (deploy net = CNN-8): conv1 64 7x7/2 pad 1, ReLU, max-pool 3/2; conv2 128 3x3 pad 1, ReLU,
    max-pool 2/2; conv3_1, conv3_2 256; max-pool 2/2; conv4_1, conv4_2 512; max-pool 2/2; conv5_1, conv5_2
    512; max-pool 2/2; fc6 4096 ReLU dropout 0.5; fc7 4096 ReLU dropout 0.5; fc8 classes.
    Branch `DSN_conv3` taps conv3_2 after its in-place ReLU: avg-pool 5/2 -> 1x1 conv 64 (no ReLU) ->
    fc 1024 ReLU dropout -> fc 1024 ReLU dropout -> fc classes.
    Every pooling rounds up (Caffe); `ceil=False` gives the floor reading used to rule it out.
    Init as in the prototxt: weights N(0, 0.01); biases conv1 0.5, other convs 0.1, fc6/fc7 1, fc8 0,
    branch conv 0.1, branch fc 1, 1, 0.
    """

    def __init__(self, num_classes: int = 205, ceil: bool = True, input_size: int = 227):
        super().__init__()
        c = ceil
        self.features_to_tap = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=1), nn.ReLU(inplace=True),      # conv1, relu1
            nn.MaxPool2d(3, 2, ceil_mode=c),                                       # pool1
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True),               # conv2, relu2
            nn.MaxPool2d(2, 2, ceil_mode=c),                                       # pool2
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True),              # conv3_1, relu3_1
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),              # conv3_2, relu3_2 (tap)
        )
        self.features_rest = nn.Sequential(
            nn.MaxPool2d(2, 2, ceil_mode=c),                                       # pool3
            nn.Conv2d(256, 512, 3, padding=1), nn.ReLU(inplace=True),              # conv4_1
            nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(inplace=True),              # conv4_2
            nn.MaxPool2d(2, 2, ceil_mode=c),                                       # pool4
            nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(inplace=True),              # conv5_1
            nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(inplace=True),              # conv5_2
            nn.MaxPool2d(2, 2, ceil_mode=c),                                       # pool5
        )
        s = self.spatial(input_size, ceil)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * s["pool5"] ** 2, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),   # fc6
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),                    # fc7
            nn.Linear(4096, num_classes),                                                     # fc8
        )
        self.branch = nn.Sequential(
            nn.AvgPool2d(5, 2, ceil_mode=c),                                       # pool_DSN_conv3
            nn.Conv2d(256, 64, 1),                                                 # DSN_conv3 (no ReLU)
            nn.Flatten(),
            nn.Linear(64 * s["aux_pool"] ** 2, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),  # fc6_DSN_conv3
            nn.Linear(1024, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),                    # fc7_DSN_conv3
            nn.Linear(1024, num_classes),                                                     # fc8_DSN_conv3
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        convs = [m for m in self.features_to_tap.modules() if isinstance(m, nn.Conv2d)] + \
                [m for m in self.features_rest.modules() if isinstance(m, nn.Conv2d)]
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        bconv = [m for m in self.branch if isinstance(m, nn.Conv2d)]
        bfcs = [m for m in self.branch if isinstance(m, nn.Linear)]
        for m in convs + fcs + bconv + bfcs:
            nn.init.normal_(m.weight, 0.0, 0.01)
        for i, m in enumerate(convs):
            nn.init.constant_(m.bias, 0.5 if i == 0 else 0.1)
        for m, b in zip(fcs, (1.0, 1.0, 0.0)):
            nn.init.constant_(m.bias, b)
        nn.init.constant_(bconv[0].bias, 0.1)
        for m, b in zip(bfcs, (1.0, 1.0, 0.0)):
            nn.init.constant_(m.bias, b)

    @staticmethod
    def spatial(size: int = 227, ceil: bool = True) -> dict[str, int]:
        """Layer-by-layer spatial size (Caffe conv floor; pooling ceil or floor)."""
        rnd = math.ceil if ceil else math.floor

        def conv(x, k, s=1, p=0):
            return (x + 2 * p - k) // s + 1

        def pool(x, k, s):
            o = rnd((x - k) / s) + 1
            if ceil and (o - 1) * s >= x:   # PyTorch's rule; Caffe only clips with padding (never hit here)
                o -= 1
            return o

        d = {"data": size}
        d["conv1"] = conv(size, 7, 2, 1)
        d["pool1"] = pool(d["conv1"], 3, 2)
        d["conv2"] = d["pool1"]
        d["pool2"] = pool(d["conv2"], 2, 2)
        d["conv3_2"] = d["pool2"]
        d["pool3"] = pool(d["conv3_2"], 2, 2)
        d["conv4_2"] = d["pool3"]
        d["pool4"] = pool(d["conv4_2"], 2, 2)
        d["conv5_2"] = d["pool4"]
        d["pool5"] = pool(d["conv5_2"], 2, 2)
        d["aux_pool"] = pool(d["conv3_2"], 5, 2)
        return d

    def forward(self, x):
        t = self.features_to_tap(x)
        main = self.classifier(self.features_rest(t))
        if self.training:
            return main, self.branch(t)
        return main

    def param_counts(self) -> dict[str, int]:
        deploy = n_params(self.features_to_tap, self.features_rest, self.classifier)
        branch = n_params(self.branch)
        return {"deploy": deploy, "branch": branch, "train": deploy + branch,
                "exit_aux1": n_params(self.features_to_tap) + branch}


# ----------------------------------------------------------------------------------------------- CNDS-13


class _CNDSHead(nn.Sequential):
    """The CNDS-8 branch (released prototxt), reused for every CNDS-13 branch (OUR choice)."""

    def __init__(self, cin: int, spatial: int, num_classes: int):
        p = math.ceil((spatial - 5) / 2) + 1
        if (p - 1) * 2 >= spatial:
            p -= 1
        super().__init__(
            nn.AvgPool2d(5, 2, ceil_mode=True), nn.Conv2d(cin, 64, 1), nn.Flatten(),
            nn.Linear(64 * p * p, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(1024, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(1024, num_classes))


class CNDS13(nn.Module):
    """CNDS-13 — the paper gives only: 13 conv + 3 fc (section 3.1: 'networks with 8 and 13 convolutional
    layers'), the 7x7/2 first layer (section 3.1), branches after the 4th, 7th and 10th conv (section 2),
    all α starting at 0.3, 67 epochs, batch 128 on ImageNet. Fig. 1 (the layer table) is not in our copy.

    OUR choices (marked so in the spec): keep CNDS-8's stem, widths (64/128/256/512/512), pools (3/2 then
    2/2, ceil) and fc6/fc7/fc8; spread the 5 extra convs VGG-style over stages 3-5 as 3/4/4:
      conv1 | conv2 | conv3_1..3_3 | conv4_1..4_4 | conv5_1..5_4      (1+1+3+4+4 = 13)
    so that the 4th conv is conv3_2 — the same tap, at the same 28x28x256, as CNDS-8's released branch —
    and the 7th / 10th convs are conv4_2 (14x14x512) and conv5_1 (7x7x512): three convs apart, matching
    the paper's 'gradients tend to decay every three to four layers'. Every branch is CNDS-8's head.
    """

    TAPS = {"aux1": "conv3_2", "aux2": "conv4_2", "aux3": "conv5_1"}

    def __init__(self, num_classes: int = 1000, input_size: int = 227):
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []

        def conv(name, cin, cout, k=3, s=1, p=1):
            layers.append((name, nn.Conv2d(cin, cout, k, stride=s, padding=p)))
            layers.append(("relu_" + name, nn.ReLU(inplace=True)))

        conv("conv1", 3, 64, 7, 2, 1); layers.append(("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)))
        conv("conv2", 64, 128); layers.append(("pool2", nn.MaxPool2d(2, 2, ceil_mode=True)))
        conv("conv3_1", 128, 256); conv("conv3_2", 256, 256); conv("conv3_3", 256, 256)
        layers.append(("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)))
        conv("conv4_1", 256, 512); conv("conv4_2", 512, 512); conv("conv4_3", 512, 512); conv("conv4_4", 512, 512)
        layers.append(("pool4", nn.MaxPool2d(2, 2, ceil_mode=True)))
        conv("conv5_1", 512, 512); conv("conv5_2", 512, 512); conv("conv5_3", 512, 512); conv("conv5_4", 512, 512)
        layers.append(("pool5", nn.MaxPool2d(2, 2, ceil_mode=True)))
        self.names = [n for n, _ in layers]
        self.features = nn.ModuleDict(layers)
        # spatial sizes at 227: conv1 112, pool1 56, pool2 28, pool3 14, pool4 7, pool5 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * 4 * 4, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, num_classes))
        self.branches = nn.ModuleDict({
            "aux1": _CNDSHead(256, 28, num_classes),
            "aux2": _CNDSHead(512, 14, num_classes),
            "aux3": _CNDSHead(512, 7, num_classes),
        })
        assert sum(isinstance(m, nn.Conv2d) for m in self.features.values()) == 13

    def forward(self, x):
        outs = {}
        for name in self.names:
            x = self.features[name](x)
            for b, tap in self.TAPS.items():
                if name == "relu_" + tap:
                    outs[b] = self.branches[b](x)
        main = self.classifier(x)
        return (main, outs) if self.training else main

    def param_counts(self) -> dict[str, int]:
        deploy = n_params(self.features, self.classifier)
        out = {"deploy": deploy}
        for b, tap in self.TAPS.items():
            upto = self.names.index(tap)
            out[b] = n_params(self.branches[b])
            out["exit_" + b] = n_params(*[self.features[n] for n in self.names[: upto + 1]]) + out[b]
        out["train"] = deploy + sum(out[b] for b in self.TAPS)
        return out


# ----------------------------------------------------------------------------- CIFAR ResNet (+ DKS heads)


class ShortcutA(nn.Module):
    """He et al. 2016 option A: stride-2 subsampling + zero channel padding (parameter-free).
    (DHM's code subsamples with AvgPool2d(2, 2) instead; same parameter count.)"""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.cout > self.cin:
            x = F.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))
        return x


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])


class CifarResNet(nn.Module):
    """ResNet-6n+2 for CIFAR (16/32/64 widths, option A, GAP, fc). `heads=[[a, b], [c]]` adds DKS heads as in
    DHM's models/cifar/resnet.py: aux1 (shallow) off stage 1: a blocks at 32 (stride 2), b blocks at 64
    (stride 2); aux2 (deep) off stage 2: c blocks at 128 (stride 2); each GAP + fc."""

    DHM_HEADS = {32: [[5, 3], [5]], 110: [[9, 9], [18]], 1202: [[100, 100], [200]]}

    def __init__(self, depth: int = 32, num_classes: int = 100, heads=None, w: int = 16):
        super().__init__()
        assert (depth - 2) % 6 == 0
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.stage1 = _stage(w, w, n, 1)
        self.stage2 = _stage(w, 2 * w, n, 2)
        self.stage3 = _stage(2 * w, 4 * w, n, 2)
        self.fc = nn.Linear(4 * w, num_classes)
        self.heads = heads
        if heads:
            (a, b), (c,) = heads
            self.aux1 = nn.ModuleDict({"s2": _stage(w, 2 * w, a, 2), "s3": _stage(2 * w, 4 * w, b, 2),
                                       "fc": nn.Linear(4 * w, num_classes)})
            self.aux2 = nn.ModuleDict({"s3": _stage(2 * w, 8 * w, c, 2), "fc": nn.Linear(8 * w, num_classes)})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        main = self.fc(self.stage3(s2).mean((2, 3)))
        if not (self.heads and self.training):
            return main
        a1 = self.aux1["fc"](self.aux1["s3"](self.aux1["s2"](s1)).mean((2, 3)))
        a2 = self.aux2["fc"](self.aux2["s3"](s2).mean((2, 3)))
        return main, a1, a2

    def param_counts(self) -> dict[str, int]:
        backbone = [self.conv1, self.bn1, self.stage1, self.stage2, self.stage3, self.fc]
        out = {"deploy": n_params(*backbone)}
        if self.heads:
            out["aux1"] = n_params(self.aux1)
            out["aux2"] = n_params(self.aux2)
            out["exit_aux1"] = n_params(self.conv1, self.bn1, self.stage1) + out["aux1"]
            out["exit_aux2"] = n_params(self.conv1, self.bn1, self.stage1, self.stage2) + out["aux2"]
            out["train"] = out["deploy"] + out["aux1"] + out["aux2"]
        return out


# ------------------------------------------------------------------------------------- MW-BP PreResNet-56


class PreBasicBlock(nn.Module):
    """multiwaybp PreResNet.py PreBasicBlock. 'both_preact': shortcut = x; 'half_preact' (first block of each
    stage): x is BN-ReLU'd first and the shortcut takes the activated x. Downsample (their code): 1x1 conv,
    stride s, no bias, whenever stride != 1 or widths differ; `shortcut='A'` swaps in option A (netspec)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, half_preact: bool = False, shortcut: str = "conv"):
        super().__init__()
        self.half = half_preact
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if shortcut == "conv" else ShortcutA(cin, cout, stride)

    def forward(self, x):
        if self.half:
            x = F.relu(self.bn1(x))
            res = x
            x = self.conv1(x)
        else:
            res = x
            x = self.conv1(F.relu(self.bn1(x)))
        x = self.conv2(F.relu(self.bn2(x)))
        if self.down is not None:
            res = self.down(res)
        return x + res


class AuxHeadA(nn.Module):
    """multiwaybp aux_classifier.py AuxClassifier_A: BN -> ReLU -> spatial mean -> fc (bias zeroed)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


class MWBPPreResNet(nn.Module):
    """Pre-activation ResNet-56 as multiwaybp's PreResNet (depth 56 -> n = 9, 27 blocks, widths 16/32/64) with
    exits after blocks `pivots` (their options.py pivotSet = [8, 13, 18, 23]; blocks counted from 1 in
    forward order, aux_trainer._network_split). Final head: BN-ReLU-AvgPool2d(7)-fc as their code (on an 8x8
    map AvgPool2d(7) averages the top-left 7x7 window only; `final_pool='gap'` uses a true GAP — no
    parameter difference)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, pivots=(8, 13, 18, 23), shortcut: str = "conv",
                 final_pool: str = "code", w: int = 16):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        blocks, cin = [], w
        for si, cout in enumerate((w, 2 * w, 4 * w)):
            for i in range(n):
                blocks.append(PreBasicBlock(cin, cout, 2 if (i == 0 and si > 0) else 1, half_preact=(i == 0),
                                            shortcut=shortcut))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)
        self.final_pool = final_pool
        self.pivots = tuple(pivots)
        self.exits = nn.ModuleDict({f"exit{p}": AuxHeadA(blocks[p - 1].conv2.out_channels, num_classes)
                                    for p in self.pivots})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):   # their _init_weight: N(0, sqrt(2 / (k*k*out)))
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight); nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.conv(x)
        outs = {}
        for i, b in enumerate(self.blocks, start=1):
            x = b(x)
            if i in self.pivots:
                outs[f"exit{i}"] = self.exits[f"exit{i}"](x)
        x = F.relu(self.bn(x))
        x = F.avg_pool2d(x, 7) if self.final_pool == "code" else x.mean((2, 3), keepdim=True)
        main = self.fc(x.flatten(1))
        return (main, outs) if self.training else main

    def param_counts(self) -> dict[str, int]:
        out = {"deploy": n_params(self.conv, self.blocks, self.bn, self.fc)}
        for p in self.pivots:
            head = n_params(self.exits[f"exit{p}"])
            out[f"exit{p}"] = head
            out[f"exit_model_{p}"] = n_params(self.conv, *self.blocks[:p]) + head
        out["train"] = out["deploy"] + sum(out[f"exit{p}"] for p in self.pivots)
        return out


def mwbp_gammas(pivots=(8, 13, 18, 23), layers_per_block: int = 2) -> dict[int, tuple[float, float]]:
    """aux_trainer.AuxTrainer.__init__: γ_i = max(((p_i·2+1)/(p_last·2+1))², 0.01), Γ_i = Σ_{j≥i} γ_j.
    Returns {p: (γ_p, Γ_p)}; the grad_scale netspec needs is γ_p / Γ_p."""
    g = {p: max(((p * layers_per_block + 1) / (pivots[-1] * layers_per_block + 1)) ** 2, 0.01) for p in pivots}
    G, acc = {}, 0.0
    for p in reversed(pivots):
        acc += g[p]
        G[p] = acc
    return {p: (g[p], G[p]) for p in pivots}
