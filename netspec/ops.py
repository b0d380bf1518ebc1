"""The op registry: every layer type is one pydantic model (its fields are the spec's keys) with a
`build` method that makes the torch module for known input shapes. Adding an op is one class here.

`build` returns an `nn.Module` (lowered to `call_module`, its parameters named after the node) or a
`Call` (a plain function, lowered to `call_function`). Shapes are (C, H, W) or (F,), batch excluded.
"""
from __future__ import annotations

import importlib
import keyword
import operator
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Literal, Union

import torch
from pydantic import Field, PrivateAttr, field_validator
from torch import fx, nn

from netspec.registry import Registry
from netspec.schema_base import Strict

Shape = tuple[int, ...]
IntPair = Union[int, tuple[int, int]]
Size = Annotated[int, Field(ge=1)]  # a kernel, stride or dilation: 1 or more
Pad = Annotated[int, Field(ge=0)]
SizePair = Union[Size, tuple[Size, Size]]
PadPair = Union[Pad, tuple[Pad, Pad]]

REGISTRY = Registry("op")
register = REGISTRY.register  # class decorator: make an op usable in specs under the name in its `op` Literal


@dataclass
class Call:
    """A parameter-free op lowered to a function call: fn(*inputs, **kwargs)."""

    fn: Callable
    kwargs: dict[str, Any] = field(default_factory=dict)


NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME = 100
# a submodule with such a name would shadow a method or attribute of the module holding it
RESERVED_NAMES = frozenset(dir(fx.GraphModule(nn.Module(), fx.Graph())))


def check_name(name: str) -> str:
    """A node, branch, input or loss name: an identifier (not a Python keyword: it names a variable of the
    generated forward) that is not an nn.Module/GraphModule attribute, short enough for any file or ONNX name."""
    if not NAME.match(name) or len(name) > MAX_NAME:
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise ValueError(f"'{shown}' is not a valid name: use 1 to {MAX_NAME} letters, digits and _, not starting "
                         "with a digit (no dots, dashes or spaces)")
    if keyword.iskeyword(name) or name == "self":
        what = "a Python keyword" if name != "self" else "the generated forward's own first argument"
        raise ValueError(f"'{name}' is {what} (it would name a variable of the generated code); "
                         f"choose another name, e.g. '{name}_'")
    if name in RESERVED_NAMES:
        raise ValueError(f"'{name}' is reserved (a method of torch modules); choose another name, e.g. '{name}_'")
    return name


class NodeBase(Strict):
    """What every entry of a `nodes:` list has: a name and its inputs."""

    name: str = Field(description="unique node name (letters, digits, _); also the name of its parameters "
                                  "(name.weight)")
    from_: str | list[str] | None = Field(
        default=None, alias="from",
        description="input node(s) (Caffe's bottom); defaults to the previous node")

    _valid_name = field_validator("name")(classmethod(lambda cls, value: check_name(value)))

    @property
    def inputs(self) -> list[str]:
        if self.from_ is None:
            return []
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)


class OpNode(NodeBase):
    """A node computed by one op of the registry."""

    init: "NodeInit | None" = Field(default=None, description="weight/bias initialisation for this node only")

    weighted: ClassVar[bool] = False  # has a weight tensor that `init:` applies to (conv, fc)
    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # min, max number of inputs
    keeps_shape: ClassVar[bool] = False  # output shape = input shape (element-wise ops skip the meta run)
    needs_map: ClassVar[bool] = False  # needs a (C, H, W) feature map, not a (F,) vector
    deploy_identity: ClassVar[bool] = False  # training-only identity (grad_scale): dropped when deployed

    @field_validator("from_")
    @classmethod
    def _inputs_not_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("`from: []` names no input; leave `from` out to take the previous node")
        return value

    def build(self, shapes: list[Shape]) -> nn.Module | Call:
        raise NotImplementedError

    def flops(self, module: nn.Module | Call, out_shape: Shape) -> int:
        """Forward FLOPs for one example, counted as torch's FlopCounterMode does (2 × multiply-adds
        of conv and matmul; element-wise ops count 0). A test checks every op against it."""
        return 0


Factor = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a finite number >= 0


