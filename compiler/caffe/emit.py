"""Write an imported Caffe net as a netspec spec (YAML text).

The deepest loss (most weight layers from the input; on a tie the larger weight, then the later one) supervises the backbone's `main`
head; every other loss's path becomes a branch whose `from:` is where it leaves the backbone. Layers that feed no
loss (a deploy net's `prob` Softmax, say) are dropped. Names are Caffe's (`/` and other characters a netspec
name cannot have become `_`); in-place layers are nodes of their own; each node is one flow-style line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from netspec.errors import Pos
from netspec.ops import REGISTRY
from netspec.spec import MAIN_HEAD
from netspec.compiler.caffe.layers import Loss, Net, NetNode, most_common, spec_name
from netspec.compiler.caffe.textformat import CaffeError, one_line

HAS_MULTIPLIERS = "lr_mult" in REGISTRY["conv"].model_fields  # the schema's per-parameter multipliers


@dataclass
class Head:
    name: str  # 'main' or the branch's name
    loss: Loss
    nodes: list[NetNode]  # the branch's nodes (empty for main)
    attach: str | None = None  # backbone node the branch leaves from


@dataclass
class Structure:
    backbone: list[NetNode]
    heads: list[Head]
    classes: int
    dropped: list[str] = field(default_factory=list)


def _ancestry(node: str, by_name: dict[str, NetNode]) -> set[str]:
    seen, todo = set(), [node]
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        todo.extend(by_name[name].inputs)
    return seen


def _depth(net: Net) -> dict[str, int]:
    depth = {net.input.name: 0}
    for node in net.nodes:
        depth[node.name] = max(depth[i] for i in node.inputs) + int(node.weighted)
    return depth


def structure(net: Net) -> Structure:
    """Backbone, branches and heads of the net."""
    by_name = {n.name: n for n in net.nodes}
    losses = list(net.losses)
    if not losses:  # a deploy net: the last layer is the output (without its softmax: netspec's heads are logits)
        if not net.nodes:
            raise CaffeError(f"{net.file}: the net has no layers after its input", "give it some layers")
        last = net.nodes[-1]
        while last.spec["op"] == "softmax" and last.inputs[0] in by_name:
            last = by_name[last.inputs[0]]
        losses = [Loss("", "", last.name, 1.0, last.pos)]
    depth = _depth(net)
    order = {n.name: i for i, n in enumerate(net.nodes)}
    main = max(losses, key=lambda l: (depth[l.logits], l.weight, order.get(l.logits, -1)))
    trunk = _ancestry(main.logits, by_name)
    backbone = [n for n in net.nodes if n.name in trunk]
    taken = set(by_name) | {net.input.name}
    heads = [Head(MAIN_HEAD, main, [])]
    owner: dict[str, str] = {}
    for loss in losses:
        if loss is main:
            continue
        name = spec_name(_branch_name(loss.caffe, [l.caffe for l in losses]), taken)
        own = _ancestry(loss.logits, by_name) - trunk
        for node in own:
            if node in owner:
                raise CaffeError(f"layer '{by_name[node].caffe}' feeds two auxiliary losses ('{owner[node]}' and "
                                f"'{loss.caffe}')", "netspec branches do not share layers: give each loss its own "
                                "layers", by_name[node].pos)
            owner[node] = loss.caffe
        nodes = [n for n in net.nodes if n.name in own]
        if not nodes:  # a loss straight on a backbone node: the branch is an identity tap
            tap = NetNode(spec_name(name + "_logits", taken), "", "", {"op": "identity"}, [loss.logits], loss.pos,
                          by_name[loss.logits].shape if loss.logits in by_name else net.input.shape)
            nodes = [tap]
        feeders = {i for n in nodes for i in n.inputs if i in trunk or i == net.input.name}
        attach = max(feeders, key=lambda n: order.get(n, -1))
        heads.append(Head(name, loss, nodes, attach))
    used = trunk | set(owner)
    dropped = [f"'{n.caffe}' ({n.type}, line {n.pos.line})" for n in net.nodes if n.name not in used]
    last = by_name.get(main.logits)
    if last is None or len(last.shape) != 1:
        raise CaffeError(f"the net's output '{main.logits}' is not a vector of class scores",
                        "end the main path in an InnerProduct (fc) layer", main.pos)
    return Structure(backbone, heads, last.shape[0], dropped)


def _branch_name(loss: str, all_losses: list[str]) -> str:
    """GoogLeNet's 'loss1/loss1' → 'loss1' (the part before '/', when it tells the losses apart)."""
    head = loss.split("/")[0]
    if "/" in loss and sum(l.split("/")[0] == head for l in all_losses) == 1:
        return head
    return loss or "aux"


