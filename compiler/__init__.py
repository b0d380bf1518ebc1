"""The netspec compiler: parse → validate → expand → build graph → check → infer shapes → lower.

Each pass is a small function from one representation to the next (the typed IR is in `ir.py`);
`compile_spec` chains them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from torch import fx

from netspec.limits import Limits
from netspec.spec import Spec
from netspec.compiler.backbone import Traced
from netspec.compiler.expand import expand
from netspec.compiler.graph import build_graph, check_graph
from netspec.compiler.heads import check_heads
from netspec.compiler.ir import Network
from netspec.compiler.lower import lower, lower_graph
from netspec.compiler.parse import parse
from netspec.compiler.prune import prune
from netspec.compiler.shapes import infer_shapes
from netspec.compiler.validate import validate

NETWORK_SECTIONS = {"input", "classes", "vars", "blocks", "nodes", "backbone", "output", "branches"}


@dataclass(frozen=True)
class Compiled:
    """A compiled spec: the validated spec, the checked network (typed IR) and the training GraphModule.

    The module, and with it the initial weights, is built the first time `module` is read (compile, draw and
    the summary never read it): `lower` seeds torch's generator with `train.seed` itself, so the weights are the
    same whenever that happens; torch's global generator is left as lowering leaves it."""

    path: Path
    spec: Spec
    network: Network
    overrides: tuple[str, ...] = ()  # the `key=value` overrides it was compiled with
    limits: Limits = Limits()  # what it was compiled within; its data are read within the same limits

    @cached_property
    def module(self) -> fx.GraphModule:
        """The training GraphModule (`{head: logits}`), with its initial weights; built once, on first use."""
        return lower(self.network)

    @cached_property
    def graph(self) -> fx.Graph:
        """The training module's graph without modules or weights (its code is `model.py`)."""
        return lower_graph(self.network)

    @property
    def heads(self) -> dict[str, str]:
        return dict(self.network.heads)

    @property
    def spec_hash(self) -> str:
        """Hash of what decides the weights' names and shapes (the network sections of the resolved spec).
        A checkpoint records it; `data:`, `train:`, losses and init may change without breaking it."""
        network = self.spec.model_dump(mode="json", by_alias=True, include=NETWORK_SECTIONS)
        if self.spec.backbone is not None:  # the module's code decides them too: its traced calls, as they are
            network["traced"] = [[node.name, node.op.call] for node in self.network if isinstance(node.op, Traced)]
        return hashlib.sha256(json.dumps(network, sort_keys=True).encode()).hexdigest()[:16]

    def exit_module(self, head: str) -> fx.GraphModule:
        """A module computing one exit alone (the backbone up to it and its head), sharing this one's layers."""
        return prune(self.module, head)


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    """Parse and validate only: the spec's settings (its name, train:, data:) without building the network."""
    raw, _ = parse(path, overrides)
    return validate(raw)


def analyse(path: str | Path, overrides: list[str] = (), limits: Limits = Limits()) -> tuple[Spec, Network]:
    """All passes up to shape inference: the checked network with shapes, params and FLOPs, within `limits`
    (the commands read them from the environment; the default runs no code from the spec)."""
    raw, context = parse(path, overrides)
    spec = validate(raw)
    network = check_graph(build_graph(spec, expand(spec, context, limits)))
    return spec, check_heads(infer_shapes(network, limits))


def compile_spec(path: str | Path, overrides: list[str] = (), limits: Limits = Limits()) -> Compiled:
    """Every pass: a spec file (plus `key=value` overrides) to a training GraphModule (lowered on first use)."""
    spec, network = analyse(path, overrides, limits)
    return Compiled(Path(path), spec, network, tuple(overrides), limits)
