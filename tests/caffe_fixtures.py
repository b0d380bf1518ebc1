"""Prototxt fixtures for the Caffe import tests (written for these tests), the same nets by hand in PyTorch,
and a .caffemodel encoder written at the wire level from caffe.proto's field numbers (independent of the reader)."""
from __future__ import annotations

import struct

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


# --- AlexNet (BVLC's layout, grouped convs): 60,965,224 parameters ------------------------------

def _conv(name, bottom, top, out, k, stride=1, pad=0, group=1, std=0.01, bias=0.0):
    extra = (f" stride: {stride}" if stride != 1 else "") + (f" pad: {pad}" if pad else "") + \
        (f" group: {group}" if group != 1 else "")
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}"\n'
            f"  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}\n"
            f"  convolution_param {{ num_output: {out} kernel_size: {k}{extra}\n"
            f'    weight_filler {{ type: "gaussian" std: {std} }} bias_filler {{ type: "constant" value: {bias} }} }} }}\n')


def _ip(name, bottom, out, std=0.005, bias=0.1):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"\n'
            f"  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}\n"
            f"  inner_product_param {{ num_output: {out} weight_filler {{ type: \"gaussian\" std: {std} }}\n"
            f'    bias_filler {{ type: "constant" value: {bias} }} }} }}\n')


def _simple(name, kind, bottom, top=None, extra=""):
    return f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top or bottom}" {extra}}}\n'


def _pool(name, bottom, pool, k, s, pad=0):
    p = f" pad: {pad}" if pad else ""
    return _simple(name, "Pooling", bottom, name, f"pooling_param {{ pool: {pool} kernel_size: {k} stride: {s}{p} }} ")


def _lrn(name, bottom):
    return _simple(name, "LRN", bottom, name, "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } ")


DATA_V2 = """\
name: "{name}"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ mirror: true crop_size: {size} mean_value: 104 mean_value: 117 mean_value: 123 }}
  data_param {{ source: "examples/imagenet/train_lmdb" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ mirror: false crop_size: {size} mean_value: 104 mean_value: 117 mean_value: 123 }}
  data_param {{ source: "examples/imagenet/val_lmdb" batch_size: 50 backend: LMDB }} }}
"""

ALEXNET = (DATA_V2.format(name="AlexNet", size=227, batch=256)
           + _conv("conv1", "data", "conv1", 96, 11, stride=4) + _simple("relu1", "ReLU", "conv1")
           + _lrn("norm1", "conv1") + _pool("pool1", "norm1", "MAX", 3, 2)
           + _conv("conv2", "pool1", "conv2", 256, 5, pad=2, group=2, bias=0.1) + _simple("relu2", "ReLU", "conv2")
           + _lrn("norm2", "conv2") + _pool("pool2", "norm2", "MAX", 3, 2)
           + _conv("conv3", "pool2", "conv3", 384, 3, pad=1) + _simple("relu3", "ReLU", "conv3")
           + _conv("conv4", "conv3", "conv4", 384, 3, pad=1, group=2, bias=0.1) + _simple("relu4", "ReLU", "conv4")
           + _conv("conv5", "conv4", "conv5", 256, 3, pad=1, group=2, bias=0.1) + _simple("relu5", "ReLU", "conv5")
           + _pool("pool5", "conv5", "MAX", 3, 2)
           + _ip("fc6", "pool5", 4096) + _simple("relu6", "ReLU", "fc6")
           + _simple("drop6", "Dropout", "fc6", extra="dropout_param { dropout_ratio: 0.5 } ")
           + _ip("fc7", "fc6", 4096) + _simple("relu7", "ReLU", "fc7")
           + _simple("drop7", "Dropout", "fc7", extra="dropout_param { dropout_ratio: 0.5 } ")
           + _ip("fc8", "fc7", 1000, std=0.01, bias=0)
           + 'layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy"\n'
             "  include { phase: TEST } }\n"
           + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }\n')


def alexnet_torch() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))


# --- CNDS-8-like, V1 syntax, one DSN branch after conv3_2 (64x64 input, narrow) -------------------

