"""What a checkpoint records about its graph, so a head is never loaded onto a different function.

`record(network, param_names)` is a plain dict (strings, lists, ints: it loads with `weights_only`):
`input` (name and shape), `nodes` (each op node: its op and attributes as canonical JSON, its inputs, in
topological order), `heads` (each head: its node and a structure hash of its ancestry) and `params` (each
parameter or buffer name: the node it belongs to). `node_hashes` gives every node a hash of everything it
depends on (ops with their attributes, edges), so two graphs agree on a node exactly when its ancestry is
the same. `changes(old, new, head)` says in words what changed in a head's ancestry (`was from relu4_1,
now from relu3_2`). A node's `init:` is not part of its structure: it says how the weights start, not
what the layer computes.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

from netspec.compiler.ir import Network

VERSION = 1
NOT_STRUCTURE = {"name", "from_", "init"}


def record(network: Network, param_names: Iterable[str]) -> dict:
    nodes = {}
    for node in network:  # topological order
        op = node.op.model_dump(mode="json", exclude=NOT_STRUCTURE)
        nodes[node.name] = {"op": json.dumps(op, sort_keys=True), "inputs": list(node.inputs),
                            "branch": node.branch or ""}
    out = {"version": VERSION, "input": {"name": network.input.name, "shape": list(network.input.shape)},
           "nodes": nodes, "heads": {}, "params": param_nodes(network, param_names)}
    hashes = node_hashes(out)
    out["heads"] = {head: {"node": node, "hash": hashes[node]} for head, node in network.heads.items()}
    return out


def param_nodes(network: Network, names: Iterable[str]) -> dict[str, str]:
    """Each parameter (or buffer) name → the node it belongs to (the longest node name it starts with)."""
    out = {}
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            candidate = ".".join(parts[:cut])
            if candidate in network.nodes:
                out[name] = candidate
                break
    return out


def node_hashes(rec: dict) -> dict[str, str]:
    """Every node (and the input) → a hash of its ancestry: its name, op, attributes and inputs, recursively."""
    inp = rec["input"]
    hashes = {inp["name"]: _hash(["input", inp["name"], inp["shape"]])}
    for name, node in rec["nodes"].items():  # topological order: inputs first
        hashes[name] = _hash([name, node["op"], [hashes.get(i, "?" + i) for i in node["inputs"]]])
    return hashes


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def ancestry(rec: dict, node: str) -> list[str]:
    """The op nodes `node` depends on (itself included), in the record's topological order."""
    wanted, stack = set(), [node]
    while stack:
        name = stack.pop()
        if name in wanted or name not in rec["nodes"]:
            continue
        wanted.add(name)
        stack.extend(rec["nodes"][name]["inputs"])
    return [n for n in rec["nodes"] if n in wanted]


def changed_heads(old: dict, new: dict, heads: Iterable[str]) -> dict[str, str]:
    """Of `heads` (of the new graph), those whose structure differs from the old record: head → what changed."""
    out = {}
    for head in heads:
        if head not in old["heads"]:
            out[head] = "not in the checkpoint (a new head)"
        elif old["heads"][head]["hash"] != new["heads"][head]["hash"]:
            out[head] = changes(old, new, head)
    return out


def changes(old: dict, new: dict, head: str, limit: int = 3) -> str:
    """What differs between the old and new ancestry of `head`, in words (the first `limit` differences)."""
    said = []
    if old["input"] != new["input"]:
        said.append(f"input was {old['input']['shape']}, now {new['input']['shape']}")
    if old["heads"][head]["node"] != new["heads"][head]["node"]:
        said.append(f"was the output of {old['heads'][head]['node']}, now of {new['heads'][head]['node']}")
    before = ancestry(old, old["heads"][head]["node"])
    after = ancestry(new, new["heads"][head]["node"])
    for name in after:
        if name not in before:
            continue
        a, b = old["nodes"][name], new["nodes"][name]
        if a["inputs"] != b["inputs"]:
            who = f"{name} " if not (b["branch"] == head and not _inside(new, b["inputs"], head)) else ""
            said.append(f"{who}was from {', '.join(a['inputs'])}, now from {', '.join(b['inputs'])}")
        if a["op"] != b["op"]:
            said.append(f"{name}: {_op_diff(json.loads(a['op']), json.loads(b['op']))}")
    joined = [n for n in after if n not in before]
    left = [n for n in before if n not in after]
    for names, what in (([n for n in joined if n not in old["nodes"]], "new node{s}"),
                        ([n for n in joined if n in old["nodes"]], "now also reads {nodes} (it moved deeper)"),
                        ([n for n in left if n in new["nodes"]], "no longer reads {nodes} (it moved shallower)"),
                        ([n for n in left if n not in new["nodes"]], "no longer has {nodes}")):
        if names:
            listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            said.append(what.format(s="s" * (len(names) > 1), nodes=listed) + ("" if "{nodes}" in what else f" {listed}"))
    if not said:
        said.append("its graph differs")
    return "; ".join(said[:limit]) + ("; ..." if len(said) > limit else "")


def _inside(rec: dict, inputs: list[str], branch: str) -> bool:
    return all(rec["nodes"].get(i, {}).get("branch") == branch for i in inputs)


def _op_diff(a: dict, b: dict) -> str:
    if a.get("op") != b.get("op"):
        return f"op {a.get('op')} → {b.get('op')}"
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return ", ".join(f"{k} {a.get(k)} → {b.get(k)}" for k in keys)


def unchanged_nodes(old: dict, new: dict) -> set[str]:
    """Nodes whose whole ancestry (ops, attributes, edges) is the same in both records."""
    a, b = node_hashes(old), node_hashes(new)
    return {n for n in new["nodes"] if a.get(n) == b[n]}
