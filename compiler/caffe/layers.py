"""Caffe layers → netspec nodes: one table, `CONVERTERS`, from Caffe's layer type to a function.

`read_net` walks the TRAIN-phase layers of a parsed NetParameter in order, follows blobs (in-place layers
become nodes of their own; Split aliases; BatchNorm + Scale fold into one batchnorm node) and tracks Caffe's
shapes, so that pooling sizes can be checked against netspec's and global pooling gets its window. Each
converter returns the node's spec keys (`op: ...`) and its output shape (C, H, W) or (F,).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from netspec.errors import Pos, did_you_mean
from netspec.ops import MAX_NAME, RESERVED_NAMES
from netspec.compiler.caffe.textformat import CaffeError, Message

Shape = tuple[int, ...]
LABEL = object()  # the label blob of a data layer: read by loss and accuracy layers only

V1_NAMES = {  # V1's enum type → V2's type string
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "POOLING": "Pooling",
    "INNER_PRODUCT": "InnerProduct", "RELU": "ReLU", "SIGMOID": "Sigmoid", "TANH": "TanH", "LRN": "LRN",
    "DROPOUT": "Dropout", "ELTWISE": "Eltwise", "CONCAT": "Concat", "FLATTEN": "Flatten", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "EUCLIDEAN_LOSS": "EuclideanLoss", "ACCURACY": "Accuracy",
    "SPLIT": "Split", "SILENCE": "Silence", "DATA": "Data", "IMAGE_DATA": "ImageData", "HDF5_DATA": "HDF5Data",
    "MEMORY_DATA": "MemoryData", "WINDOW_DATA": "WindowData", "DUMMY_DATA": "DummyData", "ABSVAL": "AbsVal",
    "BNLL": "BNLL", "POWER": "Power", "EXP": "Exp", "MVN": "MVN", "SLICE": "Slice", "THRESHOLD": "Threshold",
    "ARGMAX": "ArgMax", "HINGE_LOSS": "HingeLoss", "INFOGAIN_LOSS": "InfogainLoss",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "HDF5_OUTPUT": "HDF5Output", "IM2COL": "Im2col",
}

DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input", "AnnotatedData"}

CLOSEST = {  # unsupported type → what netspec has nearest to it
    "Deconvolution": "conv (netspec has no transposed convolution)",
    "Scale": "batchnorm (a Scale right after a BatchNorm is folded into it)", "Bias": "batchnorm",
    "ELU": "leaky_relu", "BNLL": "leaky_relu", "AbsVal": "relu", "Threshold": "relu",
    "SPP": "maxpool", "Reshape": "flatten", "Embed": "fc", "MVN": "batchnorm", "Normalize": "batchnorm",
    "SigmoidCrossEntropyLoss": "a cross_entropy loss", "MultinomialLogisticLoss": "a cross_entropy loss",
    "InfogainLoss": "a cross_entropy loss", "HingeLoss": "a cross_entropy loss",
    "EuclideanLoss": "none: netspec's losses are cross_entropy and synergy (classification)",
    "ContrastiveLoss": "none: netspec's losses are cross_entropy and synergy (classification)",
}


@dataclass
class Layer:
    """One Caffe layer, V1 and V2 alike."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    msg: Message
    pos: Pos
    mults: list[tuple[float, float]]  # (lr_mult, decay_mult) per parameter blob
    loss_weight: list[float]

    def param(self, name: str) -> Message:
        return self.msg.sub(name)

    def at(self, param: str, key: str) -> Pos:
        sub = self.msg.get(param)
        return sub.pos(key) if isinstance(sub, Message) and sub.has(key) else self.pos


@dataclass
class NetNode:
    """A netspec node made from one Caffe layer (or a BatchNorm + Scale pair)."""

    name: str
    caffe: str
    type: str
    spec: dict[str, Any]  # op and its keys
    inputs: list[str]
    pos: Pos
    shape: Shape
    weighted: bool = False
    mults: list[tuple[float, float]] = field(default_factory=list)
    filler: dict[str, Any] | None = None  # the node's weight init, None = netspec's default
    bias: float | None = None  # bias constant
    scale_layer: str | None = None  # Caffe Scale layer folded into a batchnorm
    notes: list[str] = field(default_factory=list)


@dataclass
class Loss:
    caffe: str
    type: str
    logits: str
    weight: float
    pos: Pos


@dataclass
class InputInfo:
    name: str = "data"
    shape: Shape | None = None
    pos: Pos | None = None
    mean: list[float] = field(default_factory=list)  # Caffe's mean_value (0..255 pixels)
    scale: float = 1.0
    batch_size: int | None = None
    mirror: bool = False
    crop_size: int = 0
    comments: list[str] = field(default_factory=list)


@dataclass
class Net:
    name: str
    file: str
    input: InputInfo
    nodes: list[NetNode]
    losses: list[Loss]
    notes: list[str]