def _v1_conv(name, bottom, out, k, pad=0, stride=1):
    s = f" stride: {stride}" if stride != 1 else ""
    return (f'layers {{ name: "{name}" type: CONVOLUTION bottom: "{bottom}" top: "{name}"\n'
            f"  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0\n"
            f"  convolution_param {{ num_output: {out} kernel_size: {k} pad: {pad}{s}\n"
            f'    weight_filler {{ type: "gaussian" std: 0.01 }} bias_filler {{ type: "constant" value: 0 }} }} }}\n')


def _v1(name, kind, bottom, top=None, extra=""):
    return f'layers {{ name: "{name}" type: {kind} bottom: "{bottom}" top: "{top or bottom}" {extra}}}\n'


def _v1_ip(name, bottom, out):
    return (f'layers {{ name: "{name}" type: INNER_PRODUCT bottom: "{bottom}" top: "{name}"\n'
            f"  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0\n"
            f'  inner_product_param {{ num_output: {out} weight_filler {{ type: "gaussian" std: 0.005 }}\n'
            f'    bias_filler {{ type: "constant" value: 1 }} }} }}\n')


CNDS8_V1 = ('name: "CNDS-8-like"\n'
            'layers { name: "data" type: DATA top: "data" top: "label" include { phase: TRAIN }\n'
            '  data_param { source: "places_train_lmdb" backend: LMDB batch_size: 64 }\n'
            "  transform_param { crop_size: 64 mirror: true mean_value: 105 mean_value: 114 mean_value: 116 } }\n"
            'layers { name: "data" type: DATA top: "data" top: "label" include { phase: TEST }\n'
            '  data_param { source: "places_val_lmdb" backend: LMDB batch_size: 50 }\n'
            "  transform_param { crop_size: 64 mean_value: 105 mean_value: 114 mean_value: 116 } }\n"
            + _v1_conv("conv1", "data", 16, 5, stride=2) + _v1("relu1", "RELU", "conv1")
            + _v1("pool1", "POOLING", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 3 stride: 2 } ")
            + _v1_conv("conv2", "pool1", 32, 3, pad=1) + _v1("relu2", "RELU", "conv2")
            + _v1("pool2", "POOLING", "conv2", "pool2", "pooling_param { pool: MAX kernel_size: 3 stride: 2 } ")
            + _v1_conv("conv3_1", "pool2", 48, 3, pad=1) + _v1("relu3_1", "RELU", "conv3_1")
            + _v1_conv("conv3_2", "conv3_1", 48, 3, pad=1) + _v1("relu3_2", "RELU", "conv3_2")
            + _v1_conv("conv4_1", "conv3_2", 48, 3, pad=1) + _v1("relu4_1", "RELU", "conv4_1")
            + _v1_conv("conv4_2", "conv4_1", 48, 3, pad=1) + _v1("relu4_2", "RELU", "conv4_2")
            + _v1_conv("conv5_1", "conv4_2", 32, 3, pad=1) + _v1("relu5_1", "RELU", "conv5_1")
            + _v1_conv("conv5_2", "conv5_1", 32, 3, pad=1) + _v1("relu5_2", "RELU", "conv5_2")
            + _v1("pool5", "POOLING", "conv5_2", "pool5", "pooling_param { pool: MAX kernel_size: 3 stride: 2 } ")
            + _v1_ip("fc6", "pool5", 128) + _v1("relu6", "RELU", "fc6")
            + _v1("drop6", "DROPOUT", "fc6", extra="dropout_param { dropout_ratio: 0.5 } ")
            + _v1_ip("fc7", "fc6", 128) + _v1("relu7", "RELU", "fc7")
            + _v1("drop7", "DROPOUT", "fc7", extra="dropout_param { dropout_ratio: 0.5 } ")
            + _v1_ip("fc8", "fc7", 10)
            # the DSN branch after conv3_2's ReLU: average pooling, 1x1 conv, two FC layers, classifier
            + _v1("ss_pool", "POOLING", "conv3_2", "ss_pool", "pooling_param { pool: AVE kernel_size: 5 stride: 2 } ")
            + _v1_conv("ss_conv", "ss_pool", 16, 1) + _v1("ss_relu", "RELU", "ss_conv")
            + _v1_ip("ss_fc1", "ss_conv", 64) + _v1("ss_relu_fc1", "RELU", "ss_fc1")
            + _v1("ss_drop_fc1", "DROPOUT", "ss_fc1", extra="dropout_param { dropout_ratio: 0.5 } ")
            + _v1_ip("ss_fc2", "ss_fc1", 10)
            + 'layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8" bottom: "label" top: "loss" }\n'
            + 'layers { name: "ss_loss" type: SOFTMAX_LOSS bottom: "ss_fc2" bottom: "label" top: "ss_loss"\n'
              "  loss_weight: 0.3 }\n"
            + 'layers { name: "accuracy" type: ACCURACY bottom: "fc8" bottom: "label" top: "accuracy"\n'
              "  include { phase: TEST } }\n")