# --- YAML --------------------------------------------------------------------------------------

def flow(value: Any) -> str:
    """One YAML flow-style value: {a: 1, b: [2, 3]}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(f"{value:.9g}"))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text not in ("true", "false", "null", "yes", "no",
                                                                           "on", "off"):
        return text
    return json.dumps(text)


def _mult(pairs: list[tuple[float, float]], index: int) -> Any:
    """Caffe's per-blob multipliers (weight, bias) → a number or {weight: x, bias: y}."""
    weight = pairs[0][index] if pairs else 1.0
    bias = pairs[1][index] if len(pairs) > 1 else weight
    return weight if weight == bias else {"weight": weight, "bias": bias}


@dataclass
class Defaults:
    weight: dict | None
    bias: float | None
    lr_mult: Any
    decay_mult: Any


def defaults(nodes: list[NetNode]) -> Defaults:
    """The spec-wide init and multipliers: the most common among the weight layers."""
    weighted = [n for n in nodes if n.weighted]
    params = [n for n in nodes if n.weighted or n.spec["op"] in ("batchnorm", "prelu")]
    return Defaults(most_common([n.filler for n in weighted]),
                    most_common([n.bias for n in weighted if n.bias is not None]),
                    most_common([_mult(n.mults, 0) for n in params]) if params else 1.0,
                    most_common([_mult(n.mults, 1) for n in params]) if params else 1.0)


def node_line(node: NetNode, previous: str, classes: int, is_head: bool, d: Defaults,
              comments: list[str]) -> str:
    spec: dict[str, Any] = {"name": node.name}
    if node.inputs != [previous]:
        spec["from"] = node.inputs[0] if len(node.inputs) == 1 else list(node.inputs)
    spec.update(node.spec)
    if is_head and spec.get("out") == classes:
        spec["out"] = "${classes}"
    init = {}
    if node.weighted and node.filler != d.weight:
        init["weight"] = node.filler or {"type": "default"}
    if node.bias is not None and node.bias != d.bias:
        init["bias"] = node.bias
    if init:
        spec["init"] = init
    if node.weighted or node.spec["op"] in ("batchnorm", "prelu"):
        lr, decay = _mult(node.mults, 0), _mult(node.mults, 1)
        if HAS_MULTIPLIERS:
            if lr != d.lr_mult:
                spec["lr_mult"] = lr
            if decay != d.decay_mult:
                spec["decay_mult"] = decay
        elif (lr, decay) != (d.lr_mult, d.decay_mult):
            comments.append(f"Caffe lr_mult {flow(lr)}, decay_mult {flow(decay)}")
    notes = list(node.notes) + comments
    if node.caffe and node.caffe != node.name:
        notes.insert(0, f"Caffe '{node.caffe}'")
    return f"- {flow(spec)}" + (f"  # {'; '.join(notes)}" if notes else "")