class Multiplier(Strict):
    """A per-tensor multiplier (Caffe's `param { lr_mult decay_mult }`, V1's `blobs_lr` / `weight_decay`):
    a number for every tensor of the node, or `{weight: x, bias: y}`; a key left out takes the spec's
    default (`train.lr_mult` / `train.decay_mult`), else 1. `bias` is the bias tensor; `weight` every other
    tensor of the node (a batchnorm's scale, a prelu's slopes)."""

    __section__ = "multiplier"

    weight: Factor | None = Field(default=None, description="multiplier of the weight tensor(s)")
    bias: Factor | None = Field(default=None, description="multiplier of the bias")

    def get(self, tensor: str) -> float | None:
        return self.bias if tensor == "bias" else self.weight


def multiplier_shorthand(value: Any) -> Any:
    """`lr_mult: 2` is `{weight: 2, bias: 2}`; a bool or a string is an error, not 1.0 / a parsed number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, dict, Multiplier, type(None))):
        raise ValueError(f"must be a number >= 0 or {{weight: x, bias: y}}, got {value!r}")
    return {"weight": value, "bias": value} if isinstance(value, (int, float)) else value


class ParamOp(OpNode):
    """An op with learnable tensors: it takes per-tensor learning-rate and weight-decay multipliers."""

    lr_mult: Multiplier | None = Field(default=None, description="learning-rate multiplier: a number, or "
                                       "{weight: x, bias: y} (Caffe's lr_mult); default train.lr_mult, else 1")
    decay_mult: Multiplier | None = Field(default=None, description="weight-decay multiplier: a number, or "
                                          "{weight: x, bias: y} (Caffe's decay_mult); default train.decay_mult, else 1")

    _mult_shorthand = field_validator("lr_mult", "decay_mult", mode="before")(
        classmethod(lambda cls, value: multiplier_shorthand(value)))


def multipliers(op: OpNode | None, lr_default: Multiplier | None, decay_default: Multiplier | None,
                tensor: str) -> tuple[float, float]:
    """(lr multiplier, decay multiplier) of one tensor (`weight` or `bias`) of a node: the node's value over
    the spec-wide default over 1."""
    def pick(own: Multiplier | None, default: Multiplier | None) -> float:
        for source in (own, default):
            value = source.get(tensor) if source is not None else None
            if value is not None:
                return value
        return 1.0
    return (pick(getattr(op, "lr_mult", None), lr_default), pick(getattr(op, "decay_mult", None), decay_default))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient × scale backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Gradient-scaling edge: returns x; the gradient flowing back through it is multiplied by `scale`."""
    return _ScaleGrad.apply(x, scale)


def pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Linear(nn.Linear):
    """Caffe's InnerProduct: flattens its input first, so it follows conv or pooling directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


class ZeroPadShortcut(nn.Module):
    """ResNet option A shortcut: subsample by `stride`, zero-pad the extra channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x


