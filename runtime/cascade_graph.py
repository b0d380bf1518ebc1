"""ONNX surgery on a cascade's segment models (onnx only, no torch): the execution plan of a threshold setting,
and the single-model `If` form of a cascade.

A plan (`plan`): only the exits whose threshold can let a row out (threshold < 1) and the last exit decide; the
segments between two deciding exits are merged into one model that has no head of the exits in between (their
logits, confidence and layers that nothing else reads are dropped). So thresholds 1 everywhere run one model,
the main exit alone, and forcing every row out at exit k runs one model, the backbone up to k and k's head: the
measured cost of a cascade is then its layers and its decisions, not its file layout (docs/cascade.md).

`compose_anytime` nests the groups of a plan in `If` nodes: one model, one onnxruntime call per input.
"""
from __future__ import annotations

from dataclasses import dataclass

@dataclass
class Group:
    """Segments `first`..`exit_index` merged: one model computing exit `exit_index`'s logits (and confidence unless
    it is the last exit) and the features later groups read."""

    first: int
    exit_index: int
    model: object  # onnx.ModelProto
    inputs: list[str]
    outputs: list[str]


def deciding(thresholds: list[float]) -> list[int]:
    """The exits a row can leave at: thresholds below 1, then the last exit."""
    last = len(thresholds) - 1
    return [k for k, t in enumerate(thresholds[:last]) if t < 1.0] + [last]


def _renamed(proto, k: int, entry: dict) -> tuple[list, list]:
    """Segment k's nodes and initializers with every internal name prefixed (`s<k>/`): names stay unique when
    segments are merged; the names the manifest gives (inputs, outputs) are kept."""
    import onnx

    graph = proto.graph
    keep = set(entry["inputs"]) | set(entry["outputs"])
    inside = ({o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}) - keep

    def name(v: str) -> str:
        return f"s{k}/{v}" if v in inside else v
    nodes, inits = [], []
    for n in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.name = f"s{k}/{n.name}"
        new.input[:] = [name(v) if v else v for v in n.input]
        new.output[:] = [name(v) for v in n.output]
        nodes.append(new)
    for i in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(i)
        new.name = name(i.name)
        inits.append(new)
    return nodes, inits


def _needed(nodes: list, outputs: list[str]) -> list:
    """The nodes the `outputs` depend on, in their order."""
    want, keep = set(outputs), []
    for n in reversed(nodes):
        if any(o in want for o in n.output):
            keep.append(n)
            want.update(v for v in n.input if v)
    return keep[::-1]


def plan(protos: list, entries: list[dict], thresholds: list[float]) -> list[Group]:
    """The groups that run for `thresholds` (one per deciding exit, `deciding`), each a merged model."""
    from onnx import helper

    last = len(entries) - 1
    typed = {}  # name → ValueInfoProto, from every segment's declared inputs and outputs
    for proto in protos:
        typed.update({v.name: v for v in list(proto.graph.input) + list(proto.graph.output)})
    groups, first = [], 0
    for k in deciding(thresholds):
        nodes, inits = [], []
        for s in range(first, k + 1):
            more_nodes, more_inits = _renamed(protos[s], s, entries[s])
            nodes += more_nodes
            inits += more_inits
        produced = {o for n in nodes for o in n.output}
        read_later = {name for e in entries[k + 1:] for name in e["inputs"]}
        head = entries[k]["outputs"][:1 if k == last else 2]  # the logits (and the confidence)
        outputs = head + sorted(read_later & produced)
        nodes = _needed(nodes, outputs)
        used = {v for n in nodes for v in n.input if v}
        inits = [i for i in inits if i.name in used]
        constant = {i.name for i in inits}
        inputs = sorted(used - produced - constant)
        graph = helper.make_graph(nodes, f"exits_{first}_to_{k}", [typed[v] for v in inputs],
                                  [typed[v] for v in outputs], initializer=inits)
        model = helper.make_model(graph, opset_imports=list(protos[0].opset_import), ir_version=protos[0].ir_version)
        groups.append(Group(first, k, model, inputs, outputs))
        first = k + 1
    return groups


