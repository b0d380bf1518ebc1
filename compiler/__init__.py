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
        """Hash of the resolved spec: a checkpoint records it to recognise its spec."""
        text = json.dumps(self.spec.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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