# --- names -----------------------------------------------------------------------------------

def spec_name(caffe: str, taken: set[str]) -> str:
    """A netspec node name for a Caffe name: `/`, `-`, `.` and every other character a name cannot have → `_`; at
    most MAX_NAME characters; unique; not a reserved word. The node keeps the Caffe name (weights match by it)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", caffe) or "layer"
    if name[0].isdigit():
        name = "l" + name
    if name in RESERVED_NAMES or name == "input":
        name += "_"
    base, i = name[:MAX_NAME], 2
    name = base
    while name in taken:
        suffix = f"_{i}"
        name, i = base[:MAX_NAME - len(suffix)] + suffix, i + 1
    taken.add(name)
    return name


# --- the layers' parameters ------------------------------------------------------------------

def _pair(layer: Layer, param: str, key: str, field: str, default: int | None, low: int) -> tuple[int, int] | None:
    """Caffe's `field` (1 or 2 values) or `key_h`/`key_w` → (h, w), with the checks Caffe's LayerSetUp makes: not
    both forms, `_h` and `_w` together, every value at least `low`."""
    p = layer.param(param)
    h, w = p.get(f"{key}_h"), p.get(f"{key}_w")
    values = p.all(field)
    if h is not None or w is not None:
        at = layer.at(param, f"{key}_h" if h is not None else f"{key}_w")
        if values:
            raise CaffeError(f"layer '{layer.name}' gives both {field} and {key}_h/{key}_w, which Caffe refuses "
                             f"(\"either {field} or {key}_h/w, not both\")", f"keep {field} or {key}_h and {key}_w",
                             at)
        if h is None or w is None:
            raise CaffeError(f"layer '{layer.name}' gives {key}_h or {key}_w alone", f"give both {key}_h and {key}_w",
                             at)
        pair, at = (h, w), layer.at(param, f"{key}_h" if h < low else f"{key}_w")
    elif not values:
        return None if default is None else (default, default)
    elif len(values) > 2:
        raise CaffeError(f"layer '{layer.name}' has {len(values)} values of {field}: netspec's layers are 2-D",
                         f"give one or two values of {field}", layer.at(param, field))
    else:
        pair, at = (values[0], values[-1]), layer.at(param, field)
    if min(pair) < low:
        raise CaffeError(f"layer '{layer.name}' has {key} {min(pair)}; Caffe needs {key} ≥ {low}",
                         f"give {field} a value ≥ {low}", at)
    return pair


def _value(pair: tuple[int, int]) -> int | list[int]:
    return pair[0] if pair[0] == pair[1] else [pair[0], pair[1]]


def _needs_map(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise CaffeError(f"layer '{layer.name}' ({layer.type}) needs a feature map (C, H, W), but its input is a "
                         f"vector of {shape[0]}", "it must follow a convolution or pooling layer", layer.pos)
    return shape


def _filler(layer: Layer, param: str, key: str, notes: list[str]) -> tuple[dict | None, bool]:
    """A Caffe filler → a netspec weight init (None: netspec's default). Second: whether it was given."""
    sub = layer.param(param).get(key)
    if sub is None:
        return None, False
    kind = sub.get("type", "constant")
    if kind == "gaussian":
        if sub.get("sparse", -1) != -1:
            notes.append(f"{key} sparse gaussian → dense gaussian")
        out = {"type": "gaussian", "std": sub.get("std", 1.0)}
        if sub.get("mean", 0.0):
            out["mean"] = sub.get("mean")
        return out, True
    if kind == "msra":
        norm = sub.get("variance_norm", "FAN_IN")
        if norm == "AVERAGE":
            notes.append("msra with variance_norm AVERAGE → kaiming fan_in")
        return {"type": "kaiming", "mode": "fan_out" if norm == "FAN_OUT" else "fan_in"}, True
    if kind == "xavier":
        notes.append("Caffe's xavier is uniform ±sqrt(3/fan_in); netspec's is Glorot's ±sqrt(6/(fan_in+fan_out))")
        return {"type": "xavier"}, True
    if kind == "constant":
        return {"type": "constant", "value": sub.get("value", 0.0)}, True
    notes.append(f"{key} '{kind}' has no netspec counterpart → PyTorch's default init")
    return {"type": "default"}, True


def _bias(layer: Layer, param: str) -> float:
    sub = layer.param(param).get("bias_filler")
    if sub is None:
        return 0.0  # Caffe's default filler: constant 0
    if sub.get("type", "constant") != "constant":
        raise CaffeError(f"layer '{layer.name}': bias_filler '{sub.get('type')}' is not supported",
                         "netspec's bias init is a constant: use type: \"constant\"", sub.pos("type"))
    return sub.get("value", 0.0)


# --- converters: (layer, input shapes, node) → node spec keys, output shape ------------------

Converter = Callable[[Layer, list[Shape], NetNode], tuple[dict, Shape]]
CONVERTERS: dict[str, Converter] = {}


def converter(*types: str):
    def wrap(fn: Converter) -> Converter:
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return wrap


@converter("Convolution")
def convolution(layer, shapes, node):
    p = layer.param("convolution_param")
    c, h, w = _needs_map(layer, shapes[0])
    if p.get("num_output") is None:
        raise CaffeError(f"convolution '{layer.name}' has no num_output", "add num_output: N to convolution_param",
                         layer.pos)
    if p.get("axis", 1) != 1:
        raise CaffeError(f"convolution '{layer.name}' has axis {p.get('axis')}", "netspec convolves over axis 1",
                         layer.at("convolution_param", "axis"))
    kernel = _pair(layer, "convolution_param", "kernel", "kernel_size", None, 1)
    if kernel is None:
        raise CaffeError(f"convolution '{layer.name}' has no kernel_size", "add kernel_size: K", layer.pos)
    stride = _pair(layer, "convolution_param", "stride", "stride", 1, 1)
    pad = _pair(layer, "convolution_param", "pad", "pad", 0, 0)
    dilation = _pair(layer, "convolution_param", "dilation", "dilation", 1, 1)
    group, out = p.get("group", 1), p.get("num_output")
    for key, value in (("num_output", out), ("group", group)):
        if value < 1:
            raise CaffeError(f"convolution '{layer.name}' has {key} {value}; Caffe needs {key} ≥ 1",
                             f"give {key} a value ≥ 1", layer.at("convolution_param", key))
    if c % group or out % group:
        raise CaffeError(f"convolution '{layer.name}': group {group} does not divide its {c} input and {out} output "
                         "channels", "use a group that divides both", layer.at("convolution_param", "group"))
    spec = {"op": "conv", "out": out, "kernel": _value(kernel)}
    if stride != (1, 1):
        spec["stride"] = _value(stride)
    if pad != (0, 0):
        spec["pad"] = _value(pad)
    if dilation != (1, 1):
        spec["dilation"] = _value(dilation)
    if group != 1:
        spec["groups"] = group
    if not p.get("bias_term", True):
        spec["bias"] = False
    node.weighted = True
    node.filler, _ = _filler(layer, "convolution_param", "weight_filler", node.notes)
    node.bias = _bias(layer, "convolution_param") if p.get("bias_term", True) else None
    size = [(n + 2 * pd - (d * (k - 1) + 1)) // s + 1 for n, k, s, pd, d in zip((h, w), kernel, stride, pad, dilation)]
    if min(size) <= 0:
        raise CaffeError(f"convolution '{layer.name}': its {h}x{w} input is smaller than its kernel",
                         "check the input size", layer.pos)
    return spec, (out, *size)


def pooled(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Caffe's pooled size: rounded up (or down); with padding, the last window must start inside the image."""
    out = (math.ceil if ceil else math.floor)((n + 2 * p - k) / s) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


def torch_pooled(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooled size (ceil_mode drops a last window that would start in the right padding)."""
    out = (n + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


@converter("Pooling")
def pooling(layer, shapes, node):
    p = layer.param("pooling_param")
    c, h, w = _needs_map(layer, shapes[0])
    method = p.get("pool", "MAX")
    if method == "STOCHASTIC":
        raise CaffeError(f"pooling '{layer.name}' is STOCHASTIC, which netspec does not have",
                         "the closest netspec op is maxpool (pool: MAX)", layer.at("pooling_param", "pool"))
    op = "maxpool" if method == "MAX" else "avgpool"
    kernel = _pair(layer, "pooling_param", "kernel", "kernel_size", None, 1)
    stride = _pair(layer, "pooling_param", "stride", "stride", 1, 1)
    pad = _pair(layer, "pooling_param", "pad", "pad", 0, 0)
    if p.get("global_pooling", False):
        if kernel is not None:  # Caffe's PoolingLayer::LayerSetUp
            raise CaffeError(f"pooling '{layer.name}' has global_pooling and a kernel size, which Caffe refuses "
                             "(\"with global_pooling: true filter size cannot be specified\")",
                             "drop kernel_size (the window is the whole input)", layer.at("pooling_param", "global_pooling"))
        if pad != (0, 0) or stride != (1, 1):
            raise CaffeError(f"pooling '{layer.name}' has global_pooling with a pad or stride, which Caffe refuses "
                             "(\"only pad = 0 and stride = 1\")", "drop pad and stride",
                             layer.at("pooling_param", "global_pooling"))
        return {"op": op, "kernel": _value((h, w))}, (c, 1, 1)
    if kernel is None:
        raise CaffeError(f"pooling '{layer.name}' has no kernel_size", "add kernel_size: K, or global_pooling: true",
                         layer.pos)
    ceil = p.get("round_mode", "CEIL") == "CEIL"
    size = []
    for n, k, s, pd in zip((h, w), kernel, stride, pad):
        caffe, torch = pooled(n, k, s, pd, ceil), torch_pooled(n, k, s, pd, ceil)
        if pd > k // 2:
            raise CaffeError(f"pooling '{layer.name}': pad {pd} is more than half its kernel {k}; PyTorch's pooling "
                             "(netspec's) allows at most half", "lower the pad (and check the sizes that follow)",
                             layer.at("pooling_param", "pad"))
        if caffe != torch:
            raise CaffeError(f"pooling '{layer.name}': Caffe pools {n} to {caffe} (kernel {k}, stride {s}, pad {pd}), "
                             f"netspec's {op} with ceil: {str(ceil).lower()} to {torch}: their rounding differs here",
                             "change kernel, stride or pad so that the two agree (e.g. a kernel at least the stride)",
                             layer.pos)
        size.append(caffe)
    spec = {"op": op, "kernel": _value(kernel), "stride": _value(stride)}
    if pad != (0, 0):
        spec["pad"] = _value(pad)
    if ceil:
        spec["ceil"] = True
    return spec, (c, *size)


@converter("InnerProduct")
def inner_product(layer, shapes, node):
    p = layer.param("inner_product_param")
    if p.get("num_output") is None:
        raise CaffeError(f"inner product '{layer.name}' has no num_output", "add num_output: N to inner_product_param",
                         layer.pos)
    if p.get("num_output") < 1:
        raise CaffeError(f"inner product '{layer.name}' has num_output {p.get('num_output')}",
                         "give num_output a value ≥ 1", layer.at("inner_product_param", "num_output"))
    if p.get("axis", 1) != 1:
        raise CaffeError(f"inner product '{layer.name}' has axis {p.get('axis')}",
                         "netspec's fc flattens from axis 1", layer.at("inner_product_param", "axis"))
    if p.get("transpose", False):
        node.notes.append("transpose: true (its weights are transposed on import)")
    spec = {"op": "fc", "out": p.get("num_output")}
    if not p.get("bias_term", True):
        spec["bias"] = False
    node.weighted = True
    node.filler, _ = _filler(layer, "inner_product_param", "weight_filler", node.notes)
    node.bias = _bias(layer, "inner_product_param") if p.get("bias_term", True) else None
    return spec, (p.get("num_output"),)


@converter("ReLU")
def relu(layer, shapes, node):
    slope = layer.param("relu_param").get("negative_slope", 0.0)
    return ({"op": "leaky_relu", "slope": slope} if slope else {"op": "relu"}), shapes[0]


@converter("PReLU")
def prelu(layer, shapes, node):
    p = layer.param("prelu_param")
    spec = {"op": "prelu"}
    if p.get("channel_shared", False):
        spec["shared"] = True
    filler = p.get("filler")
    if filler is not None:
        if filler.get("type", "constant") != "constant":
            raise CaffeError(f"prelu '{layer.name}': filler '{filler.get('type')}' is not supported",
                             "netspec's prelu starts from one slope: use type: \"constant\"", filler.pos("type"))
        spec["slope"] = filler.get("value", 0.0)
    return spec, shapes[0]


@converter("Sigmoid")
def sigmoid(layer, shapes, node):
    return {"op": "sigmoid"}, shapes[0]


@converter("TanH")
def tanh(layer, shapes, node):
    return {"op": "tanh"}, shapes[0]


@converter("LRN")
def lrn(layer, shapes, node):
    p = layer.param("lrn_param")
    _needs_map(layer, shapes[0])
    if p.get("norm_region", "ACROSS_CHANNELS") == "WITHIN_CHANNEL":
        raise CaffeError(f"LRN '{layer.name}' normalises WITHIN_CHANNEL, which netspec does not have",
                         "the closest netspec op is lrn (across channels: norm_region: ACROSS_CHANNELS)",
                         layer.at("lrn_param", "norm_region"))
    if p.get("local_size", 5) % 2 == 0:
        raise CaffeError(f"LRN '{layer.name}' has local_size {p.get('local_size')}; Caffe's LRN takes an odd size "
                         "(\"LRN only supports odd values for local_size\")", "give an odd local_size (e.g. 5)",
                         layer.at("lrn_param", "local_size"))
    spec = {"op": "lrn", "size": p.get("local_size", 5), "alpha": p.get("alpha", 1.0), "beta": p.get("beta", 0.75)}
    if p.get("k", 1.0) != 1.0:
        spec["k"] = p.get("k")
    return spec, shapes[0]


@converter("Dropout")
def dropout(layer, shapes, node):
    return {"op": "dropout", "p": layer.param("dropout_param").get("dropout_ratio", 0.5)}, shapes[0]


@converter("BatchNorm")
def batch_norm(layer, shapes, node):
    p = layer.param("batch_norm_param")
    spec = {"op": "batchnorm", "affine": False}  # a Scale layer after it makes it affine
    if p.get("eps", 1e-5) != 1e-5:
        spec["eps"] = p.get("eps")
    if p.has("moving_average_fraction"):
        spec["momentum"] = round(1.0 - p.get("moving_average_fraction"), 9)
    if p.has("use_global_stats"):
        node.notes.append("use_global_stats dropped: netspec uses batch statistics in training, running ones in eval")
    node.mults = []  # Caffe's lr_mult 0 on the statistics blobs is not a parameter multiplier
    return spec, shapes[0]


@converter("Eltwise")
def eltwise(layer, shapes, node):
    p = layer.param("eltwise_param")
    if len(set(shapes)) > 1:
        raise CaffeError(f"eltwise '{layer.name}' adds inputs of different shapes {sorted(set(shapes))}",
                         "its bottoms must have one shape", layer.pos)
    operation = p.get("operation", "SUM")
    coeff = p.all("coeff")
    if coeff and len(coeff) != len(layer.bottoms):
        raise CaffeError(f"eltwise '{layer.name}' has {len(coeff)} coeff for {len(layer.bottoms)} bottoms",
                         "give one coeff per bottom", layer.at("eltwise_param", "coeff"))
    if coeff and operation != "SUM":
        raise CaffeError(f"eltwise '{layer.name}': coeff is for SUM only", "remove coeff",
                         layer.at("eltwise_param", "coeff"))
    if operation == "SUM" and all(c == 1 for c in coeff):
        return {"op": "add"}, shapes[0]
    spec = {"op": "eltwise", "operation": str(operation).lower()}
    if coeff:
        spec["coeff"] = coeff
    return spec, shapes[0]


@converter("Concat")
def concat(layer, shapes, node):
    p = layer.param("concat_param")
    axis = p.get("axis", p.get("concat_dim", 1))
    if axis != 1:
        raise CaffeError(f"concat '{layer.name}' joins along axis {axis}", "netspec concatenates channels (axis 1)",
                         layer.pos)
    if len({s[1:] for s in shapes}) > 1:
        raise CaffeError(f"concat '{layer.name}' joins maps of different sizes {[s[1:] for s in shapes]}",
                         "its bottoms must have one height and width", layer.pos)
    if len(layer.bottoms) == 1:
        return {"op": "identity"}, shapes[0]
    return {"op": "concat"}, (sum(s[0] for s in shapes), *shapes[0][1:])


@converter("Flatten")
def flatten(layer, shapes, node):
    p = layer.param("flatten_param")
    if p.get("axis", 1) != 1 or p.get("end_axis", -1) != -1:
        raise CaffeError(f"flatten '{layer.name}' flattens axes {p.get('axis', 1)}..{p.get('end_axis', -1)}",
                         "netspec's flatten keeps the batch axis and flattens the rest (axis 1, end_axis -1)",
                         layer.pos)
    return {"op": "flatten"}, (math.prod(shapes[0]),)


@converter("Softmax")
def softmax(layer, shapes, node):
    if layer.param("softmax_param").get("axis", 1) != 1:
        raise CaffeError(f"softmax '{layer.name}' is over axis {layer.param('softmax_param').get('axis')}",
                         "netspec's softmax is over channels (axis 1)", layer.pos)
    return {"op": "softmax"}, shapes[0]


LOSSES = {"SoftmaxWithLoss"}
DROPPED = {"Accuracy": "the per-exit accuracy table replaces it", "Silence": "it only silences blobs"}


# --- the net ---------------------------------------------------------------------------------

def _included(msg: Message, phase: str) -> bool:
    """Caffe's NetStateRule for the net of `phase` (TRAIN or TEST; level 0, no stages)."""
    def meets(rule: Message) -> bool:
        if rule.has("phase") and rule.get("phase") != phase:
            return False
        if rule.get("min_level", 0) > 0 or rule.get("max_level", 0) < 0:
            return False
        return not rule.all("stage")
    include, exclude = msg.all("include"), msg.all("exclude")
    if include:
        return any(meets(r) for r in include)
    return not any(meets(r) for r in exclude)


def layers_of(net: Message, phase: str = "TRAIN") -> list[Layer]:
    """The net's layers (V2 `layer` or V1 `layers`) of one phase, normalised."""
    v2, v1 = net.all("layer"), net.all("layers")
    if v2 and v1:
        raise CaffeError("the net mixes `layer` (V2) and `layers` (V1)", "upgrade it with Caffe's "
                         "upgrade_net_proto_text, or use one kind", v1[0].pos())
    out = []
    for msg in v2 or v1:
        if not _included(msg, phase):
            continue
        name = msg.get("name", "")
        if v1:
            kind = V1_NAMES.get(str(msg.get("type", "NONE")), str(msg.get("type", "NONE")))
            lr, decay = msg.all("blobs_lr"), msg.all("weight_decay")
        else:
            kind = msg.get("type", "")
            lr = [p.get("lr_mult", 1.0) for p in msg.all("param")]
            decay = [p.get("decay_mult", 1.0) for p in msg.all("param")]
        if not kind:
            raise CaffeError(f"layer '{name}' has no type", 'add type: "Convolution" (or another layer type)',
                             msg.pos())
        count = max(len(lr), len(decay))
        mults = [(lr[i] if i < len(lr) else 1.0, decay[i] if i < len(decay) else 1.0) for i in range(count)]
        out.append(Layer(name or f"{kind.lower()}{len(out)}", kind, msg.all("bottom"), msg.all("top"), msg,
                         msg.pos(), mults, msg.all("loss_weight")))
    return out


Value = tuple[int, int]  # (index of the producing layer, index of its top); the net's inputs are (-1, k)


def blob_values(layers: list[Layer], inputs: list[str]) -> tuple[list[list[Value | None]], dict[Value, list[int]]]:
    """Which value each layer's bottoms read (a blob written in place is a new value; a Split's tops are its
    bottom's value) and the layers that read each value; refuses a top produced twice, as Caffe's Net::Init does."""
    current: dict[str, Value] = {name: (-1, k) for k, name in enumerate(inputs)}
    writer: dict[str, Layer | None] = {name: None for name in inputs}
    reads: list[list[Value | None]] = []
    readers: dict[Value, list[int]] = {}
    for i, layer in enumerate(layers):
        values = [current.get(b) for b in layer.bottoms]
        reads.append(values)
        if layer.type != "Split":
            for v in values:
                if v is not None:
                    readers.setdefault(v, []).append(i)
        for j, top in enumerate(layer.tops):
            in_place = j < len(layer.bottoms) and layer.bottoms[j] == top
            if top in writer and not in_place:
                first = writer[top]
                where = f"layer '{first.name}' (line {first.pos.line})" if first else "the net's `input:`"
                raise CaffeError(f"top '{top}' of layer '{layer.name}' is also produced by {where}; Caffe refuses a "
                                 "blob produced by two layers (\"produced by multiple sources\")",
                                 "rename one of the tops, or write it in place (the same blob as bottom and top, at "
                                 "the same position)", layer.msg.pos("top"))
            writer[top] = layer
            current[top] = values[0] if layer.type == "Split" and values and values[0] else (i, j)
    return reads, readers


@dataclass
class DataParams:
    """What a data layer says of its data: data_param / image_data_param and transform_param (Caffe's old
    data_param copies of scale, crop_size, mirror and mean_file count when transform_param lacks them)."""

    layer: Layer
    source: str | None
    backend: str | None  # as written: LMDB, LEVELDB, or None (Caffe's default, LEVELDB)
    batch_size: int | None
    crop: int
    mean: list[float]
    mean_file: str | None
    scale: float
    mirror: bool
    param: str | None  # the layer's parameter message

    def pos(self, key: str) -> Pos:
        for param in ("transform_param", self.param):
            if param and self.layer.msg.get(param) is not None and self.layer.msg.get(param).has(key):
                return self.layer.at(param, key)
        return self.layer.pos


def data_params(layer: Layer) -> DataParams:
    t = layer.param("transform_param")
    param = {"Data": "data_param", "ImageData": "image_data_param", "HDF5Data": "hdf5_data_param"}.get(layer.type)
    p = layer.param(param) if param else Message("*", layer.pos.file, layer.pos.line)
    out = DataParams(layer, p.get("source"), p.get("backend"), p.get("batch_size"),
                     t.get("crop_size", 0) or p.get("crop_size", 0), t.all("mean_value"),
                     t.get("mean_file", p.get("mean_file")), t.get("scale", p.get("scale", 1.0)),
                     t.get("mirror", False) or p.get("mirror", False), param)
    if out.mean_file and out.mean:  # Caffe's DataTransformer constructor
        raise CaffeError(f"data layer '{layer.name}' gives both mean_file and mean_value, which Caffe refuses "
                         "(\"cannot specify mean_file and mean_value at the same time\")", "keep one of them",
                         out.pos("mean_value"))
    return out


def data_layer(net: Message, phase: str) -> Layer | None:
    """The first data layer of the net of `phase`."""
    return next((layer for layer in layers_of(net, phase) if layer.type in DATA_TYPES), None)


def _data_input(layer: Layer, info: InputInfo) -> None:
    """A data layer's shape (crop_size, mean_value → channels) and the training settings it carries."""
    d = data_params(layer)
    p = layer.param(d.param) if d.param else Message("*", layer.pos.file, layer.pos.line)
    info.mean, info.scale, info.mirror, info.crop_size, info.batch_size = d.mean, d.scale, d.mirror, d.crop, d.batch_size
    channels = len(d.mean) if len(d.mean) > 1 else (1 if layer.type == "ImageData" and not p.get("is_color", True)
                                                    else None)
    size = (d.crop, d.crop) if d.crop else (p.get("new_height"), p.get("new_width")) if p.get("new_height") else None
    if channels and size:
        info.shape = (channels, *size)
    if len(d.mean) == 3:
        info.comments.append("Caffe reads images as BGR: input.mean and conv weights keep Caffe's channel order "
                             "(source lmdb keeps it; netspec's image-file readers give RGB)")
    if d.source:
        backend = f" ({d.backend or 'LEVELDB'})" if layer.type == "Data" else ""
        info.comments.append(f"Caffe's {layer.type} layer '{layer.name}' ({layer.pos}) reads {d.source}{backend}")
    if d.mean_file:
        info.comments.append(f"it subtracts the mean image {d.mean_file} (data.mean_file, for source lmdb)")
    if d.crop:
        info.comments.append(f"it crops {d.crop}x{d.crop} windows at random and "
                             f"{'mirrors them' if info.mirror else 'does not mirror'}: netspec's input is the "
                             "crop's size (data.crop: caffe, for source lmdb)")


def _network_input(net: Message, info: InputInfo) -> str | None:
    """`input:` with `input_shape` or `input_dim` (deploy nets)."""
    names = net.all("input")
    if not names:
        return None
    others = [n for n in names[1:] if "label" not in n.lower()]
    if others:
        raise CaffeError(f"the net has {len(names)} inputs ({', '.join(names)})", "netspec networks have one input "
                         "(and labels: an input named like 'label')", net.pos("input"))
    dims = net.all("input_dim")[:4]
    shapes = net.all("input_shape")
    if shapes:
        dims = shapes[0].all("dim")
    if dims:
        if len(dims) != 4:
            raise CaffeError(f"the input's shape has {len(dims)} dimensions", "give N, C, H, W",
                             net.pos("input_shape" if shapes else "input_dim"))
        info.shape = tuple(dims[1:])
    info.pos = net.pos("input")
    return names[0]


def _fold_scale(layer: Layer, bn: NetNode, readers: list[int], layers: list[Layer], index: int) -> None:
    """Fold the Scale `layer` into the BatchNorm node `bn` it reads — only when it is the one reader of the
    BatchNorm's output: any other reader would get the scaled values, and netspec has no standalone Scale."""
    others = [layers[i] for i in readers if i != index]
    if others:
        other = others[0]
        raise CaffeError(f"scale '{layer.name}' follows BatchNorm '{bn.caffe}', whose output '{other.name}' "
                         f"(line {other.pos.line}) also reads: folding the Scale into the BatchNorm would give "
                         f"'{other.name}' scaled values, and netspec has no standalone Scale",
                         f"let '{other.name}' read the Scale's output, or drop the Scale", layer.pos)
    p = layer.param("scale_param")
    if p.get("axis", 1) != 1 or p.get("num_axes", 1) != 1:
        raise CaffeError(f"scale '{layer.name}' after a BatchNorm scales axes other than the channels",
                         "netspec folds only a per-channel Scale (axis 1, num_axes 1)", layer.pos)
    bn.spec["affine"] = True
    bn.scale_layer = layer.name
    bn.mults = layer.mults
    bn.notes.append(f"Caffe's BatchNorm '{bn.caffe}' + Scale '{layer.name}' (line {layer.pos.line})")
    if not p.get("bias_term", False):
        bn.notes.append("the Scale has no bias: netspec's batchnorm learns one (starts at 0)")


def read_net(net: Message, input_shape: Shape | None = None) -> Net:
    """The TRAIN net of a parsed NetParameter as netspec nodes, losses and input."""
    file = net.file
    info, notes = InputInfo(), []
    blobs: dict[str, Any] = {}  # blob → the node that produces it now (or the input's name, or LABEL)
    taken: set[str] = set()
    nodes: dict[str, NetNode] = {}
    shapes: dict[str, Shape] = {}
    losses: list[Loss] = []
    input_blob = _network_input(net, info)
    if input_blob:
        blobs[input_blob] = info.name = spec_name(input_blob, taken)
        for label in net.all("input")[1:]:
            blobs[label] = LABEL
    layers = layers_of(net)
    if not layers:
        raise CaffeError("the net has no layers (in the TRAIN phase)", "give `layer { ... }` entries", net.pos())
    reads, readers = blob_values(layers, net.all("input"))
    for index, layer in enumerate(layers):
        if layer.type in DATA_TYPES:
            if any(b is not LABEL and b == info.name for b in blobs.values()):
                raise CaffeError(f"data layer '{layer.name}' is a second input", "netspec networks have one input",
                                 layer.pos)
            if not layer.tops:
                raise CaffeError(f"data layer '{layer.name}' has no top", 'add top: "data"', layer.pos)
            if layer.type == "Input":
                shapes_given = layer.param("input_param").all("shape")
                if len(shapes_given) not in (0, 1, len(layer.tops)):  # Caffe's InputLayer::LayerSetUp
                    raise CaffeError(f"Input layer '{layer.name}' has {len(shapes_given)} shapes for "
                                     f"{len(layer.tops)} tops", "give one shape, or one per top (Caffe: \"must "
                                     "specify 'shape' once, once per top blob, or not at all\")", layer.pos)
                shape = shapes_given[0].all("dim") if shapes_given else []
                if len(shape) == 4:
                    info.shape = tuple(shape[1:])
            else:
                _data_input(layer, info)
            info.pos = layer.pos
            blobs[layer.tops[0]] = info.name = spec_name(layer.tops[0], taken)
            for top in layer.tops[1:]:
                blobs[top] = LABEL
            continue
        if info.pos is None:
            raise CaffeError(f"layer '{layer.name}' comes before any input", "start the net with a data or Input "
                             "layer, or with input: and input_shape", layer.pos)
        if input_shape:
            info.shape = tuple(input_shape)
        if info.shape is None:
            raise CaffeError("the input's shape is not in the prototxt (a data layer's channels and size come from "
                             "its database)", "give it with --input-shape C,H,W (e.g. 3,227,227)", info.pos)
        shapes.setdefault(info.name, tuple(info.shape))
        for bottom in layer.bottoms:
            if bottom not in blobs:
                raise CaffeError(f"layer '{layer.name}' reads bottom '{bottom}', which no layer before it produces",
                                 did_you_mean(bottom, [b for b in blobs]), layer.msg.pos("bottom"))
        sources = [blobs[b] for b in layer.bottoms]
        if layer.type in LOSSES:
            if not sources or sources[0] is LABEL:
                raise CaffeError(f"loss '{layer.name}' has no prediction bottom", 'its first bottom is the scores',
                                 layer.pos)
            weight = layer.loss_weight[0] if layer.loss_weight else 1.0
            if weight:
                losses.append(Loss(layer.name, layer.type, sources[0], weight, layer.pos))
            else:
                notes.append(f"loss '{layer.name}' ({layer.pos}) has loss_weight 0: dropped")
            continue
        if layer.type in DROPPED:
            notes.append(f"dropped {layer.type} layer '{layer.name}' ({layer.pos}): {DROPPED[layer.type]}")
            continue
        if layer.type == "Split":
            if len(sources) != 1:
                raise CaffeError(f"split '{layer.name}' has {len(sources)} bottoms", "a Split copies one bottom",
                                 layer.pos)
            for top in layer.tops:
                blobs[top] = sources[0]
            continue
        if layer.type == "Scale" and len(sources) == 1 and sources[0] in nodes \
                and nodes[sources[0]].type == "BatchNorm" and nodes[sources[0]].scale_layer is None:
            _fold_scale(layer, nodes[sources[0]], readers.get(reads[index][0], []), layers, index)
            for top in layer.tops:
                blobs[top] = sources[0]
            continue
        fn = CONVERTERS.get(layer.type)
        if fn is None:
            closest = CLOSEST.get(layer.type)
            raise CaffeError(f"layer '{layer.name}' has type '{layer.type}', which netspec cannot import",
                             f"closest netspec op: {closest}" if closest else
                             (did_you_mean(layer.type, [*CONVERTERS, *LOSSES, *DROPPED, "Split", "Scale", *DATA_TYPES])
                              + "; see docs/caffe.md for what is supported"), layer.msg.pos("type"))
        if any(s is LABEL for s in sources):
            raise CaffeError(f"layer '{layer.name}' ({layer.type}) reads the labels", "only loss and accuracy "
                             "layers may read the label blob", layer.pos)
        if len(layer.tops) != 1:
            raise CaffeError(f"layer '{layer.name}' has {len(layer.tops)} tops", "netspec's layers have one output",
                             layer.pos)
        if not sources:
            raise CaffeError(f"layer '{layer.name}' has no bottom", "add bottom: \"...\"", layer.pos)
        multi = layer.type in ("Eltwise", "Concat")
        if len(sources) > 1 and not multi:
            raise CaffeError(f"layer '{layer.name}' ({layer.type}) has {len(sources)} bottoms", "it takes one",
                             layer.pos)
        node = NetNode(spec_name(layer.name, taken), layer.name, layer.type, {}, sources, layer.pos, (),
                       mults=layer.mults)
        node.spec, node.shape = fn(layer, [shapes[s] for s in sources], node)
        nodes[node.name] = node
        shapes[node.name] = node.shape
        blobs[layer.tops[0]] = node.name
    if info.pos is None:
        raise CaffeError("the net has no input", "add a data or Input layer, or input: with input_shape", net.pos())
    return Net(net.get("name", ""), file, info, list(nodes.values()), losses, notes)


def most_common(values: list) -> Any:
    counts = Counter(repr(v) for v in values)
    best = counts.most_common(1)[0][0] if counts else None
    return next((v for v in values if repr(v) == best), None)
