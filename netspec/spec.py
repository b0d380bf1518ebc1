"""The spec language: one set of pydantic models, the single source of truth for every key.

A spec is: `input`, `classes`, the backbone `nodes`, auxiliary `branches` (each ending in a head),
`losses` on heads (with weights and schedules), `init`, reusable `blocks`, `vars`, and the `data:` and
`train:` sections. `docs/spec.md` is generated from these models (`python -m netspec.docs`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, PositiveInt, Tag, field_validator, model_validator

from netspec.ops import REGISTRY, NodeBase, NodeInit, check_name
from netspec.schema_base import Strict
from runtime.data import DataSpec

MAIN_HEAD = "main"


# --- nodes -----------------------------------------------------------------------------------

class BlockNode(NodeBase):
    """An instance of a block from `blocks:`, optionally repeated. Other keys are the block's params.
    Its nodes are named name.node, or name.i.node when repeated."""

    model_config = {**NodeBase.model_config, "extra": "allow"}
    block: str = Field(description="the block to instantiate (a key of `blocks:`)")
    repeat: int = Field(default=1, ge=1, description="how many copies to chain")
    first: dict[str, Any] = Field(default_factory=dict, description="params that differ for the first copy (e.g. stride: 2)")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _node_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "block" if "block" in value and "op" not in value else value.get("op")
    return getattr(value, "op", None) or ("block" if isinstance(value, BlockNode) else None)


Node = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in REGISTRY.items()) + (Annotated[BlockNode, Tag("block")],)],
    Discriminator(_node_kind),
]


class BlockDef(Strict):
    """A reusable, parameterised group of nodes. `${param}` in its nodes takes the instance's value."""

    params: dict[str, Any] = Field(default_factory=dict, description="parameter defaults; null means required")
    nodes: list[Any] = Field(min_length=1, description="the block's nodes; `from: input` is the block's input, "
                                                     "the last node is its output")


class Branch(Strict):
    """An auxiliary branch: nodes that start at a backbone node and end in a classifier head."""

    from_: str = Field(alias="from", description="the backbone node it attaches after — move a branch by editing this")
    nodes: list[Node] = Field(min_length=1, description="the branch's nodes; the last one's output is the head's logits")


# --- loss weight schedules -------------------------------------------------------------------

class ConstantSchedule(Strict):
    """The weight stays as given."""

    type: Literal["constant"]

    def factor(self, epoch: float, epochs: int, depth_ratio: float) -> float:
        return 1.0


class CNDSSchedule(Strict):
    """CNDS eq. 2, applied every epoch: α_t ← α_{t-1}·(1 − t/N), i.e. α_t = α·Π_{s=1..t}(1 − s/N)."""

    type: Literal["cnds"]

    def factor(self, epoch, epochs, depth_ratio):
        out = 1.0
        for s in range(1, int(epoch) + 1):
            out *= max(0.0, 1.0 - s / epochs)
        return out


class DSNSchedule(Strict):
    """DSN's linear decay: α_t = α·(1 − t/N)."""

    type: Literal["dsn"]

    def factor(self, epoch, epochs, depth_ratio):
        return max(0.0, 1.0 - epoch / epochs)


class ZeroAfterSchedule(Strict):
    """DSN's companion-loss cut-off: full weight until `epoch`, zero from then on."""

    type: Literal["zero_after"]
    epoch: int = Field(ge=0, description="first epoch with weight zero")

    def factor(self, epoch, epochs, depth_ratio):
        return 1.0 if epoch < self.epoch else 0.0


class RampSchedule(Strict):
    """Linear warm-up of the weight from `start`·α to α over `epochs` epochs."""

    type: Literal["ramp"]
    epochs: int = Field(gt=0, description="epochs to reach the full weight")
    start: float = Field(default=0.0, ge=0, description="fraction of the weight at epoch 0")

    def factor(self, epoch, epochs, depth_ratio):
        return self.start + (1.0 - self.start) * min(1.0, epoch / self.epochs)


