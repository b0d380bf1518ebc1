"""Pass 9, summarise: per node op, shape, params, FLOPs; per head its depth and losses; train vs deploy totals."""
from __future__ import annotations

from netspec.errors import plural
from netspec.ops import ParamOp, multipliers
from netspec.spec import MAIN_HEAD, CrossEntropyLoss, SynergyLoss
from netspec.compiler.ir import Network


def schedule_text(schedule) -> str:
    extra = schedule.model_dump(exclude={"type"})
    return schedule.type + (f"({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")


def node_multipliers(op, train) -> dict | None:
    """{"lr_mult": [weight, bias], "decay_mult": [weight, bias]} of a node with parameters, else None."""
    if not isinstance(op, ParamOp):
        return None
    weight, bias = (multipliers(op, train.lr_mult, train.decay_mult, t) for t in ("weight", "bias"))
    return {"lr_mult": [weight[0], bias[0]], "decay_mult": [weight[1], bias[1]]}


def mult_text(mult: dict) -> str:
    """`lr ×1/×2 decay ×1/×0` (weight/bias)."""
    show = lambda v: f"×{v:g}"  # noqa: E731
    return " ".join(f"{key.split('_')[0]} {show(mult[key][0])}/{show(mult[key][1])}" for key in ("lr_mult", "decay_mult"))


def summarise(net: Network) -> dict:
    """Everything `netspec compile` reports, as plain data (also written as summary.json)."""
    spec = net.spec
    nodes = []
    for node in net:
        nodes.append({"name": node.name, "op": node.op.op, "branch": node.branch, "inputs": list(node.inputs),
                      "shape": list(node.shape), "params": node.params, "flops": node.flops,
                      "line": node.pos.line if node.pos else None})
        mult = node_multipliers(node.op, spec.train) if node.params else None
        if mult:
            nodes[-1].update(mult)
        if node.op.op == "grad_scale":
            nodes[-1]["grad_scale"] = node.op.scale
    depth = net.depth
    deepest = max(depth.values())
    heads = []
    for head, name in net.heads.items():
        keep = net.ancestry(head)
        heads.append({"head": head, "node": name, "depth": depth[head], "depth_ratio": depth[head] / deepest,
                      "params": sum(net.nodes[n].params for n in keep), "flops": sum(net.nodes[n].flops for n in keep)})
    losses = []
    for name, loss in spec.losses.items():
        entry = {"name": name, "type": loss.type, "schedule": schedule_text(loss.schedule)}
        if isinstance(loss, CrossEntropyLoss):
            entry.update(head=loss.head, weight=loss.weight)
        elif isinstance(loss, SynergyLoss):
            entry.update(direction=loss.direction, beta=loss.beta, temperature=loss.temperature,
                         smoothing=loss.smoothing,
                         pairs=[f"{m}->{n}" for m, n in net.synergy_pairs(loss)])
        losses.append(entry)
    deploy = net.ancestry(MAIN_HEAD)
    total = lambda key, names: sum(getattr(net.nodes[n], key) for n in names)  # noqa: E731
    ops = [n["name"] for n in nodes]
    both = [multipliers(None, spec.train.lr_mult, spec.train.decay_mult, t) for t in ("weight", "bias")]
    default = {"lr_mult": [both[0][0], both[1][0]], "decay_mult": [both[0][1], both[1][1]]}
    return {
        "name": spec.name, "input": list(spec.input.shape), "classes": spec.classes, "multipliers": default,
        "nodes": nodes, "heads": heads, "losses": losses,
        "train": {"nodes": len(ops), "params": total("params", ops), "flops": total("flops", ops)},
        "deploy": {"nodes": len(deploy), "params": total("params", deploy), "flops": total("flops", deploy)},
    }


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def format_summary(s: dict, max_nodes: int = 400) -> str:
    """The human-readable summary: a node table, the heads and losses, and the totals."""
    lines = [f"{s['name']}: input {tuple(s['input'])}, {s['classes']} classes"]
    default = s.get("multipliers")
    plain = {"lr_mult": [1.0, 1.0], "decay_mult": [1.0, 1.0]}
    if default and default != plain:
        lines.append(f"multipliers of every parameter tensor (weight/bias; train.lr_mult/decay_mult): {mult_text(default)}")
    lines.append("")
    width = max(len(n["name"]) for n in s["nodes"])
    lines.append(f"{'node':<{width}}  {'op':<10} {'output':<16} {'params':>9} {'FLOPs':>9}")
    shown = s["nodes"] if len(s["nodes"]) <= max_nodes else s["nodes"][: max_nodes // 2] + [None] + s["nodes"][-max_nodes // 2:]
    for n in shown:
        if n is None:
            lines.append(f"{'...':<{width}}  ({len(s['nodes']) - max_nodes} more nodes; the full table is in summary.json)")
            continue
        note = ""
        if "lr_mult" in n and {k: n[k] for k in plain} != (default or plain):
            note = "  " + mult_text(n)
        if "grad_scale" in n:
            note = f"  ∇×{n['grad_scale']:.3g} (gradient into the backbone)"
        lines.append(f"{n['name']:<{width}}  {n['op']:<10} {str(tuple(n['shape'])):<16} {human(n['params']):>9} "
                     f"{human(n['flops']):>9}{note}")
    lines += ["", "heads:"]
    for h in s["heads"]:
        lines.append(f"  {h['head']:<12} at {h['node']:<24} depth {h['depth']:>4} (L/L_K {h['depth_ratio']:.2f})  "
                     f"exit model: {human(h['params'])} params, {human(h['flops'])} FLOPs")
    lines.append("losses:")
    for l in s["losses"]:
        if l["type"] == "cross_entropy":
            lines.append(f"  {l['name']:<12} cross_entropy on {l['head']:<10} weight {l['weight']:<6} schedule {l['schedule']}")
        else:
            lines.append(f"  {l['name']:<12} synergy {l['direction']}, β {l['beta']}, T {l['temperature']}, "
                         f"ε {l.get('smoothing', 0):g}, schedule "
                         f"{l['schedule']}: {plural(len(l['pairs']), 'pair')} ({', '.join(l['pairs'])})")
    for key, label in (("train", "training graph"), ("deploy", "deployed graph (branches pruned)")):
        t = s[key]
        lines.append(f"{label:<34} {plural(t['nodes'], 'node ', 'nodes'):>11}  {human(t['params']):>9} params  "
                     f"{human(t['flops']):>9} FLOPs")
    return "\n".join(lines)
