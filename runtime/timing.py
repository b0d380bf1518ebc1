"""`netspec time`, like `caffe time`: forward and backward time per node, per branch, and the totals of a training
step against the deployed (pruned) forward, on the spec's device, with warm-up and repeats.

Per node, forward: the training GraphModule run through a timing `fx.Interpreter` in eval mode under
`torch.no_grad` (what a deployed forward does). Per node, backward (as `caffe time`, layer
by layer): the node run again alone in train mode on detached copies of the inputs a train-mode forward gave it,
then the time of the gradient of its output (all ones) with respect to its parameters and its inputs (not the
network's input, whose gradient a training step does not compute); `-` for a node with nothing to differentiate.
BatchNorm running statistics of the module change (train-mode forwards); its weights do not. The totals are measured without any hook:
the training step is forward + objective + backward (no optimizer `step()`), the deploy forward is the
main exit pruned (`prune`) in eval mode under `torch.no_grad`. Times are medians over the repeats, in ms.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import fx

from netspec.compiler import Compiled
from netspec.spec import MAIN_HEAD
from netspec.runtime.distributed import pick_device
from netspec.runtime.objective import Objective


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class _Timed(fx.Interpreter):
    """Runs the graph node by node, adding each op node's forward time to `forward_ms`; with `keep`, also keeps each
    op node's arguments (for the backward timing)."""

    def __init__(self, gm: fx.GraphModule, clock: _Clock, keep: bool = False):
        super().__init__(gm)
        self.clock, self.keep = clock, keep
        self.forward_ms: dict[str, float] = {}
        self.calls: dict[str, tuple[fx.Node, tuple, dict]] = {}

    def run_node(self, n: fx.Node):
        if n.op not in ("call_module", "call_function"):
            return super().run_node(n)
        name = n.target if n.op == "call_module" else n.name
        if self.keep:
            self.calls[name] = (n, *self.fetch_args_kwargs_from_env(n))
        start = self.clock()
        out = super().run_node(n)
        self.forward_ms[name] = (self.clock() - start) * 1e3
        return out


def _backward_ms(gm: fx.GraphModule, n: fx.Node, args: tuple, kwargs: dict, clock: _Clock, data: set) -> float | None:
    """One node's backward alone: its forward again on detached copies of its inputs, then the time of the gradient
    of its output (ones) with respect to its parameters and to those inputs that are not the network's input."""
    inputs = []

    def detach(value, source):
        if not isinstance(value, torch.Tensor):
            return value
        value = value.detach()
        if value.is_floating_point() and source not in data:
            value.requires_grad_(True)
            inputs.append(value)
            return value.clone()  # not a leaf: an in-place op (ReLU(inplace=True)) may write it
        return value
    args = tuple(detach(a, s) for a, s in zip(args, [getattr(x, "name", None) for x in n.args] + [None] * len(args)))
    params = list(gm.get_submodule(n.target).parameters()) if n.op == "call_module" else []
    wrt = inputs + [p for p in params if p.requires_grad]
    if n.op == "call_module":
        out = gm.get_submodule(n.target)(*args, **kwargs)
    elif n.op == "call_method":  # a traced `backbone:` call such as x.view(...)
        out = getattr(args[0], n.target)(*args[1:], **kwargs)
    else:
        out = n.target(*args, **kwargs)
    if not wrt or not isinstance(out, torch.Tensor) or not out.requires_grad:
        return None
    grad = torch.ones_like(out)
    start = clock()
    torch.autograd.grad(out, wrt, grad, allow_unused=True)
    return (clock() - start) * 1e3


