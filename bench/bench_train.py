"""Training benchmarks (not tests): `python bench/bench_train.py [--steps N] [--batch B] [--threads T]`.

1. Train step time, netspec-compiled CNDS-8 (specs/cnds8_fmnist.yaml) vs the same net written by hand in PyTorch
   (same weights, same batch, same loss), measured interleaved, median of many steps. Goal ≤ 1.02×.
2. Aux overhead: step time with the branch ÷ without it (the deployed net), against the FLOP share.
   Goal ≤ 1.05× of it.
3. Data pipeline throughput (Batches: index, flip, normalise) ÷ training throughput. Goal ≥ 20×.
4. MFU: model FLOP/s (3 × forward FLOPs per example: forward + backward) ÷ this machine's fp32 matmul FLOP/s.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from netspec.compiler import compile_spec
from netspec.compiler.lower import lower
from netspec.compiler.summary import summarise
from netspec.runtime.data import Batches, load_dataset
from netspec.runtime.objective import Objective

SPEC = "specs/cnds8_fmnist.yaml"


class HandCNDS8(nn.Module):
    """CNDS-8 for Fashion-MNIST as one would write it by hand (w = 16), parameter names as in the spec."""

    def __init__(self, w: int = 16, classes: int = 10):
        super().__init__()
        conv = lambda i, o, k=3, p=1: nn.Conv2d(i, o, k, padding=p)  # noqa: E731
        self.conv1, self.conv2 = conv(1, w), conv(w, w)
        self.conv3_1, self.conv3_2 = conv(w, 2 * w), conv(2 * w, 2 * w)
        self.conv4_1, self.conv4_2 = conv(2 * w, 2 * w), conv(2 * w, 2 * w)
        self.conv5_1, self.conv5_2 = conv(2 * w, 4 * w), conv(4 * w, 4 * w)
        self.fc6, self.fc7, self.fc8 = nn.Linear(4 * w * 4 * 4, 256), nn.Linear(256, 256), nn.Linear(256, classes)
        self.aux1 = nn.Module()
        self.aux1.conv = nn.Conv2d(2 * w, 32, 1)
        self.aux1.fc1, self.aux1.fc2 = nn.Linear(32 * 6 * 6, 128), nn.Linear(128, 128)
        self.aux1.fc3 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2, 2)
        x = F.relu(self.conv3_2(F.relu(self.conv3_1(x))))
        a = F.relu(self.aux1.conv(F.avg_pool2d(x, 5, 2, ceil_mode=True)))
        a = F.relu(self.aux1.fc2(F.dropout(F.relu(self.aux1.fc1(a.flatten(1))), 0.5, self.training)))
        x = F.max_pool2d(F.relu(self.conv4_2(F.relu(self.conv4_1(x)))), 2, 2)
        x = F.max_pool2d(F.relu(self.conv5_2(F.relu(self.conv5_1(x)))), 2, 2, ceil_mode=True)
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return {"main": self.fc8(x), "aux1": self.aux1.fc3(a)}


def step_fn(model: nn.Module, loss_fn) -> callable:
    """One SGD training step on (x, y), as the training loop does it (loss values fetched every step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        loss, terms = loss_fn(model(x), y)
        terms.tolist()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def interleaved(steps: dict[str, callable], batch, n: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per step of each function, alternating between them step by step."""
    times = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, fn in steps.items():
            started = time.perf_counter()
            fn(*batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 matmul FLOP/s (median of `reps` n×n products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="measured steps per variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    compiled = compile_spec(SPEC)
    spec, graph = compiled.spec, compiled.network
    objective = Objective(graph)
    summary = summarise(graph)
    x = torch.randn(args.batch, *spec.input.shape)
    y = torch.randint(0, spec.classes, (args.batch,))

    hand = HandCNDS8()
    hand.load_state_dict(compiled.module.state_dict())
    hand.eval(), compiled.module.eval()
    with torch.no_grad():
        ours, theirs = compiled.module(x), hand(x)
    assert all(torch.allclose(ours[h], theirs[h], atol=1e-5) for h in ours), "the hand-written net differs"
    hand.train(), compiled.module.train()
    factor = next(t for t in objective.terms if t.name == "aux1").factor(0, spec.train.epochs)

    def hand_loss(out, y):
        main, aux = F.cross_entropy(out["main"], y), factor * F.cross_entropy(out["aux1"], y)
        return main + aux, torch.stack([main, aux]).detach()

    deployed = lower(graph, ["main"])

    def main_loss(out, y):
        loss = F.cross_entropy(out["main"], y)
        return loss, loss.detach()[None]

    netspec_step = step_fn(compiled.module, lambda out, y: objective(out, y, 0))
    t = interleaved({"netspec": netspec_step, "hand": step_fn(hand, hand_loss),
                     "no_branch": step_fn(deployed, main_loss)}, (x, y), args.steps)

    data = load_dataset(spec.data, spec.input.shape)
    batches = Batches(data.train_x, data.train_y, args.batch, train=True, mean=spec.input.mean, std=spec.input.std,
                      augment=spec.data.augment)
    started = time.perf_counter()
    images = sum(len(yb) for _, yb in batches)
    data_rate = images / (time.perf_counter() - started)
    train_rate = args.batch / t["netspec"]

    flop_share = summary["train"]["flops"] / summary["deploy"]["flops"]
    model_flops = 3 * summary["train"]["flops"] * args.batch / t["netspec"]
    peak = matmul_flops()
    threads = f" --threads {args.threads}" if args.threads else ""
    print(f"command: python bench/bench_train.py --steps {args.steps} --batch {args.batch}{threads}   "
          f"({torch.get_num_threads()} threads, torch {torch.__version__})")
    print("| measure | value | goal |\n|---|---|---|")
    print(f"| step time netspec / hand-written ({1e3 * t['netspec']:.1f} / {1e3 * t['hand']:.1f} ms) "
          f"| {t['netspec'] / t['hand']:.3f}× | ≤ 1.02× |")
    print(f"| step time with branch / without ({1e3 * t['netspec']:.1f} / {1e3 * t['no_branch']:.1f} ms) "
          f"| {t['netspec'] / t['no_branch']:.3f}× | ≤ 1.05 × FLOP share = {1.05 * flop_share:.3f}× |")
    print(f"| FLOP share: training graph / deployed graph | {flop_share:.3f}× | |")
    print(f"| data throughput / training throughput ({data_rate:,.0f} / {train_rate:,.0f} img/s) "
          f"| {data_rate / train_rate:.0f}× | ≥ 20× |")
    print(f"| MFU: model FLOP/s / fp32 matmul FLOP/s ({model_flops / 1e9:.1f} / {peak / 1e9:.1f} GFLOP/s) "
          f"| {100 * model_flops / peak:.1f}% | |")


if __name__ == "__main__":
    main()
