"""Pass 7, check heads: what training and predict rely on, found at compile time at the offending line.

Every head (the main one and each branch's) ends in a vector of class scores, shape (classes,): the loss
compares it with the labels, a synergy loss compares heads with each other, and `predict` reads it as one
score per class name. Run after shape inference; returns the network unchanged.
"""
from __future__ import annotations

from netspec.errors import SpecError
from netspec.spec import MAIN_HEAD
from netspec.compiler.ir import Network


def check_heads(net: Network) -> Network:
    classes = net.spec.classes
    for head, name in net.heads.items():
        node = net.nodes[name]
        shape = tuple(node.shape)
        if head == MAIN_HEAD:
            who = f"the main head (node '{name}')"
            pos = net.spec.where("output") if net.spec.output else node.pos
        else:
            who = f"head '{head}' (its last node '{name}')"
            pos = node.pos or net.spec.branches[head].at
        if len(shape) != 1:
            raise SpecError(f"{who} outputs {shape}, not a vector of {classes} class scores",
                            f"end it with a layer that gives one score per class, e.g. {{op: fc, out: {classes}}} "
                            "(after a gap, for a feature map)", pos)
        if shape[0] != classes:
            more = " (a synergy loss also compares the heads' scores class by class)" if _in_synergy(net, head) else ""
            raise SpecError(f"{who} gives {shape[0]} scores but the spec has classes: {classes}{more}",
                            f"give its last layer out: {classes}" + (" (or set classes: "
                                                                       f"{shape[0]})" if head == MAIN_HEAD else ""), pos)
    return net


def _in_synergy(net: Network, head: str) -> bool:
    return any(loss.type == "synergy" and head in net.loss_heads(name) for name, loss in net.spec.losses.items())