def float32_thresholds(thresholds) -> "np.ndarray":
    """The thresholds as float32 values t32 with `c > t32` ⟺ `c > t` for every float32 confidence c: each rounded
    down, not to nearest, so the `If` model (float32 in the graph) decides exactly as the runner's comparison of a
    float32 confidence with the float64 threshold."""
    import numpy as np

    t = np.asarray(thresholds, np.float64)
    t32 = t.astype(np.float32)
    return np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float32)


def compose_anytime(groups: list[Group], thresholds: list[float], classes: int):
    """One ONNX model with `If` nodes from a plan's groups: level g runs group g, then `If(min over the batch of
    its exit's confidence > thresholds[exit])` returns that exit's logits, else runs level g + 1 (the last level
    returns the main exit's). Inputs: the image batch and `thresholds` (one per early exit; an initializer of
    that name holds the given ones, so a caller may leave it out). Outputs: `logits` (N×C) and `exit` (int64
    scalar, the index of the exit taken). A batch leaves an exit only when every row of it is confident: the `If`
    decides per call, so this model is meant for batch 1 (`Cascade.run` decides per row)."""
    import onnx
    from onnx import TensorProto, helper

    early = len(thresholds) - 1
    image = groups[0].model.graph.input[0]

    def result(names: tuple[str, str]):
        return [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, None),
                helper.make_tensor_value_info(names[1], TensorProto.INT64, None)]

    def leave_with(logits: str, k: int, names: tuple[str, str]) -> list:
        return [helper.make_node("Identity", [logits], [names[0]]),
                helper.make_node("Constant", [], [names[1]],
                                 value=helper.make_tensor(names[1], TensorProto.INT64, [], [k]))]

    def level(g: int, names: tuple[str, str]) -> tuple[list, list]:
        group = groups[g]
        nodes, inits = list(group.model.graph.node), list(group.model.graph.initializer)
        k, logits = group.exit_index, group.outputs[0]
        if g == len(groups) - 1:
            return nodes + leave_with(logits, k, names), inits
        then_names, deeper = (f"logits.{g}.then", f"exit.{g}.then"), (f"logits.{g + 1}", f"exit.{g + 1}")
        then = helper.make_graph(leave_with(logits, k, then_names), f"leave_at_{logits}", [], result(then_names))
        deeper_nodes, deeper_inits = level(g + 1, deeper)
        otherwise = helper.make_graph(deeper_nodes, f"go_on_after_{logits}", [], result(deeper),
                                      initializer=deeper_inits)
        return nodes + [
            helper.make_node("Constant", [], [f"index.{g}"], value=helper.make_tensor(f"index.{g}", TensorProto.INT64,
                                                                                       [], [k])),
            helper.make_node("Gather", ["thresholds", f"index.{g}"], [f"threshold.{g}"], axis=0),
            helper.make_node("ReduceMin", [group.outputs[1]], [f"least.{g}"], keepdims=0),
            helper.make_node("Greater", [f"least.{g}", f"threshold.{g}"], [f"leave.{g}"]),
            helper.make_node("If", [f"leave.{g}"], list(names), then_branch=then, else_branch=otherwise)], inits

    nodes, inits = level(0, ("logits", "exit"))
    below = float32_thresholds(thresholds[:early]).tolist()
    inits.append(helper.make_tensor("thresholds", TensorProto.FLOAT, [early], below))
    batch = image.type.tensor_type.shape.dim[0].dim_param or "batch"
    graph = helper.make_graph(
        nodes, "anytime", [image, helper.make_tensor_value_info("thresholds", TensorProto.FLOAT, [early])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]),
         helper.make_tensor_value_info("exit", TensorProto.INT64, [])], initializer=inits)
    model = helper.make_model(graph, opset_imports=list(groups[0].model.opset_import),
                              ir_version=groups[0].model.ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model