class CNDS8(nn.Module):
    def __init__(self):
        super().__init__()
        c = lambda i, o, k, p=0, s=1: nn.Conv2d(i, o, k, s, p)  # noqa: E731
        self.trunk = nn.Sequential(
            c(3, 16, 5, 0, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), c(16, 32, 3, 1), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True), c(32, 48, 3, 1), nn.ReLU(), c(48, 48, 3, 1), nn.ReLU())
        self.top = nn.Sequential(
            c(48, 48, 3, 1), nn.ReLU(), c(48, 48, 3, 1), nn.ReLU(), c(48, 32, 3, 1), nn.ReLU(), c(32, 32, 3, 1),
            nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.Linear(32 * 3 * 3, 128), nn.ReLU(),
            nn.Dropout(), nn.Linear(128, 128), nn.ReLU(), nn.Dropout(), nn.Linear(128, 10))
        self.branch = nn.Sequential(
            nn.AvgPool2d(5, 2, ceil_mode=True), c(48, 16, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 2 * 2, 64),
            nn.ReLU(), nn.Dropout(), nn.Linear(64, 10))

    def forward(self, x):
        h = self.trunk(x)
        return {"main": self.top(h), "ss_loss": self.branch(h)}

    def caffe_blobs(self) -> dict[str, list[np.ndarray]]:
        """The layers' blobs as Caffe keeps them, by Caffe layer name."""
        convs = [m for m in self.trunk if isinstance(m, nn.Conv2d)] + [m for m in self.top if isinstance(m, nn.Conv2d)]
        names = ["conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1", "conv5_2"]
        out = {n: [m.weight, m.bias] for n, m in zip(names, convs)}
        fcs = [m for m in self.top if isinstance(m, nn.Linear)]
        out.update({n: [m.weight, m.bias] for n, m in zip(["fc6", "fc7", "fc8"], fcs)})
        out["ss_conv"] = [self.branch[1].weight, self.branch[1].bias]
        out["ss_fc1"] = [self.branch[4].weight, self.branch[4].bias]
        out["ss_fc2"] = [self.branch[7].weight, self.branch[7].bias]
        return {k: [t.detach().numpy() for t in v] for k, v in out.items()}


# --- GoogLeNet-like, V2: inception modules (Concat), LRN, AVE pooling, dropout, two auxiliary losses ----