class MWBPSchedule(Strict):
    """MW-BP's depth rule: γ_k = max(floor, (L_k / L_K)^power), L = weight layers from the input to the head."""

    type: Literal["mwbp"]
    floor: float = Field(default=0.01, ge=0, description="smallest weight")
    power: float = Field(default=2.0, description="exponent of the depth ratio")

    def factor(self, epoch, epochs, depth_ratio):
        return max(self.floor, depth_ratio ** self.power)


Schedule = Annotated[
    Union[ConstantSchedule, CNDSSchedule, DSNSchedule, ZeroAfterSchedule, RampSchedule, MWBPSchedule],
    Field(discriminator="type"),
]


def _schedule_shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


# --- losses ----------------------------------------------------------------------------------

class CrossEntropyLoss(Strict):
    """Softmax cross-entropy of a head against the labels, times weight × schedule."""

    type: Literal["cross_entropy"]
    head: str = Field(description=f"head to supervise: '{MAIN_HEAD}' (the backbone's output) or a branch name")
    weight: float = Field(default=1.0, ge=0, description="α, the loss weight")
    schedule: Schedule = Field(default_factory=lambda: ConstantSchedule(type="constant"),
                               description="how the weight changes: constant (default), cnds, dsn, zero_after, ramp, mwbp")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="label smoothing")

    _shorthand = field_validator("schedule", mode="before")(_schedule_shorthand)


class SynergyLoss(Strict):
    """DKS pairwise knowledge matching: for each pair (m → n), β·T²·KL(softmax(f_m/T) ‖ softmax(f_n/T)), f_m detached.

    KL differs from DKS's H(f_m, f_n) by the entropy of the detached target, a constant: the same gradients.
    """

    type: Literal["synergy"]
    heads: list[str] | Literal["all"] = Field(default="all", description="the heads that take part ('all' = every head)")

    @field_validator("heads")
    @classmethod
    def _two_distinct_heads(cls, value):
        if isinstance(value, list) and (len(set(value)) < 2 or len(set(value)) != len(value)):
            raise ValueError("a synergy loss needs two or more different heads, each listed once")
        return value
    direction: Literal["bidirectional", "top_down", "bottom_up"] = Field(
        default="bidirectional", description="top_down: deeper heads teach shallower ones; bottom_up: the reverse; both")
    beta: float = Field(default=1.0, ge=0, description="β, the weight of each pair")
    temperature: float = Field(default=1.0, gt=0, description="softmax temperature T")
    schedule: Schedule = Field(default_factory=lambda: ConstantSchedule(type="constant"), description="how β changes")

    _shorthand = field_validator("schedule", mode="before")(_schedule_shorthand)


Loss = Annotated[Union[CrossEntropyLoss, SynergyLoss], Field(discriminator="type")]


# --- training (Caffe's solver) ---------------------------------------------------------------

class SGD(Strict):
    """SGD with momentum (Caffe's solver)."""

    type: Literal["sgd"]
    lr: float = Field(default=0.1, gt=0, description="base learning rate")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum")
    nesterov: bool = Field(default=False, description="Nesterov momentum")
    weight_decay: float = Field(default=5e-4, ge=0, description="L2 weight decay")


class Adam(Strict):
    """Adam or AdamW."""

    type: Literal["adam", "adamw"]
    lr: float = Field(default=1e-3, gt=0, description="base learning rate")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="moment decay rates")
    weight_decay: float = Field(default=0.0, ge=0, description="weight decay (decoupled for adamw)")


class LRSchedule(Strict):
    """Learning-rate policy per epoch, after an optional linear warm-up."""

    type: Literal["constant", "step", "multistep", "poly", "cosine"] = Field(default="cosine", description="policy")
    step_size: int = Field(default=30, gt=0, description="step: epochs between drops")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which to drop")
    gamma: float = Field(default=0.1, gt=0, description="step/multistep: drop factor")
    power: float = Field(default=1.0, gt=0, description="poly: exponent")
    min_lr: float = Field(default=0.0, ge=0, description="cosine: final learning rate")
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warm-up length in epochs")


