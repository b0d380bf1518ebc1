"""Where a branch goes: CNDS's rule of thumb for where a supervision branch goes (Wang et al. 2015, §2, Fig. 2).

The probe (`probe.py`) strips the branches, trains the plain net for a few SGD iterations with supervision only
at the top (weights ~ N(0, 0.01²), biases 0 by default), and records the mean absolute gradient of
every backbone weight layer (conv, fc) at every iteration. The suggestion is a pure function of the
layers' mean gradients over those iterations (`attach_points`):

* Candidates are the conv layers (weight layers whose output is a feature map): CNDS puts branches
  after conv layers, and a branch head (pool, 1x1 conv) needs a feature map.
* Walk down from the top weight layer. The first attach point is the highest candidate whose mean
  gradient is below `threshold` (the paper: 1e-7).
* Each further point is the highest candidate below the previous one whose gradient is another `decay`
  times smaller than the previous point's. `decay` defaults to top gradient / threshold: a branch
  makes its attach point a new "top", so the next point is where the gradient vanishes again,
  counted from there (CNDS-13: "gradients tend to decay every three to four layers").
* If the top layer's own gradient is below the threshold, nothing is suggested (the net is dead).

A branch attaches after the layer's own normalisation and activation (conv3_2 → `from: relu3_2`).
"""
from __future__ import annotations

import networkx as nx

from netspec.errors import UserError
from netspec.spec import MAIN_HEAD
from netspec.compiler.ir import Network

FOLLOW_OPS = {"batchnorm", "relu", "prelu", "leaky_relu"}  # a branch goes after these, not between them and their layer

# --- the rule (pure) -------------------------------------------------------------------------

def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def default_decay(table: dict[str, float], threshold: float) -> float:
    """The drop from the top layer's gradient to the threshold."""
    return list(table.values())[-1] / threshold


def attach_points(table: dict[str, float], threshold: float, decay: float | None = None,
                  max_points: int | None = None) -> list[str]:
    """The layers to attach branches after, top first. `table`: mean gradient per weight layer, input to top."""
    *below, top = table.items()
    if top[1] < threshold:
        return []
    decay = decay or default_decay(table, threshold)
    points, level = [], threshold
    for name, gradient in reversed(below):
        if gradient < level and len(points) != max_points:
            points.append(name)
            level = gradient / decay
    return points


def threshold_ladder(table: dict[str, float]) -> list[tuple[str, float, float]]:
    """(layer, low, high): with low < --threshold <= high the first attach point is after that layer."""
    *below, (_, high) = table.items()
    ladder = []
    for name, gradient in reversed(below):
        if gradient < high:
            ladder.append((name, gradient, high))
            high = gradient
    return ladder


# --- the layers of a network -------------------------------------------------------------------

def weight_layers(net: Network) -> list[str]:
    """The backbone's weight layers (conv, fc), input to top."""
    backbone = net.ancestry(MAIN_HEAD)
    layers = [node.name for node in net if node.name in backbone and node.op.weighted]
    if not layers:
        raise UserError("the backbone has no weight layer (conv or fc) to probe", "probe a spec with conv/fc layers")
    return layers


def candidates(net: Network) -> list[str]:
    """The layers a branch may follow (weight layers with a feature-map output), then the top weight layer."""
    *below, top = weight_layers(net)
    return [n for n in below if len(net.nodes[n].shape) == 3] + [top]


def supervised_layers(net: Network) -> list[str]:
    """Backbone weight layers that some branch sits above (the layers a branch can lift)."""
    reached = set()
    for attach in branch_attach(net):
        reached |= nx.ancestors(net.data, attach) | {attach}
    return [n for n in weight_layers(net) if n in reached]


def branch_attach(net: Network) -> dict[str, list[str]]:
    """Backbone node → the branches that start from it."""
    out: dict[str, list[str]] = {}
    for node in net:
        if node.branch:
            for source in node.inputs:
                if source == net.input.name or net.nodes[source].branch is None:
                    out.setdefault(source, []).append(node.branch)
    return out


def attach_node(net: Network, layer: str) -> str:
    """The node a branch after `layer` starts from: the layer, then its normalisation/activation chain."""
    name = layer
    while True:
        after = [s for s in net.data.successors(name) if net.nodes[s].branch is None]
        if len(after) != 1 or net.nodes[after[0]].op.op not in FOLLOW_OPS:
            return name
        name = after[0]


def format_points(net: Network, table: dict[str, float], points: list[str], threshold: float) -> str:
    if points:
        return "\n".join(f"suggested attach point: after {p} (mean |grad| {table[p]:.2e}) → branch `from: {attach_node(net, p)}`"
                         for p in points)
    top, top_gradient = list(table.items())[-1]
    if top_gradient < threshold:
        return (f"no suggestion: even the top layer {top} has a mean gradient ({top_gradient:.2e}) below the threshold "
                f"— lower --threshold, or check --init and --lr")
    ladder = threshold_ladder(table)
    if not ladder:
        return (f"no suggestion: no conv layer's mean gradient is below the threshold, nor below the top layer's "
                f"({top}, {top_gradient:.2e}): the gradients do not vanish on the way down")
    lines = [f"no suggestion: no conv layer's mean gradient is below {threshold:g}. The first attach point would be"]
    lines += [f"  after {name:<10} for {low:.2e} < --threshold <= {high:.2e}" for name, low, high in ladder]
    return "\n".join(lines)
