"""Pass 9, draw: DOT as CNDS Fig. 1 draws it, folding of repeated blocks, the deployed view, and rendering
through graphviz; every shipped spec's default drawing checked on graphviz's own layout (size, text, overlaps)."""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from itertools import combinations

import pytest

from netspec.cli import main
from netspec.compiler import analyse
from netspec.compiler.draw import DEFAULT_NODES, Fold, default_view, deployed, fold, render, repeated_blocks, to_dot
from netspec.compiler.lower import lower_graph
from netspec.compiler.prune import unbranched_overrides
from netspec.errors import UserError
from netspec.limits import Limits
from conftest import SPECS, WITH_BRANCH, error_of

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")

SYNERGY = WITH_BRANCH + "  syn: {type: synergy, beta: 0.7, temperature: 2}\n"


@pytest.fixture
def dot(write_spec):
    return to_dot(analyse(write_spec(SYNERGY))[1])


def block(dot: str, start: str) -> str:
    """The text of the `subgraph "cluster_..."` block."""
    head = dot.index(start)
    return dot[head: dot.index("\n  }", head)]


def test_branch_is_a_dashed_red_cluster_holding_only_its_nodes(dot):
    cluster = block(dot, 'subgraph "cluster_aux"')
    assert "style=dashed" in cluster and "color=red" in cluster and "label=" not in cluster.splitlines()[0]
    assert '"aux.pool"' in cluster and '"aux.fc"' in cluster and '"conv1"' not in cluster
    assert dot.count("subgraph") == 1


def test_loss_nodes_are_octagons_with_weight_and_schedule_on_edges(dot):
    for loss in ("main", "aux", "syn"):
        assert re.search(rf'"loss:{loss}" \[label="{loss}\n\w+[^"]*", shape=octagon', dot)
    assert '"aux.fc" -> "loss:aux" [label="  α=0.3 · cnds"' in dot
    assert '"fc" -> "loss:main" [label="  α=1.0 · constant"' in dot


def test_synergy_pairs_are_one_arrow_each_with_beta_on_the_loss_node(dot):
    pairs = re.findall(r'"(\S+)" -> "(\S+)" \[style=dotted, color=blue, constraint=false, dir=both\]', dot)
    assert pairs == [("aux.fc", "fc")]  # bidirectional: both (fc, aux.fc) and (aux.fc, fc), drawn once
    assert re.search(r'"loss:syn" \[label="syn\nsynergy · bidirectional\nβ=0.7, T=2.0"', dot)
    assert dot.count("β=") == 1


def test_boxes_carry_output_shapes_and_data_edges_no_labels(dot):
    assert re.search(r'"conv1" \[label="conv1 · conv 3×3\n4×8×8 · 40"', dot)
    assert re.search(r'"data" \[label="data\n1×8×8"', dot)
    assert '"data" -> "conv1";' in dot and '"conv1" -> "relu1";' in dot
    assert '"relu1" -> "aux.pool" [color=red];' in dot


def test_heads_are_doubled_boxes_that_name_their_exit(dot):
    assert re.search(r'"fc" \[label="fc · fc\n3 · \d+\nexit main", [^]]*peripheries=2', dot)
    assert re.search(r'"aux.fc" \[label="aux.fc · fc\n3 · \d+\nexit aux", [^]]*peripheries=2', dot)
    assert "xlabel" not in dot  # an xlabel is placed after the layout and can land on another box