def _inception(name: str, bottom: str, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> str:
    n = name
    return (_conv(f"{n}/1x1", bottom, f"{n}/1x1", c1, 1, std=0.03, bias=0.2) + _simple(f"{n}/relu_1x1", "ReLU", f"{n}/1x1")
            + _conv(f"{n}/3x3_reduce", bottom, f"{n}/3x3_reduce", r3, 1, std=0.09, bias=0.2)
            + _simple(f"{n}/relu_3x3_reduce", "ReLU", f"{n}/3x3_reduce")
            + _conv(f"{n}/3x3", f"{n}/3x3_reduce", f"{n}/3x3", c3, 3, pad=1, std=0.03, bias=0.2)
            + _simple(f"{n}/relu_3x3", "ReLU", f"{n}/3x3")
            + _conv(f"{n}/5x5_reduce", bottom, f"{n}/5x5_reduce", r5, 1, std=0.2, bias=0.2)
            + _simple(f"{n}/relu_5x5_reduce", "ReLU", f"{n}/5x5_reduce")
            + _conv(f"{n}/5x5", f"{n}/5x5_reduce", f"{n}/5x5", c5, 5, pad=2, std=0.03, bias=0.2)
            + _simple(f"{n}/relu_5x5", "ReLU", f"{n}/5x5")
            + _pool(f"{n}/pool", bottom, "MAX", 3, 1, pad=1)
            + _conv(f"{n}/pool_proj", f"{n}/pool", f"{n}/pool_proj", pp, 1, std=0.1, bias=0.2)
            + _simple(f"{n}/relu_pool_proj", "ReLU", f"{n}/pool_proj")
            + f'layer {{ name: "{n}/output" type: "Concat" bottom: "{n}/1x1" bottom: "{n}/3x3" bottom: "{n}/5x5"\n'
              f'  bottom: "{n}/pool_proj" top: "{n}/output" }}\n')


def _aux(k: int, bottom: str, classes: int) -> str:
    n = f"loss{k}"
    return (_pool(f"{n}/ave_pool", bottom, "AVE", 5, 3)
            + _conv(f"{n}/conv", f"{n}/ave_pool", f"{n}/conv", 32, 1, std=0.08, bias=0.2)
            + _simple(f"{n}/relu_conv", "ReLU", f"{n}/conv")
            + _ip(f"{n}/fc", f"{n}/conv", 64) + _simple(f"{n}/relu_fc", "ReLU", f"{n}/fc")
            + _simple(f"{n}/drop_fc", "Dropout", f"{n}/fc", extra="dropout_param { dropout_ratio: 0.7 } ")
            + _ip(f"{n}/classifier", f"{n}/fc", classes, std=0.0009765625, bias=0)
            + f'layer {{ name: "{n}/loss1" type: "SoftmaxWithLoss" bottom: "{n}/classifier" bottom: "label"\n'
              f'  top: "{n}/loss1" loss_weight: 0.3 }}\n')


INCEPTIONS = {"3a": (16, 16, 24, 4, 8, 8), "3b": (24, 24, 32, 8, 16, 16), "4a": (32, 16, 32, 4, 8, 16),
              "4b": (32, 16, 32, 4, 8, 16), "4c": (32, 24, 40, 4, 8, 16)}
INCEPTION_IN = {"3a": 32, "3b": 56, "4a": 88, "4b": 88, "4c": 88}

GOOGLENET = (DATA_V2.format(name="GoogLeNet-like", size=96, batch=32)
             + _conv("conv1/7x7_s2", "data", "conv1/7x7_s2", 16, 7, stride=2, pad=3, std=0.1, bias=0.2)
             + _simple("conv1/relu_7x7", "ReLU", "conv1/7x7_s2")
             + _pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2) + _lrn("pool1/norm1", "pool1/3x3_s2")
             + _conv("conv2/3x3", "pool1/norm1", "conv2/3x3", 32, 3, pad=1, std=0.03, bias=0.2)
             + _simple("conv2/relu_3x3", "ReLU", "conv2/3x3") + _lrn("conv2/norm2", "conv2/3x3")
             + _pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2)
             + _inception("inception_3a", "pool2/3x3_s2", *INCEPTIONS["3a"])
             + _inception("inception_3b", "inception_3a/output", *INCEPTIONS["3b"])
             + _pool("pool3/3x3_s2", "inception_3b/output", "MAX", 3, 2)
             + _inception("inception_4a", "pool3/3x3_s2", *INCEPTIONS["4a"])
             + _aux(1, "inception_4a/output", 10)
             + _inception("inception_4b", "inception_4a/output", *INCEPTIONS["4b"])
             + _aux(2, "inception_4b/output", 10)
             + _inception("inception_4c", "inception_4b/output", *INCEPTIONS["4c"])
             + _simple("pool5/7x7_s1", "Pooling", "inception_4c/output", "pool5/7x7_s1",
                       "pooling_param { pool: AVE kernel_size: 6 stride: 1 } ")
             + _simple("pool5/drop_7x7_s1", "Dropout", "pool5/7x7_s1", extra="dropout_param { dropout_ratio: 0.4 } ")
             + _ip("loss3/classifier", "pool5/7x7_s1", 10, std=0.01, bias=0)
             + 'layer { name: "loss3/loss3" type: "SoftmaxWithLoss" bottom: "loss3/classifier" bottom: "label"\n'
               '  top: "loss3/loss3" loss_weight: 1 }\n'
             + 'layer { name: "loss3/top-1" type: "Accuracy" bottom: "loss3/classifier" bottom: "label"\n'
               '  top: "loss3/top-1" include { phase: TEST } }\n')


