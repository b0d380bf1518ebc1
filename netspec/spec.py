"""The spec language: one set of pydantic models, the single source of truth for every key.

A spec is: `input`, `classes`, the backbone `nodes`, auxiliary `branches` (each ending in a head),
`losses` on heads (with weights and schedules), `init`, reusable `blocks`, `vars`, and the `data:` and
`train:` sections. `docs/spec.md` is generated from these models (`python -m netspec.docs`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, PositiveInt, Tag, field_validator, model_validator

from netspec.data_spec import DataSpec
from netspec.ops import REGISTRY, Factor, NodeBase, NodeInit, check_name
from netspec.project import check_path_name
from netspec.schedules import SCHEDULES, Schedule, constant, schedule_shorthand
from netspec.schema_base import Strict
from netspec.solver import TrainSpec

MAIN_HEAD = "main"
MAX_REPEAT = 10_000  # copies of one block instance (the expanded node count has its own limit)


# --- nodes -----------------------------------------------------------------------------------

class BlockNode(NodeBase):
    """An instance of a block from `blocks:`, optionally repeated. Other keys are the block's params.
    Its nodes are named name.node, or name.i.node when repeated."""

    model_config = {**NodeBase.model_config, "extra": "allow"}
    block: str = Field(description="the block to instantiate (a key of `blocks:`)")
    repeat: int = Field(default=1, ge=1, le=MAX_REPEAT, description="how many copies to chain")
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
    grad_scale: Factor | None = Field(
        default=None, description="gradient-scaling edge at the branch's start (node <branch>.grad_scale): identity "
                                  "forward, the gradient flowing back into the backbone × this (MW-BP's γ_p/Γ_p); "
                                  "the branch's own gradients are unchanged; export drops it")


# --- losses ----------------------------------------------------------------------------------

class CrossEntropyLoss(Strict):
    """Softmax cross-entropy of a head against the labels, times weight × schedule."""

    type: Literal["cross_entropy"]
    head: str = Field(description=f"head to supervise: '{MAIN_HEAD}' (the backbone's output) or a branch name")
    weight: float = Field(default=1.0, ge=0, description="α, the loss weight")
    schedule: Schedule = Field(default_factory=constant,
                               description=f"how the weight changes: {SCHEDULES.names()} (default constant)")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="label smoothing")

    _shorthand = field_validator("schedule", mode="before")(schedule_shorthand)


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
    smoothing: Factor = Field(default=1e-8, description="ε: both distributions become (p + ε)/(1 + Cε) before the KL, "
                                                      "as DKS's official code does (1e-8); 0 turns it off")
    schedule: Schedule = Field(default_factory=constant, description="how β changes")

    _shorthand = field_validator("schedule", mode="before")(schedule_shorthand)


Loss = Annotated[Union[CrossEntropyLoss, SynergyLoss], Field(discriminator="type")]


# --- the spec --------------------------------------------------------------------------------

class InputSpec(Strict):
    """The input tensor and its normalisation."""

    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(description="C, H, W")
    mean: list[float] = Field(default_factory=lambda: [0.0], description="per-channel mean (on 0..1 pixels)")
    std: list[float] = Field(default_factory=lambda: [1.0], description="per-channel std")
    name: Annotated[str, AfterValidator(check_name)] = Field(default="data", description="name of the input node")

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

    name: Annotated[str, AfterValidator(check_path_name)] = Field(description="the build is written to build/<name>/")
    description: str = Field(default="", description="free text")
    vars: dict[str, Any] = Field(default_factory=dict, description="values usable as ${name} anywhere (and set by overrides)")
    input: InputSpec = Field(description="input shape and normalisation")
    classes: int = Field(gt=1, description="number of classes")
    init: InitDefaults = Field(default_factory=InitDefaults, description="default initialisation")
    blocks: dict[str, BlockDef] = Field(default_factory=dict, description="reusable parameterised blocks")
    nodes: list[Node] = Field(min_length=1, description="the backbone, input to main head, in order")
    output: str | None = Field(default=None, description=f"backbone node that is the '{MAIN_HEAD}' head; default the last")
    branches: dict[Annotated[str, AfterValidator(check_name)], Branch] = Field(default_factory=dict, description="auxiliary branches; each is a head named after it")
    losses: dict[Annotated[str, AfterValidator(check_name)], Loss] = Field(
        default_factory=lambda: {MAIN_HEAD: CrossEntropyLoss(type="cross_entropy", head=MAIN_HEAD)},
        description="loss nodes by name; default: cross-entropy on the main head")
    data: DataSpec = Field(default_factory=DataSpec, description="the data set: source, path, limits, augmentation, "
                           "streaming (every key in docs/spec.md, section data)")
    train: TrainSpec = Field(default_factory=TrainSpec, description="the solver and the run: epochs, batch, optimizer, "
                             "lr_schedule, logging, evaluation (every key in docs/spec.md, section train)")

    @model_validator(mode="after")
    def _data_knows_the_classes(self) -> "Spec":
        self.data._class_count = self.classes  # `data.source: synthetic` draws its labels from them
        return self

    @field_validator("losses", mode="before")
    @classmethod
    def _loss_type_default(cls, value):
        """`type:` may be left out of a cross-entropy loss; a synergy loss says `type: synergy`."""
        if not isinstance(value, dict):
            return value
        for loss in value.values():
            if isinstance(loss, dict) and "type" not in loss:
                synergy_keys = sorted({"heads", "direction", "beta", "temperature", "smoothing"} & set(loss))
                if synergy_keys:
                    raise ValueError(f"a loss with `{synergy_keys[0]}:` is a synergy loss: add `type: synergy` "
                                     "(a loss without `type:` is cross_entropy)")
                loss["type"] = "cross_entropy"
        return value
