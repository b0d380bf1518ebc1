"""Pass 9, draw: DOT as CNDS Fig. 1 draws it, and rendering through graphviz."""
from __future__ import annotations

import re
import shutil

import pytest

from netspec.compiler import analyse
from netspec.compiler.draw import render, to_dot
from netspec.errors import UserError
from conftest import WITH_BRANCH, error_of

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
    assert "style=dashed" in cluster and "color=red" in cluster
    assert '"aux.pool"' in cluster and '"aux.fc"' in cluster and '"conv1"' not in cluster
    assert dot.count("subgraph") == 1


def test_loss_nodes_are_octagons_with_weight_and_schedule_on_edges(dot):
    for loss in ("main", "aux", "syn"):
        assert re.search(rf'"loss:{loss}" \[label="{loss}(\\n|\n)\w+", shape=octagon', dot)  # either newline renders
    assert '"aux.fc" -> "loss:aux" [label="α=0.3 · cnds"' in dot
    assert '"fc" -> "loss:main" [label="α=1.0 · constant"' in dot


def test_synergy_pairs_are_arrows_with_beta(dot):
    pairs = re.findall(r'"(\S+)" -> "(\S+)" \[label="β=0.7, T=2.0", style=dotted', dot)
    assert sorted(pairs) == [("aux.fc", "fc"), ("fc", "aux.fc")]


def test_data_edges_carry_shapes(dot):
    assert '"data" -> "conv1" [label="1×8×8"]' in dot
    assert '"conv1" -> "relu1" [label="4×8×8"]' in dot
    assert re.search(r'"relu1" -> "aux.pool" \[label="4×8×8", color=red\]', dot)


def test_heads_are_marked(dot):
    assert re.search(r'"fc" \[.*xlabel="head main"', dot) and re.search(r'"aux.fc" \[.*xlabel="head aux"', dot)


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
    assert '"conv1" [label="conv1\\nconv 3×3/2' in dot and '"aux.pool" [label="aux.pool\\nmaxpool 2×2' in dot


def test_collapse_draws_a_repeated_block_as_one_node_and_deploy_drops_the_branches(tmp_path, monkeypatch, capsys):
    from netspec.cli import main
    from netspec.compiler.draw import collapse
    from conftest import SPECS

    _, net = analyse(SPECS / "resnet20_fmnist.yaml")
    dot = to_dot(collapse(net))
    repeated = [n for n in collapse(net).nodes if "×" in n]
    assert repeated and all(re.fullmatch(r"stage\d\[\d+× \w+\]", n) for n in repeated), repeated
    assert not [n for n in collapse(net).nodes if re.match(r"stage\d\.\d+\.", n)]
    assert dot.count(" -> ") < to_dot(net).count(" -> ")
    monkeypatch.chdir(tmp_path)
    spec = SPECS / "cnds8_fmnist.yaml"
    assert main(["draw", str(spec), "--deploy", "-o", str(tmp_path / "d.dot")]) == 0
    deployed = (tmp_path / "d.dot").read_text()
    assert "aux1" not in deployed and '"conv5_2"' in deployed and "cluster" not in deployed
