"""The early-exit cascade in PyTorch, for users who serve in torch: the same segments (`compiler/cascade.split`, the
confidence computed by the same `CONFIDENCE` function the ONNX segments export) and the same decisions as the
onnxruntime runner (`runtime/cascade.Cascade.run`): a row leaves at exit k when its confidence > thresholds[k],
segment k runs only on the rows still in the cascade, results come back in input order.

    from netspec.runtime.cascade_torch import TorchCascade
    cascade = TorchCascade.from_compiled(netspec.load("specs/mwbp_fmnist.yaml"), criterion="max")
    logits, exit, flops = cascade.run(x, thresholds=[0.9, 0.9, 0.9, 0.9])
"""
from __future__ import annotations

import torch

from netspec.compiler import Compiled
from netspec.compiler.cascade import Segment, split
from netspec.runtime.cascade import CascadeResult, check_thresholds


class TorchCascade:
    """The segments of a compiled spec (sharing its layers and weights), run with early exits in torch."""

    def __init__(self, segments: list[Segment], input_name: str, criterion: str):
        self.segments, self.input_name, self.criterion = segments, input_name, criterion
        self.exits = [s.exit for s in segments]
        total, cumulative = 0, []
        for seg in segments:
            total += seg.flops
            cumulative.append(total)
        self.cumulative = torch.tensor(cumulative, dtype=torch.int64)

    @classmethod
    def from_compiled(cls, compiled: Compiled, criterion: str = "max") -> "TorchCascade":
        """The cascade of `compiled.module` as it is (load weights into it first); switched to eval mode."""
        model = compiled.module.eval()
        segments = split(model, compiled.network, criterion=criterion)
        for seg in segments:
            seg.module.eval()
        return cls(segments, compiled.spec.input.name, criterion)

    @torch.no_grad()
    def run(self, x: torch.Tensor, thresholds) -> CascadeResult:
        """(logits of the exit each row left at, that exit's index, the row's cumulative FLOPs), as numpy arrays
        like the onnxruntime runner's. Every segment runs whole, the heads of exits at threshold 1 too, so the FLOPs
        are the cumulative ones of every exit (the onnxruntime runner's plans leave those heads out)."""
        t = check_thresholds(thresholds, self.exits)
        n, last = len(x), len(self.segments) - 1
        values = {self.input_name: x}
        rows = torch.arange(n)
        logits = exits = None
        for k, seg in enumerate(self.segments):
            outs = seg.module(*(values[name] for name in seg.inputs))
            values.update(zip(seg.outputs, outs))
            if logits is None:
                logits = torch.empty(n, outs[0].shape[1])
                exits = torch.full((n,), last, dtype=torch.int64)
            leave = torch.ones(len(rows), dtype=torch.bool) if k == last else outs[1] > t[k]
            logits[rows[leave]] = outs[0][leave]
            exits[rows[leave]] = k
            stay = ~leave
            if not stay.any():
                break
            rows = rows[stay]
            values = {name: value[stay] for name, value in values.items()}
        return CascadeResult(logits.numpy(), exits.numpy(), self.cumulative[exits].numpy())