def to_yaml(net: Net, s: Structure, name: str, sources: list[str], train: dict[str, Any],
            train_comments: list[str], extra_notes: list[str], data: dict[str, Any] | None = None,
            data_comments: list[str] = ()) -> tuple[str, dict[int, Pos]]:
    """The spec's text, and where in the prototxt each generated line comes from (by line number, 1-based):
    an error in the spec is reported at the prototxt's line."""
    d = defaults(s.backbone + [n for h in s.heads for n in h.nodes])
    info = net.input
    origin: dict[int, Pos] = {}
    out = [f"# Imported from {' + '.join(sources)} by `netspec import-caffe`.",
           "# Caffe layer names are kept (characters a netspec name cannot have became '_'); every loss but the",
           "# deepest is a branch. Edit freely: this file is yours now."]
    for note in extra_notes + net.notes:
        out.append(f"# note: {note}")
    if s.dropped:
        out.append(f"# dropped (they feed no loss): {', '.join(s.dropped)}")
    out.append(f"name: {flow(name)}")
    if net.name:
        out.append(f"description: {flow('Caffe net ' + one_line(net.name))}")
    inp: dict[str, Any] = {"shape": list(info.shape)}
    if info.pos and (info.mean or info.scale != 1.0 or info.crop_size or info.batch_size):
        # Caffe feeds (pixel - mean_value) * scale on 0..255 pixels; netspec (pixel/255 - mean) / std
        inp["mean"] = [m / 255.0 for m in info.mean] or [0.0]
        inp["std"] = [1.0 / (255.0 * info.scale)]
    if info.name != "data":
        inp["name"] = info.name
    for comment in info.comments:
        out.append(f"# {comment}")
    out.append(f"input: {flow(inp)}")
    origin[len(out)] = info.pos
    out.append(f"classes: {s.classes}")
    init = {}
    if d.weight is not None:
        init["weight"] = d.weight
    if d.bias is not None:
        init["bias"] = d.bias
    if init:
        out.append(f"init: {flow(init)}")
    out.append("")
    out.append("nodes:")
    previous = info.name
    main = s.heads[0]
    for node in s.backbone:
        out.append("  " + node_line(node, previous, s.classes, node.name == main.loss.logits, d, []))
        origin[len(out)] = node.pos
        previous = node.name
    if len(s.heads) > 1:
        out.append("")
        out.append("branches:")
        for head in s.heads[1:]:
            where = f"  # Caffe loss '{head.loss.caffe}', line {head.loss.pos.line}" if head.loss.caffe else ""
            out.append(f"  {head.name}:{where}")
            out.append(f"    from: {head.attach}")
            out.append("    nodes:")
            previous = head.attach
            for node in head.nodes:
                out.append("      " + node_line(node, previous, s.classes, node.name == head.loss.logits, d, []))
                origin[len(out)] = node.pos
                previous = node.name
    out.append("")
    out.append("losses:")
    for head in s.heads:
        where = f"  # {head.loss.type} '{head.loss.caffe}', line {head.loss.pos.line}" if head.loss.caffe else ""
        out.append(f"  {head.name}: {flow({'head': head.name, 'weight': head.loss.weight})}{where}")
        origin[len(out)] = head.loss.pos
    if not data and info.mirror:
        data = {"augment": {"flip": True}}
    if info.comments or data:
        out.append("")
        out.extend(f"# {c}" for c in data_comments)
        if info.comments and not (data or {}).get("source"):
            out.append("# data: the Caffe net's database is not here: set data.source and data.path")
        out.append(f"data: {flow(data or {})}")
        origin[len(out)] = info.pos
    if HAS_MULTIPLIERS:
        if d.lr_mult != 1.0:
            train = {**train, "lr_mult": d.lr_mult}
        if d.decay_mult != 1.0:
            train = {**train, "decay_mult": d.decay_mult}
    elif (d.lr_mult, d.decay_mult) != (1.0, 1.0):
        train_comments.append(f"Caffe's usual multipliers: lr_mult {flow(d.lr_mult)}, decay_mult "
                              f"{flow(d.decay_mult)} (this netspec has no lr_mult/decay_mult keys)")
    if train or train_comments:
        out.append("")
        out.extend(f"# {c}" for c in train_comments)
    if train:
        out.append("train:")
        for key, value in train.items():
            out.append(f"  {key}: {flow(value)}")
    return "\n".join(one_line(line) for line in out) + "\n", origin