def add(*xs: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of two or more tensors (residual connections)."""
    out = operator.add(xs[0], xs[1])
    for x in xs[2:]:
        out = operator.add(out, x)
    return out


def concat(*xs: torch.Tensor) -> torch.Tensor:
    """Concatenation along channels."""
    return torch.cat(xs, dim=1)


# --- layers with parameters -------------------------------------------------------------------

@register
class Conv(ParamOp):
    """2-D convolution (Caffe Convolution)."""

    needs_map: ClassVar[bool] = True

    op: Literal["conv"]
    out: int = Field(gt=0, description="output channels")
    kernel: SizePair = Field(description="kernel size, int or [h, w]")
    stride: SizePair = Field(default=1, description="stride, int or [h, w]")
    pad: PadPair | Literal["same"] = Field(default=0, description="zero padding, int, [h, w] or 'same'")
    dilation: SizePair = Field(default=1, description="dilation, int or [h, w]")
    groups: Size | Literal["depthwise"] = Field(default=1, description="channel groups; 'depthwise' = one per input channel")
    bias: bool = Field(default=True, description="learn a bias term")
    weighted: ClassVar[bool] = True

    def build(self, shapes):
        channels = shapes[0][0]
        groups = channels if self.groups == "depthwise" else self.groups
        return nn.Conv2d(channels, self.out, pair(self.kernel), pair(self.stride),
                         self.pad if self.pad == "same" else pair(self.pad), pair(self.dilation), groups, self.bias)

    def flops(self, module, out_shape):
        return 2 * module.weight[0].numel() * int(torch.Size(out_shape).numel())


@register
class FC(ParamOp):
    """Fully connected layer (Caffe InnerProduct); flattens its input."""

    op: Literal["fc"]
    out: int = Field(gt=0, description="output features")
    bias: bool = Field(default=True, description="learn a bias term")
    weighted: ClassVar[bool] = True

    def build(self, shapes):
        return Linear(int(torch.Size(shapes[0]).numel()), self.out, self.bias)

    def flops(self, module, out_shape):
        return 2 * module.in_features * module.out_features


@register
class BatchNorm(ParamOp):
    """Batch normalisation over channels (2-D for maps, 1-D for vectors)."""

    op: Literal["batchnorm"]
    eps: float = Field(default=1e-5, gt=0, description="added to the variance")
    momentum: float = Field(default=0.1, ge=0, le=1, description="running statistics momentum")
    affine: bool = Field(default=True, description="learn scale and shift")
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        kind = nn.BatchNorm2d if len(shapes[0]) == 3 else nn.BatchNorm1d
        return kind(shapes[0][0], self.eps, self.momentum, self.affine)


@register
class PReLU(ParamOp):
    """Parametric ReLU, one slope per channel (or one shared)."""

    op: Literal["prelu"]
    shared: bool = Field(default=False, description="one slope for all channels")
    slope: float = Field(default=0.25, description="initial slope")
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.PReLU(1 if self.shared else shapes[0][0], self.slope)


# --- activations, pooling, normalisation ------------------------------------------------------

@register
class ReLU(OpNode):
    """Rectified linear unit."""

    op: Literal["relu"]
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.ReLU()


@register
class LeakyReLU(OpNode):
    """Leaky ReLU."""

    op: Literal["leaky_relu"]
    slope: float = Field(default=0.01, description="negative slope")
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.LeakyReLU(self.slope)


class _Pool(OpNode):
    needs_map: ClassVar[bool] = True
    kernel: SizePair = Field(description="window size, int or [h, w]")
    stride: SizePair | None = Field(default=None, description="stride; defaults to the kernel size")
    pad: PadPair = Field(default=0, description="zero padding, int or [h, w]")
    ceil: bool = Field(default=False, description="Caffe's rounding: output size rounded up, not down")

    def _args(self):
        return pair(self.kernel), pair(self.stride if self.stride is not None else self.kernel), pair(self.pad)


@register
class MaxPool(_Pool):
    """Max pooling (Caffe Pooling MAX)."""

    op: Literal["maxpool"]

    def build(self, shapes):
        kernel, stride, pad = self._args()
        return nn.MaxPool2d(kernel, stride, pad, ceil_mode=self.ceil)


@register
class AvgPool(_Pool):
    """Average pooling (Caffe Pooling AVE)."""

    op: Literal["avgpool"]

    def build(self, shapes):
        kernel, stride, pad = self._args()
        return nn.AvgPool2d(kernel, stride, pad, ceil_mode=self.ceil)


@register
class GlobalAvgPool(OpNode):
    """Global average pooling to a (C,) vector."""

    needs_map: ClassVar[bool] = True

    op: Literal["gap"]

    def build(self, shapes):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


@register
class LRN(OpNode):
    """Local response normalisation across channels (AlexNet, Caffe LRN)."""

    needs_map: ClassVar[bool] = True

    op: Literal["lrn"]
    size: int = Field(default=5, gt=0, description="channels in the window")
    alpha: float = Field(default=1e-4, description="scale (divided by size, as in Caffe)")
    beta: float = Field(default=0.75, description="exponent")
    k: float = Field(default=1.0, description="additive constant")
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.LocalResponseNorm(self.size, self.alpha, self.beta, self.k)


@register
class Dropout(OpNode):
    """Dropout (training only)."""

    op: Literal["dropout"]
    p: float = Field(default=0.5, ge=0, lt=1, description="drop probability")
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.Dropout(self.p)


@register
class Softmax(OpNode):
    """Softmax over classes (dim 1), for a probability output."""

    op: Literal["softmax"]
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.Softmax(dim=1)


# (Caffe import: Sigmoid, TanH and Eltwise layers)
@register
class Sigmoid(OpNode):
    """Logistic sigmoid (Caffe Sigmoid)."""

    op: Literal["sigmoid"]
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.Sigmoid()


@register
class Tanh(OpNode):
    """Hyperbolic tangent (Caffe TanH)."""

    op: Literal["tanh"]
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.Tanh()


def eltwise_sum(*xs: torch.Tensor, coeff: tuple[float, ...]) -> torch.Tensor:
    """Σ coeff_i · x_i (Caffe Eltwise SUM with coeff)."""
    out = xs[0] * coeff[0]
    for x, c in zip(xs[1:], coeff[1:]):
        out = out + x * c
    return out


def eltwise_prod(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def eltwise_max(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


@register
class Eltwise(OpNode):
    """Element-wise sum with coefficients, product or maximum of inputs of one shape (Caffe Eltwise);
    a plain sum is `add`."""

    op: Literal["eltwise"]
    operation: Literal["sum", "prod", "max"] = Field(default="sum", description="sum, prod or max")
    coeff: list[float] | None = Field(default=None, description="with sum: one coefficient per input")
    arity: ClassVar = (2, None)

    def build(self, shapes):
        if len({tuple(s) for s in shapes}) > 1:
            raise ValueError("the inputs' shapes differ")
        if self.coeff is not None and (self.operation != "sum" or len(self.coeff) != len(shapes)):
            raise ValueError(f"coeff needs operation sum and one value per input ({len(shapes)})")
        if self.operation == "sum":
            return Call(eltwise_sum, {"coeff": tuple(self.coeff or [1.0] * len(shapes))})
        return Call(eltwise_prod if self.operation == "prod" else eltwise_max)


# --- structure: flatten, add, concat, identity, shortcut -------------------------------------

@register
class Flatten(OpNode):
    """Flatten to (C*H*W,)."""

    op: Literal["flatten"]

    def build(self, shapes):
        return Call(torch.flatten, {"start_dim": 1})


@register
class Identity(OpNode):
    """Passes its input through (a named tap point)."""

    op: Literal["identity"]
    keeps_shape: ClassVar[bool] = True

    def build(self, shapes):
        return nn.Identity()


@register
class GradScale(OpNode):
    """Gradient-scaling edge: identity in the forward pass, gradient × `scale` in the backward pass (MW-BP's
    per-exit γ_p/Γ_p). Training only: pruning and export drop it. Usually written `branches.<name>.grad_scale`."""

    op: Literal["grad_scale"]
    scale: Factor = Field(description="the factor the gradient is multiplied by (>= 0; 0 stops it)")
    keeps_shape: ClassVar[bool] = True
    deploy_identity: ClassVar[bool] = True  # dropped from deployed (pruned, exported) modules

    def build(self, shapes):
        return Call(scale_grad, {"scale": self.scale})


@register
class Add(OpNode):
    """Element-wise sum (residual connection); inputs must have one shape."""

    op: Literal["add"]
    arity: ClassVar = (2, None)

    def build(self, shapes):
        return Call(add)


@register
class Concat(OpNode):
    """Concatenation along channels."""

    op: Literal["concat"]
    arity: ClassVar = (2, None)

    def build(self, shapes):
        return Call(concat)


@register
class Shortcut(OpNode):
    """ResNet option A shortcut: identity, or stride-subsample + zero-pad channels to `out`."""

    needs_map: ClassVar[bool] = True

    op: Literal["shortcut"]
    out: int = Field(gt=0, description="output channels (>= input channels)")
    stride: int = Field(default=1, gt=0, description="spatial subsampling")

    def build(self, shapes):
        if shapes[0][0] > self.out:
            raise ValueError(f"shortcut cannot shrink {shapes[0][0]} channels to {self.out}")
        if shapes[0][0] == self.out and self.stride == 1:
            return nn.Identity()
        return ZeroPadShortcut(shapes[0][0], self.out, self.stride)


@register
class Custom(ParamOp):
    """A module from your own code, by import path. Runs only with `--allow-custom` (or NETSPEC_ALLOW_CUSTOM=1;
    from Python: `Limits(code=True)`)."""

    op: Literal["custom"]
    target: str = Field(description="'package.module:ClassName' of an nn.Module")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the class")

    @field_validator("target")
    @classmethod
    def _looks_like_import_path(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("target must be 'package.module:ClassName'")
        return value

    def build(self, shapes):  # the shape pass has checked that the spec may run code
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)(**self.args)


@register
class CopyOf(OpNode):
    """A fresh copy of one of the backbone module's submodules (its structure, new weights as the module's own
    `__init__` makes them), e.g. `{op: copy_of, module: layer3}` for a DKS/DHM head built from the backbone's
    later stages. Only in a spec with `backbone:`; its parameters are named after the branch's node."""

    op: Literal["copy_of"]
    module: str = Field(description="qualified name of a submodule of the backbone (`layer3`, `layer3.0`)")
    _make: Callable[[], nn.Module] | None = PrivateAttr(default=None)  # set by expand from the spec's backbone

    def bind(self, make: Callable[[], nn.Module]) -> "CopyOf":
        """This node with the function that builds a fresh copy of its submodule."""
        bound = self.model_copy()
        bound._make = make
        return bound

    def build(self, shapes):
        if self._make is None:
            raise ValueError("copy_of copies a submodule of `backbone:`; this spec has none")
        return self._make()


