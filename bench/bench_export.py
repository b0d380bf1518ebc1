"""Benchmark of the deployed model (not a test): `python bench/bench_export.py [SPEC ...] [--threads N]`.

For each spec, at batch 1 and 64, with every contender measured in interleaved rounds (so load drift
hits all alike; the figure is the median round's per-call time):
  * pruned ONNX in onnxruntime vs torch eager of the same pruned net (goal: ≥ 1.5× faster at batch 1);
  * pruned ONNX vs the ONNX of the never-branched net — the spec compiled without its branches,
    same weights (goal: identical node list, latency ratio 1.00 ± 0.03);
  * unpruned ONNX (every head) vs pruned: what the branches would cost if they were shipped;
  * A/A control: the pruned model in a second session vs the first — the noise floor of the ratios.
Prints a Markdown table (the figures in docs/export.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from netspec.compiler import compile_spec
from netspec.compiler.lower import lower
from netspec.compiler.prune import prune, unbranched_overrides
from netspec.spec import MAIN_HEAD
from netspec.runtime.export import to_onnx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = [ROOT / "specs/cnds8_fmnist.yaml", ROOT / "specs/dks_resnet32.yaml"]
BATCHES = (1, 64)


def node_list(model) -> list[tuple]:
    """Every ONNX node as (op, inputs, outputs, attributes)."""
    return [(n.op_type, tuple(n.input), tuple(n.output), str(n.attribute)) for n in model.graph.node]


def session(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle pool threads must not spin: they would steal the CPU from the contender measured next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_call(sess: ort.InferenceSession, x: np.ndarray):
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def torch_call(module: torch.nn.Module, x: torch.Tensor):
    def call():
        with torch.inference_mode():
            module(x)
    return call


def interleaved(calls: dict[str, object], seconds: float, rounds: int) -> dict[str, float]:
    """Median seconds per call of each contender over `rounds`; every round times each contender once,
    starting with a different one each round (no contender always follows the same other)."""
    for call in calls.values():  # warm-up, and an estimate of the calls per round
        call()
    per_call = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        per_call[name] = max(time.perf_counter() - start, 1e-6)
    repeats = {name: max(1, int(seconds / rounds / len(calls) / t)) for name, t in per_call.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call = calls[name]
            start = time.perf_counter()
            for _ in range(repeats[name]):
                call()
            samples[name].append((time.perf_counter() - start) / repeats[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def bench_spec(path: Path, threads: int, seconds: float, rounds: int) -> tuple[str, list[str]]:
    """(a line on the node lists, one Markdown table row per batch size)."""
    compiled = compile_spec(path)
    spec = compiled.spec
    pruned = prune(compiled.module).eval()
    plain = lower(compile_spec(path, unbranched_overrides(spec)).network, [MAIN_HEAD], single=True)
    plain.load_state_dict(pruned.state_dict())
    plain.eval()
    models = {
        "pruned": to_onnx(pruned, spec.input.name, spec.input.shape, [MAIN_HEAD]),
        "never-branched": to_onnx(plain, spec.input.name, spec.input.shape, [MAIN_HEAD]),
        "unpruned": to_onnx(compiled.module.eval(), spec.input.name, spec.input.shape, list(compiled.heads)),
    }
    same_nodes = node_list(models["pruned"]) == node_list(models["never-branched"])
    same_bytes = models["pruned"].SerializeToString() == models["never-branched"].SerializeToString()
    sessions = {name: session(model, threads) for name, model in models.items()}
    sessions["pruned again"] = session(models["pruned"], threads)
    nodes = (f"{spec.name}: pruned {len(models['pruned'].graph.node)} nodes, never-branched "
             f"{len(models['never-branched'].graph.node)} ({'identical node lists' if same_nodes else 'NODE LISTS DIFFER'}"
             f"{', byte-identical models' if same_bytes else ''}), "
             f"unpruned {len(models['unpruned'].graph.node)}")
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, *spec.input.shape)
        calls = {name: onnx_call(s, x.numpy()) for name, s in sessions.items()}
        calls["torch eager"] = torch_call(pruned, x)
        t = interleaved(calls, seconds, rounds)
        rows.append(f"| {spec.name} | {batch} | {1e3 * t['pruned']:.3f} | {t['torch eager'] / t['pruned']:.2f}× | "
                    f"{t['pruned'] / t['never-branched']:.3f} | {t['pruned again'] / t['pruned']:.3f} | "
                    f"{t['unpruned'] / t['pruned']:.2f}× |")
    return nodes, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, default=[s for s in DEFAULT_SPECS if s.is_file()])
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and onnxruntime alike (default 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per spec and batch size")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; torch "
          f"{torch.__version__}, onnxruntime {ort.__version__}; median of {args.rounds} interleaved rounds\n")
    print("| spec | batch | pruned ONNX ms/batch | torch eager / pruned ONNX | pruned / never-branched | "
          "A/A control | unpruned / pruned |")
    print("|---|---|---|---|---|---|---|")
    node_lines = []
    for path in args.specs:
        nodes, rows = bench_spec(path, args.threads, args.seconds, args.rounds)
        node_lines.append(nodes)
        print("\n".join(rows), flush=True)
    print("\n" + "\n".join(node_lines))


if __name__ == "__main__":
    main()