def time_spec(compiled: Compiled, *, repeats: int = 10, warmup: int = 2, batch: int | None = None,
              device: str | None = None) -> dict:
    """The timing report as plain data: per node (network order) forward/backward ms, FLOPs and GFLOP/s; per
    branch; totals. Does not change `compiled.module`'s weights (it is put back in eval mode when done)."""
    spec, net = compiled.spec, compiled.network
    dev = pick_device(device or spec.train.device)
    batch = batch or spec.train.batch_size
    clock = _Clock(dev)
    gm = compiled.module.to(dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *spec.input.shape, generator=gen).to(dev)
    labels = torch.randint(0, spec.classes, (batch,), generator=gen).to(dev)
    objective = Objective(net)
    spec_name = {k.replace(".", "_"): k for k in net.nodes}  # call_function nodes are named with '_' for '.'
    spec_name.update({k: k for k in net.nodes})

    forward: dict[str, list[float]] = {}
    backward: dict[str, list[float]] = {}
    gm.eval()
    with torch.no_grad():
        for i in range(warmup + repeats):
            run = _Timed(gm, clock)
            run.run(x)
            if i >= warmup:
                for k, v in run.forward_ms.items():
                    forward.setdefault(k, []).append(v)
    gm.train()
    data = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    run = _Timed(gm, clock, keep=True)
    run.run(x)
    for key, (n, args, kwargs) in run.calls.items():
        times = [_backward_ms(gm, n, args, kwargs, clock, data) for _ in range(warmup + repeats)][warmup:]
        if times[0] is not None:
            backward[key] = times

    train_ms = _median_ms(lambda: _train_step(gm, x, labels, objective), warmup, repeats, clock)
    deploy = compiled.exit_module(MAIN_HEAD).to(dev).eval()
    with torch.no_grad():
        deploy_ms = _median_ms(lambda: deploy(x), warmup, repeats, clock)
        gm.eval()
        train_forward_ms = _median_ms(lambda: gm(x), warmup, repeats, clock)
    gm.eval()

    nodes = []
    for key in forward:
        name = spec_name.get(key, key)
        node = net.nodes.get(name)
        fwd = statistics.median(forward[key])
        bwd = statistics.median(backward[key]) if key in backward else None
        flops = node.flops * batch if node else 0
        nodes.append({"name": name, "op": node.op.op if node else "?", "branch": node.branch if node else None,
                      "forward_ms": fwd, "backward_ms": bwd, "flops": flops,
                      "gflops_per_s": flops / (fwd * 1e6) if fwd > 0 and flops else None})
    branches: dict[str, dict] = {}
    for n in nodes:
        b = branches.setdefault(n["branch"] or "backbone", {"forward_ms": 0.0, "backward_ms": 0.0, "flops": 0})
        b["forward_ms"] += n["forward_ms"]
        b["backward_ms"] += n["backward_ms"] or 0.0
        b["flops"] += n["flops"]
    deploy_flops = sum(net.nodes[n].flops for n in net.ancestry(MAIN_HEAD)) * batch
    return {
        "spec": spec.name, "device": str(dev), "batch": batch, "repeats": repeats, "warmup": warmup,
        "nodes": nodes, "branches": branches,
        "total": {"node_forward_ms": sum(n["forward_ms"] for n in nodes),
                  "node_backward_ms": sum(n["backward_ms"] or 0.0 for n in nodes),
                  "train_forward_ms": train_forward_ms, "train_step_ms": train_ms, "deploy_forward_ms": deploy_ms,
                  "train_flops": sum(n.flops for n in net) * batch, "deploy_flops": deploy_flops},
    }


def _train_step(gm, x, labels, objective) -> None:
    gm.zero_grad(set_to_none=True)
    loss, _ = objective(gm(x), labels, 0.0)
    loss.backward()


def _median_ms(fn, warmup: int, repeats: int, clock: _Clock) -> float:
    times = []
    for i in range(warmup + repeats):
        start = clock()
        fn()
        if i >= warmup:
            times.append((clock() - start) * 1e3)
    return statistics.median(times)


def _flops(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def format_timing(report: dict) -> str:
    """The `caffe time`-like table: nodes by forward + backward time, descending; branches; totals."""
    nodes = sorted(report["nodes"], key=lambda n: -(n["forward_ms"] + (n["backward_ms"] or 0.0)))
    width = max([len(n["name"]) for n in nodes] + [4])
    lines = [f"{report['spec']}: batch {report['batch']} on {report['device']}, median of {report['repeats']} "
             f"(after {report['warmup']} warm-up), ms",
             "", f"{'node':<{width}}  {'op':<10} {'branch':<10} {'forward':>9} {'backward':>9} {'FLOPs':>9} {'GFLOP/s':>8}"]
    for n in nodes:
        bwd = f"{n['backward_ms']:.3f}" if n["backward_ms"] is not None else "-"
        rate = f"{n['gflops_per_s']:.2f}" if n["gflops_per_s"] is not None else "-"
        lines.append(f"{n['name']:<{width}}  {n['op']:<10} {(n['branch'] or '-'):<10} {n['forward_ms']:>9.3f} "
                     f"{bwd:>9} {_flops(n['flops']):>9} {rate:>8}")
    lines += ["", "per branch (sum over its nodes):"]
    for name, b in report["branches"].items():
        lines.append(f"  {name:<12} forward {b['forward_ms']:9.3f}  backward {b['backward_ms']:9.3f}  "
                     f"{_flops(b['flops'])} FLOPs")
    t = report["total"]
    lines += ["", f"sum of node forwards {t['node_forward_ms']:.3f} ms, of node backwards {t['node_backward_ms']:.3f} ms "
              "(through the timing hooks)",
              f"training forward      {t['train_forward_ms']:9.3f} ms  {_flops(t['train_flops'])} FLOPs (all heads, eval mode)",
              f"training step         {t['train_step_ms']:9.3f} ms  (forward + objective + backward, train mode)",
              f"deploy forward        {t['deploy_forward_ms']:9.3f} ms  {_flops(t['deploy_flops'])} FLOPs (main exit, pruned)"]
    return "\n".join(lines)