# --- initialisation --------------------------------------------------------------------------

class Gaussian(Strict):
    """Normal(mean, std) — Caffe's 'gaussian' filler; CNDS uses std 0.01."""

    type: Literal["gaussian"]
    std: float = Field(default=0.01, gt=0, description="standard deviation")
    mean: float = Field(default=0.0, description="mean")

    def apply(self, weight: torch.Tensor) -> None:
        nn.init.normal_(weight, self.mean, self.std)


class Kaiming(Strict):
    """He initialisation (normal)."""

    type: Literal["kaiming"]
    mode: Literal["fan_in", "fan_out"] | None = Field(default=None, description="which fan to preserve; default "
                                                      "fan_out for conv, fan_in for fc (as Caffe's msra and PyTorch's Linear)")
    nonlinearity: Literal["relu", "leaky_relu", "linear"] = Field(default="relu", description="gain to use")

    def apply(self, weight):
        mode = self.mode or ("fan_in" if weight.dim() == 2 else "fan_out")  # fc weights are 2-D, conv 4-D
        nn.init.kaiming_normal_(weight, mode=mode, nonlinearity=self.nonlinearity)


class Xavier(Strict):
    """Glorot initialisation (Caffe's 'xavier')."""

    type: Literal["xavier"]
    gain: float = Field(default=1.0, gt=0, description="scale")
    distribution: Literal["uniform", "normal"] = Field(default="uniform", description="shape of the distribution")

    def apply(self, weight):
        (nn.init.xavier_uniform_ if self.distribution == "uniform" else nn.init.xavier_normal_)(weight, self.gain)


class Constant(Strict):
    """Every weight the same value."""

    type: Literal["constant"]
    value: float = Field(default=0.0, description="the value")

    def apply(self, weight):
        nn.init.constant_(weight, self.value)


class TorchDefault(Strict):
    """PyTorch's own default for the layer (kaiming-uniform with a=sqrt(5))."""

    type: Literal["default"]

    def apply(self, weight):
        pass


WeightInit = Union[Gaussian, Kaiming, Xavier, Constant, TorchDefault]


class NodeInit(Strict):
    """How a node's weight and bias start. `weight: kaiming` is short for `weight: {type: kaiming}`."""

    weight: WeightInit | None = Field(default=None, discriminator="type", description="weight filler")
    bias: float | None = Field(default=None, description="bias constant (Caffe's bias_filler value)")

    @field_validator("weight", mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"type": value} if isinstance(value, str) else value


OpNode.model_rebuild()
for _op in REGISTRY.values():
    _op.model_rebuild()