class TrainSpec(Strict):
    """How `netspec train` runs."""

    epochs: int = Field(default=10, gt=0, description="N, the number of epochs (also the N of the loss schedules)")
    batch_size: int = Field(default=128, gt=0, description="global batch size (split across processes)")
    eval_batch_size: int = Field(default=512, gt=0, description="batch size for evaluation")
    optimizer: Annotated[Union[SGD, Adam], Field(discriminator="type")] = Field(
        default_factory=lambda: SGD(type="sgd"), description="the solver")
    lr_schedule: LRSchedule = Field(default_factory=LRSchedule, description="learning-rate policy")
    seed: int = Field(default=0, description="seed for init, shuffling and augmentation")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    amp: Literal["none", "bf16"] = Field(default="none", description="bf16 autocast of the forward (fast on recent "
                                         "GPUs; also runs on CPU); losses stay fp32")
    compile: bool = Field(default=False, description="wrap the model in torch.compile (CPU or CUDA; the first steps "
                                                     "are slow while it compiles)")
    sync_bn: bool = Field(default=False, description="SyncBatchNorm across processes (CUDA only)")
    steps_per_epoch: int | None = Field(default=None, gt=0, description="cap on steps per epoch (smoke runs)")
    checkpoint_every: int = Field(default=1, gt=0, description="epochs between writes of last.pt (best.pt is written "
                                                               "whenever the main exit's top-1 improves)")
    out: str | None = Field(default=None, description="run directory (metrics, plots, checkpoints/); "
                                                     "defaults to runs/<spec name>")

    @field_validator("optimizer", mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"type": value} if isinstance(value, str) else value


# --- the spec --------------------------------------------------------------------------------

class InputSpec(Strict):
    """The input tensor and its normalisation."""

    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(description="C, H, W")
    mean: list[float] = Field(default_factory=lambda: [0.0], description="per-channel mean (on 0..1 pixels)")
    std: list[float] = Field(default_factory=lambda: [1.0], description="per-channel std")
    name: str = Field(default="data", description="name of the input node")

    @model_validator(mode="after")
    def _channels_match(self):
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.shape[0]):
                raise ValueError(f"{key} has {len(values)} values for {self.shape[0]} channels; give "
                                 + ("1" if self.shape[0] == 1 else f"1 or {self.shape[0]}"))
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class InitDefaults(NodeInit):
    """Initialisation for every weight layer (conv, fc) unless a node says otherwise."""

    from_: str | None = Field(default=None, alias="from",
                              description="checkpoint to copy parameters from, by name (CNDS: CNN-8 from a 5-layer net)")


class Spec(Strict):
    """A network with its supervision branches, losses, data and solver."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the build is written to build/<name>/")
    description: str = Field(default="", description="free text")
    vars: dict[str, Any] = Field(default_factory=dict, description="values usable as ${name} anywhere (and set by overrides)")
    input: InputSpec = Field(description="input shape and normalisation")
    classes: int = Field(gt=1, description="number of classes")
    init: InitDefaults = Field(default_factory=InitDefaults, description="default initialisation")
    blocks: dict[str, BlockDef] = Field(default_factory=dict, description="reusable parameterised blocks")
    nodes: list[Node] = Field(min_length=1, description="the backbone, input to main head, in order")
    output: str | None = Field(default=None, description=f"backbone node that is the '{MAIN_HEAD}' head; default the last")
    branches: dict[Annotated[str, AfterValidator(check_name)], Branch] = Field(default_factory=dict, description="auxiliary branches; each is a head named after it")
    losses: dict[str, Loss] = Field(
        default_factory=lambda: {MAIN_HEAD: CrossEntropyLoss(type="cross_entropy", head=MAIN_HEAD)},
        description="loss nodes by name; default: cross-entropy on the main head")
    data: DataSpec = Field(default_factory=DataSpec, description="the data set")
    train: TrainSpec = Field(default_factory=TrainSpec, description="the solver")

    @field_validator("losses", mode="before")
    @classmethod
    def _loss_type_default(cls, value):
        """`type:` may be left out of a loss: cross_entropy, or synergy when it lists heads/direction."""
        if not isinstance(value, dict):
            return value
        for loss in value.values():
            if isinstance(loss, dict) and "type" not in loss:
                loss["type"] = "synergy" if {"heads", "direction", "beta"} & set(loss) else "cross_entropy"
        return value