class Inception(nn.Module):
    def __init__(self, cin, c1, r3, c3, r5, c5, pp):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, c1, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(cin, r3, 1), nn.ReLU(), nn.Conv2d(r3, c3, 3, padding=1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(cin, r5, 1), nn.ReLU(), nn.Conv2d(r5, c5, 5, padding=2), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), nn.Conv2d(cin, pp, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class GoogLeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.LocalResponseNorm(5, 1e-4),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.i3a, self.i3b = (Inception(INCEPTION_IN[k], *INCEPTIONS[k]) for k in ("3a", "3b"))
        self.pool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.i4a, self.i4b, self.i4c = (Inception(INCEPTION_IN[k], *INCEPTIONS[k]) for k in ("4a", "4b", "4c"))
        aux = lambda: nn.Sequential(nn.AvgPool2d(5, 3, ceil_mode=True), nn.Conv2d(88, 32, 1), nn.ReLU(),  # noqa: E731
                                    nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Dropout(0.7), nn.Linear(64, 10))
        self.aux1, self.aux2 = aux(), aux()
        self.head = nn.Sequential(nn.AvgPool2d(6, 1, ceil_mode=True), nn.Dropout(0.4), nn.Flatten(), nn.Linear(96, 10))

    def forward(self, x):
        a = self.i4a(self.pool3(self.i3b(self.i3a(self.stem(x)))))
        b = self.i4b(a)
        return {"main": self.head(self.i4c(b)), "loss1": self.aux1(a), "loss2": self.aux2(b)}


# --- BN + Scale, residual Eltwise, and the other element-wise layers (V2, deploy-style input) -------

BN_NET = """\
name: "bn-scale"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
input: "label"
input_shape { dim: 1 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv2a" type: "Convolution" bottom: "pool1" top: "conv2a"
  convolution_param { num_output: 8 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 bias_term: false } }
layer { name: "bn2a" type: "BatchNorm" bottom: "conv2a" top: "conv2a" batch_norm_param { eps: 0.001 } }
layer { name: "scale2a" type: "Scale" bottom: "conv2a" top: "conv2a" scale_param { bias_term: true } }
layer { name: "prelu2a" type: "PReLU" bottom: "conv2a" top: "conv2a" }
layer { name: "conv2b" type: "Convolution" bottom: "pool1" top: "conv2b"
  convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 } }
layer { name: "tanh2b" type: "TanH" bottom: "conv2b" top: "conv2b" }
layer { name: "sum2" type: "Eltwise" bottom: "pool1" bottom: "conv2a" bottom: "conv2b" top: "sum2"
  eltwise_param { operation: SUM coeff: 1 coeff: 0.5 coeff: -0.25 } }
layer { name: "sig2" type: "Sigmoid" bottom: "conv2b" top: "sig2" }
layer { name: "prod2" type: "Eltwise" bottom: "sum2" bottom: "sig2" top: "prod2" eltwise_param { operation: PROD } }
layer { name: "max2" type: "Eltwise" bottom: "prod2" bottom: "pool1" top: "max2" eltwise_param { operation: MAX } }
layer { name: "cat2" type: "Concat" bottom: "max2" bottom: "sum2" top: "cat2" }
layer { name: "norm2" type: "LRN" bottom: "cat2" top: "norm2" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "gpool" type: "Pooling" bottom: "pool2" top: "gpool" pooling_param { pool: MAX global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "pool2" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "gfc" type: "InnerProduct" bottom: "gpool" top: "gfc" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "gloss" type: "SoftmaxWithLoss" bottom: "gfc" bottom: "label" top: "gloss" loss_weight: 0.5 }
"""


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2a = nn.Conv2d(8, 8, (3, 1), padding=(1, 0), bias=False)
        self.bn2a = nn.BatchNorm2d(8, eps=1e-3)
        self.prelu2a = nn.PReLU(8)
        self.conv2b = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.fc = nn.Linear(16 * 5 * 5, 5)
        self.gfc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.bn1(self.conv1(x)), 0.1), 3, 2, 1, ceil_mode=True)
        a = self.prelu2a(self.bn2a(self.conv2a(x)))
        b = torch.tanh(self.conv2b(x))
        s = x + 0.5 * a - 0.25 * b
        m = torch.maximum(s * torch.sigmoid(b), x)
        y = F.local_response_norm(torch.cat([m, s], 1), 3, 0.5, 0.75, 2.0)
        y = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True)
        return {"main": self.fc(y.flatten(1)), "gloss": self.gfc(F.max_pool2d(y, y.shape[2:]).flatten(1))}

    def caffe_blobs(self) -> dict[str, list[np.ndarray]]:
        out = {"conv1": [self.conv1.weight], "conv2a": [self.conv2a.weight], "prelu2a": [self.prelu2a.weight],
               "conv2b": [self.conv2b.weight, self.conv2b.bias], "fc": [self.fc.weight, self.fc.bias],
               "gfc": [self.gfc.weight, self.gfc.bias]}
        for bn, scale, m in (("bn1", "scale1", self.bn1), ("bn2a", "scale2a", self.bn2a)):
            factor = 7.5  # Caffe keeps the statistics' sums and their scale factor
            out[bn] = [m.running_mean * factor, m.running_var * factor, torch.tensor([factor])]
            out[scale] = [m.weight, m.bias]
        return {k: [t.detach().numpy() for t in v] for k, v in out.items()}


