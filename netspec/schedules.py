"""Loss-weight schedules: the factor a loss weight (α, β) is multiplied by at epoch t of N.

A schedule is one class here, registered with `@SCHEDULES.register`; `schedule: NAME` in a spec picks it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from netspec.registry import Registry
from netspec.schema_base import Strict

SCHEDULES = Registry("type")


class WeightSchedule(Strict):
    """Base: `factor(epoch, epochs, depth_ratio)`; epoch may be fractional (epoch + step / steps per epoch)."""

    def factor(self, epoch: float, epochs: int, depth_ratio: float) -> float:
        raise NotImplementedError


@SCHEDULES.register
class ConstantSchedule(WeightSchedule):
    """The weight stays as given."""

    type: Literal["constant"]

    def factor(self, epoch, epochs, depth_ratio):
        return 1.0


@SCHEDULES.register
class CNDSSchedule(WeightSchedule):
    """CNDS eq. 2, applied every epoch: α_t ← α_{t-1}·(1 − t/N), i.e. α_t = α·Π_{s=1..t}(1 − s/N)."""

    type: Literal["cnds"]

    def factor(self, epoch, epochs, depth_ratio):
        out = 1.0
        for s in range(1, int(epoch) + 1):
            out *= max(0.0, 1.0 - s / epochs)
        return out


@SCHEDULES.register
class DSNSchedule(WeightSchedule):
    """DSN's linear decay: α_t = α·(1 − t/N)."""

    type: Literal["dsn"]

    def factor(self, epoch, epochs, depth_ratio):
        return max(0.0, 1.0 - epoch / epochs)


@SCHEDULES.register
class ZeroAfterSchedule(WeightSchedule):
    """DSN's companion-loss cut-off: full weight until `epoch`, zero from then on."""

    type: Literal["zero_after"]
    epoch: int = Field(ge=0, description="first epoch with weight zero")

    def factor(self, epoch, epochs, depth_ratio):
        return 1.0 if epoch < self.epoch else 0.0


@SCHEDULES.register
class RampSchedule(WeightSchedule):
    """Linear warm-up of the weight from `start`·α to α over `epochs` epochs."""

    type: Literal["ramp"]
    epochs: int = Field(gt=0, description="epochs to reach the full weight")
    start: float = Field(default=0.0, ge=0, description="fraction of the weight at epoch 0")

    def factor(self, epoch, epochs, depth_ratio):
        return self.start + (1.0 - self.start) * min(1.0, epoch / self.epochs)


@SCHEDULES.register
class DepthPowerSchedule(WeightSchedule):
    """netspec's own depth rule (not MW-BP's): the loss weight × max(floor, (L_k / L_K)^power), L = weight layers
    on the longest path from the input to the head. It borrows the form of MW-BP's γ_p, but MW-BP does not weight
    its losses: its code scales each exit's gradient into the backbone (γ_p) and its learning rate (1/Γ_p) —
    that is `branches.<name>.grad_scale: γ_p/Γ_p` (specs/mwbp_resnet56.yaml)."""

    type: Literal["depth_power"]
    floor: float = Field(default=0.01, ge=0, description="smallest weight")
    power: float = Field(default=2.0, ge=0, description="exponent of the depth ratio")

    def factor(self, epoch, epochs, depth_ratio):
        return max(self.floor, depth_ratio ** self.power)


Schedule = SCHEDULES.union()


def schedule_shorthand(value: Any) -> Any:
    """`schedule: cnds` is short for `schedule: {type: cnds}`."""
    return {"type": value} if isinstance(value, str) else value


def constant() -> ConstantSchedule:
    return ConstantSchedule(type="constant")
