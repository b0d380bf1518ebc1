"""The `train:` section (Caffe's solver): optimizers and learning-rate policies, each one registered class.

An optimizer builds its `torch.optim.Optimizer` (`build`); a learning-rate policy gives the multiplier of the
base learning rate at a (fractional) epoch (`factor`). Adding either is one class here.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field, field_validator, model_validator

from netspec.errors import UserError
from netspec.ops import Multiplier, multiplier_shorthand
from netspec.project import check_run_path
from netspec.registry import Registry
from netspec.schema_base import Strict

OPTIMIZERS = Registry("type")
LR_POLICIES = Registry("type")


# --- optimizers ------------------------------------------------------------------------------

class Optimizer(Strict):
    """Base: `build(params)` makes the torch optimizer. `params` is an iterable of tensors, or of parameter
    groups `{"params": [...], "lr_mult": m, "decay_mult": d}` (netspec.compiler.lower.param_groups): each group
    gets lr × lr_mult and weight_decay × decay_mult; the multipliers stay in the group (and its state_dict)."""

    lr: float
    weight_decay: float

    def build(self, params) -> torch.optim.Optimizer:
        raise NotImplementedError

    def groups(self, params) -> list[dict]:
        """Torch parameter groups with this optimizer's lr and weight decay times each group's multipliers."""
        params = list(params)
        if not params or not isinstance(params[0], dict):
            params = [{"params": params}]
        out = []
        for group in params:
            lr_mult, decay_mult = group.get("lr_mult", 1.0), group.get("decay_mult", 1.0)
            group = {k: v for k, v in group.items() if k != "names"}  # names are for people, not the state_dict
            out.append({**group, "lr_mult": lr_mult, "decay_mult": decay_mult, "lr": self.lr * lr_mult,
                        "weight_decay": self.weight_decay * decay_mult})
        return out


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
        return torch.optim.SGD(self.groups(params), lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
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
        return kind(self.groups(params), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


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


# (Caffe's `inv` and `exp` policies, per epoch: `netspec import-caffe` converts Caffe's per-iteration gamma)
@LR_POLICIES.register
class InvLR(LRPolicy):
    """(1 + gamma·t)^(−power), t in epochs (Caffe `inv`)."""

    type: Literal["inv"]
    gamma: float = Field(default=0.1, ge=0, description="decay rate per epoch")
    power: float = Field(default=0.75, ge=0, description="exponent")

    def factor(self, epoch, epochs, base_lr):
        return (1.0 + self.gamma * epoch) ** -self.power


@LR_POLICIES.register
class ExpLR(LRPolicy):
    """gamma^t, t in epochs (Caffe `exp`)."""

    type: Literal["exp"]
    gamma: float = Field(default=0.9, gt=0, le=1, description="factor per epoch")

    def factor(self, epoch, epochs, base_lr):
        return self.gamma ** epoch


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
    lr_mult: Multiplier | None = Field(default=None, description="default learning-rate multiplier of every "
                                       "parameter tensor: a number or {weight: x, bias: y} (CNDS: {weight: 1, bias: 2}); "
                                       "a node's own lr_mult wins")
    decay_mult: Multiplier | None = Field(default=None, description="default weight-decay multiplier: a number or "
                                          "{weight: x, bias: y} (CNDS: {weight: 1, bias: 0}); a node's own decay_mult wins")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seed for init, shuffling and augmentation")
    threads: int | Literal["auto"] = Field(default="auto", description="CPU threads of this training process "
                                           "(torch.set_num_threads). auto: OMP_NUM_THREADS when it is set, else "
                                           "the cores not busy with other processes right now (at least 1) — on a "
                                           "shared machine, more threads than idle cores make every step wait")
    device: str = Field(default="auto", description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    amp: Literal["none", "bf16"] = Field(default="none", description="bf16 autocast of the forward (fast on recent "
                                         "GPUs; also runs on CPU); losses stay fp32")
    compile: bool = Field(default=False, description="wrap the model in torch.compile (CPU or CUDA; the first steps "
                                                     "are slow while it compiles)")
    sync_bn: bool = Field(default=False, description="SyncBatchNorm across processes (CUDA only)")
    steps_per_epoch: int | None = Field(default=None, gt=0, description="cap on steps per epoch (smoke runs)")
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many optimiser steps (Caffe's "
                                  "max_iter); `epochs` then becomes as many as that takes")
    checkpoint_every: int = Field(default=1, gt=0, description="epochs between writes of last.pt (best.pt is written "
                                                               "whenever the main exit's top-1 improves)")
    tensorboard: bool | None = Field(default=None, description="write the logged scalars as TensorBoard event files "
                                     "(<run>/tensorboard/; the extra `pip install netspec[tensorboard]`): true asks "
                                     "for them (one line when the package is missing), false never; default: when "
                                     "the package is installed")
    keep_snapshots: int = Field(default=0, ge=0, le=10_000, description="also keep the last N snapshots (every "
                                "write of last.pt) as checkpoints/step-<step>.pt, listed in checkpoints.json, as "
                                "Caffe's _iter_N files and mmengine's max_keep_ckpts; older ones are deleted, best.pt "
                                "never; 0: last.pt and best.pt only")
    out: Annotated[str, AfterValidator(check_run_path)] | None = Field(default=None, description="folder of this spec's runs (each in <out>/<run name>/, "
                                                     "with a `latest` link); defaults to runs/<spec name>")
    run_name: str | None = Field(default=None, description="this run's folder name (default: the start time, "
                                 "YYYYMMDD-HHMMSS); with --resume, the run to continue (default: latest)")
    checkpoint_every_steps: int | None = Field(default=None, gt=0, description="also write last.pt every N steps "
                                               "(Caffe's snapshot:); a resume from it is exact")
    log_every_steps: int | None = Field(default=None, gt=0, description="log a step record (each term, raw CE per "
                                        "head, α_t, lr, examples/s) every N steps to steps.jsonl (and TensorBoard)")
    log_gradients: bool = Field(default=False, description="with log_every_steps: each step record also holds "
                                "every conv/fc weight's mean |gradient| (`grad/<node>`, as CNDS Fig. 2 and `netspec "
                                "probe` show it)")
    eval_every: int = Field(default=1, gt=0, description="epochs between test evaluations (Caffe's test_interval); "
                            "the last epoch is always evaluated, best.pt only among evaluated epochs")

    @model_validator(mode="after")
    def _gradients_need_step_records(self):
        if self.log_gradients and not self.log_every_steps:
            raise ValueError("log_gradients needs step records: set train.log_every_steps too (e.g. 10)")
        return self

    @field_validator("threads")
    @classmethod
    def _threads(cls, value):
        if isinstance(value, bool) or (isinstance(value, int) and not 1 <= value <= 1024):
            raise ValueError(f"train.threads is a count from 1 to 1024 or auto, not {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value):
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?|mps", value):
            raise ValueError(f"'{value}' is not a device: use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps")
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+", value) or value in (".", "..", "latest"):
            raise ValueError(f"'{value}' cannot name a run folder: use letters, digits, '_', '-', '.', '+'")
        return value

    _mult_shorthand = field_validator("lr_mult", "decay_mult", mode="before")(
        classmethod(lambda cls, value: multiplier_shorthand(value)))

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
