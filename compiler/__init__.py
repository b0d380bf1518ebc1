"""The netspec compiler: parse → validate → expand → build graph → check → infer shapes → lower.

Each pass is a small function from one representation to the next; `compile_spec` chains them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from torch import fx

from netspec.spec import Spec
from compiler.expand import expand
from compiler.graph import build_graph, check_graph
from compiler.lower import lower
from compiler.parse import parse
from compiler.shapes import infer_shapes
from compiler.validate import validate


NETWORK_SECTIONS = {"input", "classes", "vars", "blocks", "nodes", "output", "branches"}


@dataclass
class Compiled:
    """A compiled spec: the validated spec, the annotated graph and the training GraphModule."""

    path: Path
    spec: Spec
    graph: nx.DiGraph
    module: fx.GraphModule

    @property
    def heads(self) -> dict[str, str]:
        return self.graph.graph["heads"]

    @property
    def spec_hash(self) -> str:
        """Hash of what decides the weights' names and shapes (the network sections of the resolved spec).
        A checkpoint records it; `data:`, `train:`, losses and init may change without breaking it."""
        network = self.spec.model_dump(mode="json", by_alias=True, include=NETWORK_SECTIONS)
        return hashlib.sha256(json.dumps(network, sort_keys=True).encode()).hexdigest()[:16]


def analyse(path: str | Path, overrides: list[str] = ()) -> tuple[Spec, nx.DiGraph]:
    """All passes up to shape inference: the checked graph with shapes, params and FLOPs."""
    raw, context = parse(path, overrides)
    spec = validate(raw)
    graph = check_graph(build_graph(spec, expand(spec, context)))
    return spec, infer_shapes(graph)


def compile_spec(path: str | Path, overrides: list[str] = ()) -> Compiled:
    """Every pass: a spec file (plus `key=value` overrides) to a training GraphModule."""
    spec, graph = analyse(path, overrides)
    return Compiled(Path(path), spec, graph, lower(graph))
