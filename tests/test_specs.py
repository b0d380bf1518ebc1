"""The shipped specs: each compiles, and parameter counts match the literature."""
from pathlib import Path

import pytest

from netspec.compiler import analyse
from netspec.compiler.summary import summarise
from netspec.limits import Limits

SPECS = sorted(Path("specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_compiles_through_shape_inference(path):
    spec, graph = analyse(path, limits=Limits(code=True))  # ours: dks_userresnet_fmnist runs specs/models/resnet.py
    summary = summarise(graph)
    assert summary["deploy"]["params"] <= summary["train"]["params"]
    assert set(graph.heads) == {"main", *spec.branches}


@pytest.mark.parametrize("name, expected", [("resnet32", 0.46e6), ("resnet110", 1.7e6), ("resnet1202", 19.4e6)])
def test_plain_cifar_resnets_have_the_published_parameter_counts(name, expected):
    """He et al. 2016, Table 6 (CIFAR, option A shortcuts); CIFAR-100's wider fc adds 5.9k."""
    _, graph = analyse(f"specs/{name}.yaml")
    params = summarise(graph)["deploy"]["params"]
    assert abs(params - expected) / expected < 0.025, params


def test_dks_deployed_graph_is_the_plain_resnet():
    plain = summarise(analyse("specs/resnet32.yaml")[1])
    dks = summarise(analyse("specs/dks_resnet32.yaml")[1])
    assert dks["deploy"] == plain["deploy"]
    assert dks["train"]["params"] > plain["train"]["params"]


def test_the_cpu_multi_exit_net_keeps_netspecs_depth_power_weights():
    """specs/mwbp_fmnist.yaml is kept as it was before issue 9 (docs/reproduction.md's run): depth_power weights."""
    spec, graph = analyse("specs/mwbp_fmnist.yaml")
    depth = graph.depth
    assert depth["main"] == 56  # conv1 + 27 blocks × 2 convs + fc
    assert depth["exit8"] == 1 + 8 * 2 + 1
    assert depth["exit23"] == 1 + 22 * 2 + 1  # after block 22, as before (specs/mwbp_resnet56.yaml: block 23)
    gamma = spec.losses["exit8"].schedule.factor(0, 10, depth["exit8"] / depth["main"])
    assert gamma == pytest.approx(max(0.01, (18 / 56) ** 2))


def test_resnet_family_spec_is_short():
    assert len(Path("specs/dks_resnet32.yaml").read_text().splitlines()) < 100


def test_spec_docs_are_generated_from_the_schema():
    from netspec.docs import render

    assert Path("docs/spec.md").read_text() == render() + "\n", "run: python -m netspec.docs > docs/spec.md"
