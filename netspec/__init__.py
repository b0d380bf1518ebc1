"""netspec: a Caffe-style declarative graph compiler for deeply-supervised CNNs.

`import netspec` stays light (no torch): `netspec.load` imports the compiler when it is called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from pathlib import Path

    from netspec.compiler import Compiled
    from netspec.limits import Limits

__version__ = "0.1.0"


def load(spec: "str | Path", overrides: Iterable[str] = (), limits: "Limits | None" = None) -> "Compiled":
    """Compile a spec file (plus `key=value` overrides, as on the command line) into a `Compiled`, within `limits`
    (default `Limits()`: README's bounds, no code from the spec; `Limits(code=True)` for a spec you trust):

    `.module` the training `torch.fx.GraphModule` (`module(x)` returns `{head: logits}`; parameters named after
    the spec's nodes), `.spec` the validated spec, `.network` the typed graph, `.heads`, and
    `.exit_module(name)`, one exit alone (the backbone up to it and its head, sharing the layers). A spec
    mistake raises `netspec.errors.SpecError` (`file:line: what — fix`). See docs/python_api.md."""
    from netspec.compiler import compile_spec
    from netspec.limits import Limits

    return compile_spec(spec, list(overrides), limits or Limits())


def load_cascade(folder: "str | Path", threads: int | None = 1):
    """Load an early-exit cascade directory (`netspec export --cascade DIR`, thresholds from `netspec calibrate`)
    for serving; onnxruntime and numpy only (no torch). `cascade.run(x, thresholds=None)` takes a normalised
    N×C×H×W float32 array (mean/std in `cascade.manifest["input"]`) and returns `(logits, exit, flops)`, one row
    per input in input order: the logits of the exit the row left at, that exit's index in `cascade.exits`, and
    the row's cost (the cumulative FLOPs of its exit). `threads`: onnxruntime intra-op threads (None: one per
    core). See docs/cascade.md."""
    from netspec.runtime.cascade import Cascade

    return Cascade.load(folder, threads)
