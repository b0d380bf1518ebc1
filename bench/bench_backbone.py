"""Backbone benchmark (not a test): `python bench/bench_backbone.py [--rounds R] [--steps N] [--batch B] [--threads T]`.

Train step time of specs/dks_userresnet_fmnist.yaml (a user's ResNet module, specs/models/resnet.py, traced by
netspec, with its two `copy_of` heads) ÷ the same module trained by a hand-written loop with the same heads added
by hand (same weights, same batch, same loss: cross-entropy on the three heads; the spec's synergy loss is
overridden away here so the hand-written loss stays short — bench_train.py measures the objective). Goal ≤ 1.02×.
Each round alternates the variants step by step (netspec, hand, hand again: the A/A control) and takes each one's
median; the figure is the median over rounds of the per-round ratios.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netspec.compiler import compile_spec
from netspec.limits import Limits
from bench_train import interleaved, step_fn

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "dks_userresnet_fmnist.yaml"


def user_resnet_class() -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("user_resnet", ROOT / "specs" / "models" / "resnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ResNet


def hand_written(resnet: type[nn.Module], classes: int = 10) -> nn.Module:
    """The user's ResNet with DKS heads added by hand: its own forward for the main head, copies of its stages."""

    class HandDKS(resnet):
        def __init__(self):
            super().__init__(depth=20, width=8, classes=classes, channels=1)
            self.aux1, self.aux2 = nn.Module(), nn.Module()
            self.aux1.stage2, self.aux1.stage3 = copy.deepcopy(self.layer2), copy.deepcopy(self.layer3)
            self.aux1.fc = nn.Linear(32, classes)
            self.aux2.stage3, self.aux2.fc = copy.deepcopy(self.layer3), nn.Linear(32, classes)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            l1 = self.layer1(x)
            l2 = self.layer2(l1)
            main = self.fc(F.adaptive_avg_pool2d(self.layer3(l2), 1).flatten(1))
            aux1 = self.aux1.fc(F.adaptive_avg_pool2d(self.aux1.stage3(self.aux1.stage2(l1)), 1).flatten(1))
            aux2 = self.aux2.fc(F.adaptive_avg_pool2d(self.aux2.stage3(l2), 1).flatten(1))
            return {"main": main, "aux1": aux1, "aux2": aux2}

    return HandDKS()


def loss(out, y):
    terms = torch.stack([F.cross_entropy(out[h], y) for h in ("main", "aux1", "aux2")])
    return terms.sum(), terms.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per variant and round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    compiled = compile_spec(SPEC, ["losses.synergy=null"], Limits(code=True))  # our own shipped spec
    ours = compiled.module
    hand, control = (hand_written(user_resnet_class()) for _ in range(2))
    for model in (hand, control):
        model.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(args.batch, *compiled.spec.input.shape)
    y = torch.randint(0, compiled.spec.classes, (args.batch,))
    with torch.no_grad():
        a, b = ours.eval()(x), hand.eval()(x)
    assert all(torch.allclose(a[h], b[h], atol=1e-5) for h in a), "the hand-written net differs"
    for model in (ours, hand, control):
        model.train()
    steps = {"netspec": step_fn(ours, loss), "hand": step_fn(hand, loss), "hand (A/A)": step_fn(control, loss)}
    ratios, controls, last = [], [], {}
    for _ in range(args.rounds):
        last = interleaved(steps, (x, y), args.steps)
        ratios.append(last["netspec"] / last["hand"])
        controls.append(last["hand (A/A)"] / last["hand"])
    print(f"command: python bench/bench_backbone.py --rounds {args.rounds} --steps {args.steps} --batch {args.batch} "
          f"--threads {args.threads}   ({torch.get_num_threads()} threads, torch {torch.__version__})")
    print("| measure | median over rounds (min–max) | goal |\n|---|---|---|")
    print(f"| train step: backbone spec / hand-written loop (last round {1e3 * last['netspec']:.1f} / "
          f"{1e3 * last['hand']:.1f} ms) | {statistics.median(ratios):.3f}× ({min(ratios):.3f}–{max(ratios):.3f}) "
          "| ≤ 1.02× |")
    print(f"| A/A control: hand-written / itself | {statistics.median(controls):.3f}× "
          f"({min(controls):.3f}–{max(controls):.3f}) | ≈ 1 |")


if __name__ == "__main__":
    main()
