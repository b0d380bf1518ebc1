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


def official_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """sundw2014/DKS wrn_DKS/KL_divergence.py (commit 6388fbc), transcribed line by line (CPU, no Variable)."""
    p = torch.nn.functional.softmax(logits_p, dim=1)
    q = torch.nn.functional.softmax(logits_q, dim=1)
    shape = list(p.size())
    num_classes = shape[1]
    epsilon = 1e-8
    _p = (p + epsilon * torch.ones(*shape, dtype=p.dtype)) / (1.0 + num_classes * epsilon)
    _q = (q + epsilon * torch.ones(*shape, dtype=q.dtype)) / (1.0 + num_classes * epsilon)
    return torch.mean(torch.sum(_p * torch.log(_p / _q), 1))


def dks_reference(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The official DKS training loss (wrn_DKS/main.py `h()`): Σ_heads CE(y, f_l) plus, for every ordered pair
    (m, n) of distinct heads, KL_divergence(f_m.detach(), f_n) — the ε-smoothed KL of `official_kl`."""
    n = len(labels)
    total = torch.zeros((), dtype=torch.float64)
    for f in logits.values():
        log_p = f - f.logsumexp(1, keepdim=True)
        total = total - log_p[torch.arange(n), labels].sum() / n
    for m, f_m in logits.items():
        for k, f_n in logits.items():
            if m == k:
                continue
            total = total + official_kl(f_m.detach(), f_n)
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
                              "  synergy: {type: synergy, heads: [aux1, main], smoothing: 0}\n")
    logits, labels = random_logits(requires_grad=True)
    total, _ = obj(logits, labels, 0)
    ours = torch.autograd.grad(total, list(logits.values()))
    paper = sum(torch.nn.functional.cross_entropy(f, labels) for f in logits.values())
    for m, n in (("aux1", "main"), ("main", "aux1")):
        p_m = logits[m].softmax(1).detach()
        paper = paper - (p_m * logits[n].log_softmax(1)).sum(1).mean()
    for a, b in zip(ours, torch.autograd.grad(paper, list(logits.values()))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scale", [1, 30, 300])
def test_default_smoothing_equals_the_official_kl_at_any_logit_scale(tmp_path, scale):
    """ε = 1e-8 by default: the loss is the official one also when the logits are large (a student probability
    of ~e^-300 would otherwise cost ~300 nats per class); `smoothing: 0` is the plain KL, which then differs."""
    obj = objective(tmp_path, DKS)
    logits, labels = random_logits()
    logits = {h: scale * f for h, f in logits.items()}
    total, _ = obj(logits, labels, 0)
    assert torch.isfinite(total)
    torch.testing.assert_close(total, dks_reference(logits, labels), rtol=1e-9, atol=1e-9)
    plain = objective(tmp_path, DKS.replace("{type: synergy}", "{type: synergy, smoothing: 0}"))
    unsmoothed, _ = plain(logits, labels, 0)
    if scale >= 30:
        assert unsmoothed.item() > 2 * total.item()  # the plain KL blows up where the official one saturates
    else:
        assert abs(unsmoothed.item() - total.item()) < 1e-3 * total.item()


def test_smoothing_is_applied_with_the_temperature(tmp_path):
    """T² · KL of the ε-smoothed softmax(f/T): the official formula on f/T, times T²."""
    obj = objective(tmp_path, "  main: {head: main}\n  aux1: {head: aux1}\n  aux2: {head: aux2}\n"
                              "  syn: {type: synergy, heads: [aux1, main], direction: top_down, temperature: 3, "
                              "smoothing: 0.01}\n")
    logits, labels = random_logits()
    _, terms = obj(logits, labels, 0)
    p = logits["main"].div(3).softmax(1)
    q = logits["aux1"].div(3).softmax(1)
    p, q = (p + 0.01) / 1.05, (q + 0.01) / 1.05
    expected = 9 * (p * (p / q).log()).sum(1).mean()
    assert abs(terms[obj.names.index("syn:main->aux1")].item() - expected.item()) < 1e-12


def test_temperature_beta_and_direction(tmp_path):
    obj = objective(tmp_path, "  main: {head: main}\n  aux1: {head: aux1}\n  aux2: {head: aux2}\n"
                              "  syn: {type: synergy, direction: top_down, beta: 0.5, temperature: 4, smoothing: 0}\n")
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
