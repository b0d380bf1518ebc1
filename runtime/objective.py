"""The training objective, built from the spec's loss nodes.

Each cross-entropy loss contributes weight × schedule factor × CE(head, labels); each synergy
loss (DKS) contributes, for every ordered pair (m → n) of its set B,
β × factor × T² × KL(p_m ‖ p_n), p = softmax(f/T) smoothed to (p + ε)/(1 + Cε) as DKS's official code
does (ε = `smoothing`, default 1e-8; 0 = the plain KL), with f_m detached (a constant soft target). All terms are batch means. The total is their sum; every term is also returned by name for logging.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from netspec.compiler.ir import Network
from netspec.spec import CrossEntropyLoss, SynergyLoss


@dataclass(frozen=True)
class Term:
    """One named summand of the objective: a cross-entropy on `student`, or a synergy pair teacher → student."""

    name: str
    loss: CrossEntropyLoss | SynergyLoss
    student: str
    teacher: str | None = None
    depth_ratio: float = 1.0

    def factor(self, epoch: float, epochs: int) -> float:
        """The loss weight at `epoch` (fractional: epoch + step / steps per epoch)."""
        weight = self.loss.weight if isinstance(self.loss, CrossEntropyLoss) else self.loss.beta
        return weight * self.loss.schedule.factor(epoch, epochs, self.depth_ratio)


class Objective:
    """The sum of every loss term of a compiled spec, evaluated on the `{head: logits}` of a forward."""

    def __init__(self, net: Network):
        spec, depth = net.spec, net.depth
        deepest = max(depth.values())
        self.epochs = spec.train.epochs
        self.terms: list[Term] = []
        for name, loss in spec.losses.items():
            if isinstance(loss, CrossEntropyLoss):
                self.terms.append(Term(name, loss, loss.head, depth_ratio=depth[loss.head] / deepest))
            else:
                for teacher, student in net.synergy_pairs(loss):
                    self.terms.append(Term(f"{name}:{teacher}->{student}", loss, student, teacher,
                                           depth_ratio=depth[student] / deepest))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def __call__(self, logits: dict[str, torch.Tensor], labels: torch.Tensor,
                 epoch: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, the weighted value of every term as one detached vector in `names` order)."""
        logits = {head: value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
                  for head, value in logits.items()}  # losses in fp32 (or better) under autocast
        values = []
        for term in self.terms:
            if term.teacher is None:
                value = F.cross_entropy(logits[term.student], labels, label_smoothing=term.loss.label_smoothing)
            else:
                value = synergy(logits[term.teacher], logits[term.student], term.loss.temperature,
                                term.loss.smoothing)
            values.append(term.factor(epoch, self.epochs) * value)
        stacked = torch.stack(values)
        return stacked.sum(), stacked.detach()


def synergy(teacher: torch.Tensor, student: torch.Tensor, temperature: float,
            smoothing: float = 0.0) -> torch.Tensor:
    """T² · KL(p_teacher ‖ p_student), batch mean, no gradient through the teacher; p = softmax(logits / T).

    With `smoothing` ε > 0 both distributions are first smoothed to (p + ε)/(1 + Cε) (C classes), as DKS's
    `KL_divergence` (sundw2014/DKS, wrn_DKS/KL_divergence.py) does with ε = 1e-8: then a confident student
    (p_n^k → 0) costs at most log((1 + Cε)/ε) per class instead of an unbounded log-ratio."""
    if smoothing == 0:
        target = F.log_softmax(teacher.detach() / temperature, dim=1)
        prediction = F.log_softmax(student / temperature, dim=1)
        return temperature ** 2 * F.kl_div(prediction, target, reduction="batchmean", log_target=True)
    classes = teacher.shape[1]
    p = (F.softmax(teacher.detach() / temperature, dim=1) + smoothing) / (1.0 + classes * smoothing)
    q = (F.softmax(student / temperature, dim=1) + smoothing) / (1.0 + classes * smoothing)
    return temperature ** 2 * (p * (p.log() - q.log())).sum(dim=1).mean()
