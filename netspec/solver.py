"""The `train:` section (Caffe's solver): optimizers and learning-rate policies, each one registered class.

An optimizer builds its `torch.optim.Optimizer` (`build`); a learning-rate policy gives the multiplier of the
base learning rate at a (fractional) epoch (`factor`). Adding either is one class here.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field, field_validator

from netspec.errors import UserError
from netspec.project import check_run_path
from netspec.registry import Registry
from netspec.schema_base import Strict

OPTIMIZERS = Registry("type")
LR_POLICIES = Registry("type")


# --- optimizers ------------------------------------------------------------------------------

class Optimizer(Strict):
    """Base: `build(params)` makes the torch optimizer."""

    lr: float

    def build(self, params) -> torch.optim.Optimizer:
        raise NotImplementedError


@OPTIMIZERS.register
class SGD(Optimizer):
    """SGD with momentum (Caffe's solver)."""

    type: Literal["sgd"]
    lr: float = Field(default=0.1, gt=0, description="base learning rate")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum")
    nesterov: bool = Field(default=False, description="Nesterov momentum")
    weight_decay: float = Field(default=5e-4, ge=0, description="L2 weight decay")

    def build(self, params):
        if self.nesterov and self.momentum == 0:
            raise UserError("train.optimizer.nesterov needs momentum > 0", "set train.optimizer.momentum (e.g. 0.9)",
                            self.where("nesterov"))
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay)


@OPTIMIZERS.register
class Adam(Optimizer):
    """Adam or AdamW."""

    type: Literal["adam", "adamw"]
    lr: float = Field(default=1e-3, gt=0, description="base learning rate")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        default=(0.9, 0.999), description="moment decay rates")
    weight_decay: float = Field(default=0.0, ge=0, description="weight decay (decoupled for adamw)")

    def build(self, params):
        kind = torch.optim.AdamW if self.type == "adamw" else torch.optim.Adam
        return kind(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


# --- learning-rate policies ------------------------------------------------------------------

class LRPolicy(Strict):
    """Base: `factor(epoch, epochs, base_lr)`, the multiplier of the base learning rate at a fractional epoch.
    Every policy may start with a linear warm-up (`warmup_epochs`)."""

    __section__ = "train.lr_schedule"

    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warm-up length in epochs")

    def factor(self, epoch: float, epochs: int, base_lr: float) -> float:
        raise NotImplementedError


@LR_POLICIES.register
class ConstantLR(LRPolicy):
    """The base learning rate throughout (Caffe `fixed`)."""

    type: Literal["constant"]

    def factor(self, epoch, epochs, base_lr):
        return 1.0


@LR_POLICIES.register
class StepLR(LRPolicy):
    """Multiply by `gamma` every `step_size` epochs (Caffe `step`)."""

    type: Literal["step"]
    step_size: int = Field(default=30, gt=0, description="epochs between drops")
    gamma: float = Field(default=0.1, gt=0, le=1, description="drop factor")

    def factor(self, epoch, epochs, base_lr):
        return self.gamma ** (int(epoch) // self.step_size)


@LR_POLICIES.register
class MultiStepLR(LRPolicy):
    """Multiply by `gamma` at each milestone epoch (Caffe `multistep`)."""

    type: Literal["multistep"]
    milestones: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="epochs at which to drop")
    gamma: float = Field(default=0.1, gt=0, le=1, description="drop factor")

    def factor(self, epoch, epochs, base_lr):
        return self.gamma ** sum(epoch >= m for m in self.milestones)


@LR_POLICIES.register
class PolyLR(LRPolicy):
    """(1 − t/N)^power (Caffe `poly`)."""

    type: Literal["poly"]
    power: float = Field(default=1.0, gt=0, description="exponent")

    def factor(self, epoch, epochs, base_lr):
        return max(0.0, 1.0 - epoch / epochs) ** self.power


@LR_POLICIES.register
class CosineLR(LRPolicy):
    """Cosine annealing from the base learning rate to `min_lr` over the run."""

    type: Literal["cosine"]
    min_lr: float = Field(default=0.0, ge=0, description="final learning rate")

    def factor(self, epoch, epochs, base_lr):
        floor = self.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, epoch / epochs)))


class TrainSpec(Strict):
    """How `netspec train` runs."""

    __section__ = "train"

    epochs: int = Field(default=10, gt=0, description="N, the number of epochs (also the N of the loss schedules)")
    batch_size: int = Field(default=128, gt=0, description="global batch size (split across processes)")
    eval_batch_size: int = Field(default=512, gt=0, description="batch size for evaluation")
    optimizer: OPTIMIZERS.union() = Field(default_factory=lambda: SGD(type="sgd"),
                                          description=f"the solver: {OPTIMIZERS.names()}")
    lr_schedule: LR_POLICIES.union() = Field(default_factory=lambda: CosineLR(type="cosine"),
                                             description=f"learning-rate policy: {LR_POLICIES.names()} "
                                                         "(default cosine)")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seed for init, shuffling and augmentation")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d{1,4})?|mps)$",
                        description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    amp: Literal["none", "bf16"] = Field(default="none", description="bf16 autocast of the forward (fast on recent "
                                         "GPUs; also runs on CPU); losses stay fp32")
    compile: bool = Field(default=False, description="wrap the model in torch.compile (CPU or CUDA; the first steps "
                                                     "are slow while it compiles)")
    sync_bn: bool = Field(default=False, description="SyncBatchNorm across processes (CUDA only)")
    steps_per_epoch: int | None = Field(default=None, gt=0, description="cap on steps per epoch (smoke runs)")
    checkpoint_every: int = Field(default=1, gt=0, description="epochs between writes of last.pt (best.pt is written "
                                                               "whenever the main exit's top-1 improves)")
    out: Annotated[str, AfterValidator(check_run_path)] | None = Field(default=None, description="run directory (metrics, plots, checkpoints/); "
                                                     "defaults to runs/<spec name>")

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_shorthand(cls, value):
        if isinstance(value, dict) and "type" not in value:  # `train.optimizer.lr=0.01`: the default optimizer's
            value["type"] = "sgd"
        return {"type": value} if isinstance(value, str) else value

    @field_validator("lr_schedule", mode="before")
    @classmethod
    def _policy_default(cls, value):
        """`lr_schedule: step` or a mapping without `type:` (cosine, the default policy)."""
        if isinstance(value, str):
            return {"type": value}
        if isinstance(value, dict) and "type" not in value:
            value["type"] = "cosine"
        return value
