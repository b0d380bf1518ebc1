"""Pass 8, prune: cut the training GraphModule down to one exit for deployment.

`prune(gm, head)` keeps what that head needs and nothing else: its output is the head's logits (a
tensor, not a dict), and every node, submodule and parameter of the other heads is gone. The result
is node for node the module `lower(g, [head], single=True)` builds; for the main head that is the
spec compiled without its branches (`unbranched_overrides`). Training-only identities (grad_scale
edges) are dropped: a deployed exit is the same with or without them.
"""
from __future__ import annotations

import copy
from operator import attrgetter

from torch import fx

from netspec.errors import UserError, did_you_mean
from netspec.ops import scale_grad
from netspec.spec import MAIN_HEAD, CrossEntropyLoss, Spec


def head_outputs(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """The `{head: node}` a training module returns."""
    outputs = _output_node(gm.graph).args[0]
    if not isinstance(outputs, dict):
        raise ValueError("expected a training module returning {head: logits}, got one returning a single tensor")
    return outputs


def prune(gm: fx.GraphModule, head: str = MAIN_HEAD) -> fx.GraphModule:
    """A new module computing `head` alone from the training module `gm`.

    `gm` keeps its graph and submodules; the layers the exit keeps are shared with it, not copied
    (so `.eval()` on the result also switches those layers of `gm`)."""
    heads = head_outputs(gm)
    if head not in heads:
        raise UserError(f"there is no exit named '{head}'", f"{did_you_mean(head, heads)} (exits: {', '.join(heads)})")
    graph = copy.deepcopy(gm.graph)
    # A dict root, as `lower` builds it: shallow submodules first, then nested ones, in graph order.
    attributes = {n.target: attrgetter(n.target)(gm) for n in graph.nodes if n.op in ("call_module", "get_attr")}
    pruned = fx.GraphModule(attributes, graph, class_name=type(gm).__name__)
    output = _output_node(pruned.graph)
    output.args = (output.args[0][head],)
    for node in list(pruned.graph.nodes):
        if node.op == "call_function" and node.target is scale_grad:
            node.replace_all_uses_with(node.args[0])
            pruned.graph.erase_node(node)
    pruned.graph.eliminate_dead_code()
    pruned.delete_all_unused_submodules()
    pruned.recompile()
    pruned.meta.update(gm.meta, heads=[head])
    return pruned


def unbranched_overrides(spec: Spec) -> list[str]:
    """Overrides that compile `spec` as the plain net: no branches, no loss other than cross-entropy on main."""
    dropped = [name for name, loss in spec.losses.items()
               if not (isinstance(loss, CrossEntropyLoss) and loss.head == MAIN_HEAD)]
    return ["branches=null"] + [f"losses.{name}=null" for name in dropped]


def _output_node(graph: fx.Graph) -> fx.Node:
    return next(node for node in reversed(graph.nodes) if node.op == "output")