def test_render_dot_and_bad_suffix(dot, tmp_path):
    out = render(dot, tmp_path / "sub" / "g.dot")
    assert out.read_text() == dot
    err = error_of(render, dot, tmp_path / "g.jpeg")
    assert "g.jpeg" in err.what and ".svg" in err.fix


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
def test_render_svg_with_graphviz(dot, tmp_path):
    svg = render(dot, tmp_path / "g.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "aux.pool" in svg and "cluster_aux" in svg


def test_missing_dot_binary_says_how_to_install(dot, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as info:
        render(dot, tmp_path / "g.svg")
    assert "`dot` program is not installed" in info.value.what and "apt-get install graphviz" in info.value.fix


def test_conv_nodes_show_kernel_and_stride(write_spec):
    text = WITH_BRANCH.replace("{name: conv1, op: conv, out: 4, kernel: 3, pad: 1}",
                               "{name: conv1, op: conv, out: 4, kernel: 3, pad: 1, stride: 2}")
    dot = to_dot(analyse(write_spec(text))[1])
    assert '"conv1" [label="conv1 · conv 3×3/2' in dot and '"aux.pool" [label="aux.pool · maxpool 2×2' in dot


@functools.cache
def network(spec: str):
    return analyse(SPECS / spec, limits=TRUSTED)[1]


SHIPPED = sorted(path.name for path in SPECS.glob("*.yaml"))
TRUSTED = Limits(code=True)  # the shipped specs are ours: dks_userresnet_fmnist runs specs/models/resnet.py
FOLDED = ["resnet20_fmnist.yaml", "mwbp_fmnist.yaml", "dks_resnet20_fmnist.yaml", "mwbp_resnet56.yaml"]


@pytest.mark.parametrize("spec", FOLDED)
def test_a_fold_keeps_every_edge_between_groups_and_where_each_branch_leaves(spec):
    net = network(spec)
    folds = repeated_blocks(net)
    folded = fold(net, folds)
    group = {}
    for f in folds:
        members = [n for n in net.nodes if any(n.startswith(p + ".") for p in f.prefixes)]
        assert members, f
        group.update(dict.fromkeys(members, f.name))
        assert folded.nodes[f.name].params == sum(net.nodes[n].params for n in members)
        assert folded.nodes[f.name].shape == net.nodes[members[-1]].shape
    assert len(folded.nodes) == len(net.nodes) - len(group) + len(folds)
    name = lambda n: group.get(n, n)  # noqa: E731
    expected = {(name(u), name(v)) for u, v in net.data.edges if name(u) != name(v)}
    assert set(folded.data.edges) == expected
    for head in net.heads:  # a branch leaves from the output (last node) of the run it reads
        at = net.attach_point(head)
        assert folded.attach_point(head) == name(at)
        if at in group:
            assert at == [n for n in net.nodes if group.get(n) == group[at]][-1]


def test_runs_split_where_a_branch_reads_a_copy():
    names = [f.name for f in repeated_blocks(network("mwbp_resnet56.yaml"))]
    # exits read stage1.7, stage2.3, stage2.8 and stage3.4 (of 9 copies each)
    assert names == ["stage1[0-7]", "stage1[8]", "stage2[0-3]", "stage2[4-8]", "stage3[0-4]", "stage3[5-8]"]
    kinds = {f.name: f.kind for f in repeated_blocks(network("mwbp_resnet56.yaml"))}
    assert kinds["stage1[0-7]"] == "8× preact" and kinds["stage1[8]"] == "1× preact"
    assert [f.name for f in repeated_blocks(network("dks_resnet20_fmnist.yaml"))][:3] == ["stage1", "stage2", "stage3"]


def test_fold_by_any_name_prefix(write_spec):
    """The same mechanism folds any nodes under a name prefix: here a whole branch."""
    net = analyse(write_spec(WITH_BRANCH))[1]
    folded = fold(net, [Fold("aux", "branch", ("aux",))])
    assert list(folded.nodes) == ["conv1", "relu1", "fc", "aux"] and folded.heads["aux"] == "aux"
    assert '"aux" [label="aux · branch\n3 · ' in to_dot(folded)


def test_default_view_folds_deep_nets_only():
    small, deep = network("cnds8_fmnist.yaml"), network("resnet20_fmnist.yaml")
    assert len(small.nodes) <= DEFAULT_NODES < len(deep.nodes)
    assert default_view(small) == (small, None)
    view, note = default_view(deep)
    assert len(view.nodes) < 10 and "--expand" in note
    assert default_view(deep, "expand") == (deep, None)
    assert default_view(deep, "collapse")[1] is None and len(default_view(deep, "collapse")[0].nodes) == len(view.nodes)
    same, note = default_view(small, "collapse")
    assert same is small and note == "nothing to collapse: cnds8_fmnist has no repeated blocks"


@pytest.mark.parametrize("spec", [s for s in SHIPPED if "1202" not in s])
def test_deploy_view_is_the_exported_graph(spec):
    """--deploy draws what export writes: the main exit's graph (lower_graph(single=True), as pruned and
    exported) without dropouts, which export drops in eval mode; no loss node."""
    net = analyse(SPECS / spec, unbranched_overrides(network(spec).spec), TRUSTED)[1]
    view = deployed(net)
    graph = lower_graph(net, ["main"], single=True)
    exported = {n.name for n in graph.nodes if n.op in ("call_module", "call_function", "call_method")}
    exported = {name for name in net.nodes if name.replace(".", "_") in exported or name in exported}
    assert set(view.nodes) == {n for n in exported if net.nodes[n].op.op != "dropout"}
    dot = to_dot(view, losses=False)
    assert "loss:" not in dot and "dropout" not in dot and "cluster" not in dot
    assert f"exit main · {net.spec.classes} logits" in dot


DPI = 96  # graphviz's default for PNG
MAX_SIDE_PX, MIN_TEXT_PX = 4000, 10


def layout(dot: str) -> dict:
    """graphviz's own layout of `dot` (`dot -Tjson`: positions in points, and every text it draws)."""
    return json.loads(subprocess.run(["dot", "-Tjson"], input=dot, text=True, capture_output=True, check=True).stdout)


def texts(graph: dict) -> list[tuple]:
    """(owner, text, font size pt, x0, y0, x1, y1) of every text graphviz draws (labels, xlabels, head/tail
    labels of the graph, clusters, nodes and edges), from the drawing operations of its layout."""
    owners = [("graph", graph)] + [(f"o{o['_gvid']}", o) for o in graph.get("objects", [])] + \
             [(f"e{e['_gvid']}", e) for e in graph.get("edges", [])]
    boxes = []
    for owner, item in owners:
        for key in ("_ldraw_", "_hldraw_", "_tldraw_"):
            size = 14.0
            for op in item.get(key, []):
                if op["op"] == "F":
                    size = op["size"]
                elif op["op"] == "T":
                    (x, y), width = op["pt"], op["width"]
                    x0 = {"l": x, "c": x - width / 2, "r": x - width}[op["align"]]
                    boxes.append((owner, op["text"], size, x0, y - 0.25 * size, x0 + width, y + 0.85 * size))
    return boxes


def overlaps(graph: dict, slack: float = 1.0) -> list[tuple[str, str]]:
    """Texts of different owners whose boxes overlap, texts over another node's box, and texts an edge's line
    runs through (its Bézier curves sampled)."""
    def cross(a, b):
        return a[0] + slack < b[2] and b[0] + slack < a[2] and a[1] + slack < b[3] and b[1] + slack < a[3]
    boxes = texts(graph)
    found = [(a[1], b[1]) for a, b in combinations(boxes, 2) if a[0] != b[0] and cross(a[3:], b[3:])]
    for o in graph.get("objects", []):
        if "pos" in o:
            x, y = map(float, o["pos"].split(","))
            w, h = float(o["width"]) * 36, float(o["height"]) * 36
            found += [(t[1], f"box of {o['name']}") for t in boxes
                      if t[0] != f"o{o['_gvid']}" and cross(t[3:], (x - w, y - h, x + w, y + h))]
    name = {o["_gvid"]: o["name"] for o in graph.get("objects", [])}
    for e in graph.get("edges", []):
        line = [point for op in e.get("_draw_", []) if op["op"] == "b" for point in _bezier(op["points"])]
        found += [(t[1], f"edge {name[e['tail']]}->{name[e['head']]}") for t in boxes if t[0] != f"e{e['_gvid']}" and
                  any(cross(t[3:], (x - slack, y - slack, x + slack, y + slack)) for x, y in line)]
    return found


def _bezier(points: list, steps: int = 12) -> list[tuple[float, float]]:
    """Points along graphviz's piecewise cubic Bézier curve."""
    out = []
    for i in range(0, len(points) - 3, 3):
        p0, p1, p2, p3 = points[i:i + 4]
        for k in range(steps + 1):
            t = k / steps
            out.append(tuple((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c + t ** 3 * d
                             for a, b, c, d in zip(p0, p1, p2, p3)))
    return out


@needs_dot
def test_the_overlap_check_finds_overlapping_labels():
    pairs = " ".join(f'{m} -> {n} [label="β=1.0", constraint=false];' for m in "abc" for n in "abc" if m != n)
    assert ("β=1.0", "β=1.0") in overlaps(layout(f"digraph {{ x -> a; x -> b; x -> c; {pairs} }}"))  # as drawn before
    assert overlaps(layout('digraph { a -> b [headlabel="a long head label", labeldistance=0.5]; }')) == \
        [("a long head label", "box of b")]
    across = 'digraph { x -> b; subgraph cluster_a { label="branch aux"; labeljust=r; b -> c; } x -> d; }'
    assert [o for o in overlaps(layout(across)) if o[1].startswith("edge")] == [("branch aux", "edge x->b")]
    assert overlaps(layout('digraph { a -> b [label="x"]; a -> c [label="y"]; }')) == []


@needs_dot
@pytest.mark.parametrize("spec", SHIPPED)
def test_every_shipped_default_drawing_fits_a_screen_and_is_readable(spec):
    view, _ = default_view(network(spec))
    graph = layout(to_dot(view))
    x0, y0, x1, y1 = map(float, graph["bb"].split(","))
    assert max(x1 - x0, y1 - y0) * DPI / 72 <= MAX_SIDE_PX
    assert min(t[2] for t in texts(graph)) * DPI / 72 >= MIN_TEXT_PX
    assert overlaps(graph) == []


@needs_dot
@pytest.mark.parametrize("spec", ["dks_resnet20_fmnist.yaml", "mwbp_resnet20_fmnist.yaml", "cnds8_fmnist.yaml"])
def test_left_to_right_and_deployed_drawings_have_no_overlaps(spec):
    view, _ = default_view(network(spec))
    graph = layout(to_dot(view, "LR"))
    x0, y0, x1, y1 = map(float, graph["bb"].split(","))
    assert x1 - x0 > y1 - y0 and overlaps(graph) == []
    plain = analyse(SPECS / spec, unbranched_overrides(network(spec).spec), TRUSTED)[1]
    graph = layout(to_dot(default_view(deployed(plain))[0], losses=False))
    assert overlaps(graph) == [] and graph["objects"]


def test_draw_command_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "g.dot"
    assert main(["draw", str(SPECS / "resnet20_fmnist.yaml"), "-o", str(out)]) == 0
    assert "77 nodes: repeated blocks drawn as one node each (--expand draws every node)" in capsys.readouterr().err
    assert '"stage2" [label="stage2 · 3× basic' in out.read_text() and "rankdir=TB" in out.read_text()
    assert main(["draw", str(SPECS / "resnet20_fmnist.yaml"), "--expand", "--rankdir", "LR", "-o", str(out)]) == 0
    assert '"stage2.2.conv1"' in out.read_text() and "rankdir=LR" in out.read_text()
    assert capsys.readouterr().err == ""
    assert main(["draw", str(SPECS / "cnn8_fmnist.yaml"), "--collapse", "-o", str(out)]) == 0
    assert "nothing to collapse: cnn8_fmnist has no repeated blocks" in capsys.readouterr().err
    assert main(["draw", str(SPECS / "cnds8_fmnist.yaml"), "--deploy", "-o", str(out)]) == 0
    deployed_dot = out.read_text()
    assert "aux1" not in deployed_dot and "loss:" not in deployed_dot and "drop6" not in deployed_dot
    assert '"relu6" -> "fc7"' in deployed_dot and "exit main · 10 logits" in deployed_dot
    with pytest.raises(SystemExit):
        main(["draw", str(SPECS / "cnn8_fmnist.yaml"), "--collapse", "--expand"])
