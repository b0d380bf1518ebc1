"""Tests of runtime.objective: the DKS loss against the paper's formula, the weight schedules, temperature."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from netspec.compiler import analyse
from netspec.runtime.objective import Objective

SPEC = """\
name: three_heads
input: {{shape: [1, 8, 8]}}
classes: 5
nodes:
  - {{name: conv1, op: conv, out: 4, kernel: 3, pad: 1}}
  - {{name: conv2, op: conv, out: 4, kernel: 3, pad: 1}}
  - {{name: conv3, op: conv, out: 4, kernel: 3, pad: 1}}
  - {{name: conv4, op: conv, out: 4, kernel: 3, pad: 1}}
  - {{name: fc, op: fc, out: 5}}
branches:
  aux1: {{from: conv1, nodes: [{{name: fc, op: fc, out: 5}}]}}
  aux2: {{from: conv3, nodes: [{{name: fc, op: fc, out: 5}}]}}
losses:
{losses}
"""

DKS = """\
  main: {head: main}
  aux1: {head: aux1}
  aux2: {head: aux2}
  synergy: {type: synergy}
"""


def objective(tmp_path: Path, losses: str, epochs: int = 4) -> Objective:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(losses=losses))
    _, graph = analyse(path, [f"train.epochs={epochs}"])
    return Objective(graph)


def random_logits(batch: int = 7, requires_grad: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    logits = {h: (3 * torch.randn(batch, 5, generator=gen, dtype=torch.float64)).requires_grad_(requires_grad)
              for h in ("main", "aux1", "aux2")}
    return logits, torch.randint(0, 5, (batch,), generator=gen)


def dks_reference(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The official DKS training loss from the paper's formula, written out: Σ_heads CE(y, f_l) plus, for every
    ordered pair (m, n) of distinct heads, (1/N) Σ_i Σ_k f_m^k (log f_m^k − log f_n^k) with f = softmax."""
    n = len(labels)
    total = torch.zeros((), dtype=torch.float64)
    for f in logits.values():
        log_p = f - f.exp().sum(1, keepdim=True).log()
        total = total - log_p[torch.arange(n), labels].sum() / n
    for m, f_m in logits.items():
        for k, f_n in logits.items():
            if m == k:
                continue
            p_m = f_m.softmax(1).detach()
            total = total + (p_m * (p_m.log() - f_n.log_softmax(1))).sum() / n
    return total


def test_dks_defaults_equal_the_official_loss(tmp_path):
    obj = objective(tmp_path, DKS)
    assert sorted(obj.names) == sorted(["main", "aux1", "aux2"] + [f"synergy:{m}->{n}" for m in ("main", "aux1", "aux2")
                                                                  for n in ("main", "aux1", "aux2") if m != n])
    logits, labels = random_logits()
    for epoch in (0, 2.5):
        total, terms = obj(logits, labels, epoch)
        assert abs(total.item() - dks_reference(logits, labels).item()) < 1e-6
        assert abs(terms.sum().item() - total.item()) < 1e-9


def test_synergy_gradients_are_those_of_dks_cross_entropy(tmp_path):
    """KL and DKS's H(f_m, f_n) = −Σ f_m log f_n differ by the entropy of the detached target: same gradients."""
    obj = objective(tmp_path, "  main: {head: main}\n  aux1: {head: aux1}\n  aux2: {head: aux2}\n"
                              "  synergy: {type: synergy, heads: [aux1, main]}\n")
    logits, labels = random_logits(requires_grad=True)
    total, _ = obj(logits, labels, 0)
    ours = torch.autograd.grad(total, list(logits.values()))
    paper = sum(torch.nn.functional.cross_entropy(f, labels) for f in logits.values())
    for m, n in (("aux1", "main"), ("main", "aux1")):
        p_m = logits[m].softmax(1).detach()
        paper = paper - (p_m * logits[n].log_softmax(1)).sum(1).mean()
    for a, b in zip(ours, torch.autograd.grad(paper, list(logits.values()))):
        torch.testing.assert_close(a, b)


def test_temperature_beta_and_direction(tmp_path):
    obj = objective(tmp_path, "  main: {head: main}\n  aux1: {head: aux1}\n  aux2: {head: aux2}\n"
                              "  syn: {type: synergy, direction: top_down, beta: 0.5, temperature: 4}\n")
    assert [n for n in obj.names if n.startswith("syn:")] == ["syn:aux2->aux1", "syn:main->aux1", "syn:main->aux2"]
    logits, labels = random_logits()
    _, terms = obj(logits, labels, 0)
    p = logits["main"].div(4).softmax(1)
    expected = 0.5 * 16 * (p * (p.log() - logits["aux1"].div(4).log_softmax(1))).sum(1).mean()
    assert abs(terms[obj.names.index("syn:main->aux1")].item() - expected.item()) < 1e-9


@pytest.mark.parametrize("schedule, factors", [
    ("constant", [1, 1, 1, 1]),
    ("cnds", [1, 0.75, 0.375, 0.09375]),  # α_t = α·Π_{s≤t}(1 − s/N), N = 4
    ("dsn", [1, 0.75, 0.5, 0.25]),  # α·(1 − t/N)
    ("{type: zero_after, epoch: 2}", [1, 1, 0, 0]),
    ("{type: ramp, epochs: 2}", [0, 0.5, 1, 1]),
    ("mwbp", [0.64] * 4),  # (L_aux2 / L_main)² = (4 / 5)²: conv1..conv3 + aux2.fc against conv1..conv4 + fc
])
def test_schedules_scale_the_cross_entropy(tmp_path, schedule, factors):
    obj = objective(tmp_path, f"  main: {{head: main}}\n  aux1: {{head: aux1}}\n"
                              f"  aux2: {{head: aux2, weight: 0.3, schedule: {schedule}}}\n")
    logits, labels = random_logits()
    ce = torch.nn.functional.cross_entropy(logits["aux2"], labels).item()
    for epoch, factor in enumerate(factors):
        _, terms = obj(logits, labels, epoch)
        assert terms[obj.names.index("aux2")].item() == pytest.approx(0.3 * factor * ce, rel=1e-9, abs=1e-12)
        assert terms[obj.names.index("main")].item() == pytest.approx(
            torch.nn.functional.cross_entropy(logits["main"], labels).item())
