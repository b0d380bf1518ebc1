"""Issue 10, class 3: node, branch, input, loss and block-node names are used as Python identifiers (the generated
forward), file and ONNX names: each bad name is refused at its line, in every place a name is written."""
from __future__ import annotations

import keyword

import pytest

from netspec.cli import main
from netspec.compiler import analyse, compile_spec
from conftest import WITH_BRANCH, error_of, write

BAD = sorted(keyword.kwlist) + ["self", "a.b", "a-b", "1abc", "a b", "é", "", "x" * 101, "a/b", "..", "__class__", "forward",
                                "state_dict"]
GOOD = ["match", "case", "_", "torch", "getattr", "input", "operator", "inf", "x" * 100, "Conv_1"]
PLACES = {
    "node": ("{name: relu1, op: relu}", "{{name: {n}, op: relu}}\n  - {{name: relu1, op: relu}}", 6),
    "branch": ("  aux:\n", "  {n}:\n", 9),
    "input": ("input: {shape: [1, 8, 8]}", "input: {{shape: [1, 8, 8], name: {n}}}", 2),
    "loss": ("  aux: {type: cross_entropy", "  {n}: {{type: cross_entropy, head: aux}}\n  x: {{type: cross_entropy", 16),
}


def _spec(place: str, name: str) -> str:
    old, new, _ = PLACES[place]
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = WITH_BRANCH.replace(old, new.format(n=quoted), 1)
    if place == "branch":
        text = text.replace("head: aux,", f"head: {quoted},")
    return text


@pytest.mark.parametrize("name", BAD, ids=lambda n: repr(n)[:16])
@pytest.mark.parametrize("place", PLACES)
def test_bad_names_are_refused_at_their_line(tmp_path, place, name):
    if place == "node" and name in ("relu1",):
        pytest.skip()
    path = write(tmp_path, _spec(place, name))
    err = error_of(analyse, path)
    assert err.pos is not None and err.pos.line == PLACES[place][2], str(err)
    assert len(str(err)) < 500, str(err)


@pytest.mark.parametrize("name", GOOD, ids=lambda n: repr(n)[:16])
@pytest.mark.parametrize("place", ["node", "input", "branch"])
def test_good_names_lower_to_working_code(tmp_path, place, name):
    import torch
    path = write(tmp_path, _spec(place, name))
    compiled = compile_spec(path)
    out = compiled.module(torch.zeros(2, 1, 8, 8))
    assert set(out) == set(compiled.heads)


def test_a_huge_unknown_name_is_shortened_in_the_message(tmp_path, capsys):
    path = write(tmp_path, WITH_BRANCH.replace("from: relu1", "from: " + "r" * 100_000))
    assert main(["compile", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err) < 600 and "..." in err and "Traceback" not in err, err[:200]
    assert main(["compile", str(path), "nodez" * 20_000 + "=1"]) == 2
    err = capsys.readouterr().err
    assert len(err) < 600, err[:200]