def randomise(model: nn.Module) -> nn.Module:
    """Trained-looking weights: every parameter and BatchNorm statistic random, eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.rand(tensor.shape, generator=gen) if "var" in name else \
                    torch.randn(tensor.shape, generator=gen) * 0.3
                tensor.copy_(values + (0.5 if "var" in name else 0.0))
    return model.eval()


# --- a .caffemodel, encoded at the wire level (field numbers from BVLC caffe's caffe.proto) -------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray, v1: bool) -> bytes:
    array = np.asarray(array, dtype="<f4")
    if v1:  # legacy num/channels/height/width (1-4), data unpacked: repeated fixed32, field 5
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_key(i + 1, 0) + _varint(d) for i, d in enumerate(dims))
        return head + b"".join(_key(5, 5) + struct.pack("<f", v) for v in array.ravel())
    shape = _bytes(1, b"".join(_varint(d) for d in array.shape))  # BlobShape.dim, packed
    return _bytes(7, shape) + _bytes(5, array.tobytes())  # BlobProto.shape = 7, data = 5 (packed)


def caffemodel(layers: dict[str, list[np.ndarray]], v1: bool = False) -> bytes:
    """NetParameter with `layer` (100: LayerParameter name 1, type 2, blobs 7) or V1 `layers` (2:
    V1LayerParameter name 4, type 5, blobs 6); a name field (1) and an unrelated field first, to be skipped."""
    out = _bytes(1, b"roundtrip") + _key(5, 0) + _varint(1)  # name; force_backward: true
    for name, blobs in layers.items():
        if v1:
            body = _bytes(4, name.encode()) + _key(5, 0) + _varint(4) + b"".join(_bytes(6, _blob(b, True)) for b in blobs)
            out += _bytes(2, body)
        else:
            body = _bytes(1, name.encode()) + _bytes(2, b"Whatever") + b"".join(_bytes(7, _blob(b, False)) for b in blobs)
            out += _bytes(100, body)
    return out
