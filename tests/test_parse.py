"""Pass 1, parse: safe YAML with positions, `extends:`, key=value overrides, `${expr}` in a sandbox."""
from __future__ import annotations

import time

import pytest

from netspec.compiler.parse import apply_overrides, load_yaml, parse, read_spec_file
from netspec.compiler.template import evaluate
from netspec.compiler.tree import LineDict, LineList
from netspec.errors import SpecError
from conftest import MINI, error_of


def test_positions_of_keys_and_items():
    text = "a: 1\nb:\n  - x\n  - {c: 2}\nd: {e: 3}\n"
    data = load_yaml(text, "f.yaml")
    assert isinstance(data, LineDict) and isinstance(data["b"], LineList)
    assert [data.where(k).line for k in "abd"] == [1, 2, 5]
    assert [data["b"].where(i).line for i in range(2)] == [3, 4]
    assert data["b"][1].pos.line == 4 and data["d"].where("e").line == 5
    assert str(data.where("d")) == "f.yaml:5"


def test_merge_keys_may_be_overridden_but_own_keys_not_repeated():
    data = load_yaml("base: &b {x: 1, y: 2}\nother: {<<: *b, y: 3}\n", "f.yaml")
    assert data["other"] == {"x": 1, "y": 3}
    err = error_of(load_yaml, "a: 1\nb: 2\na: 3\n", "f.yaml")
    assert err.pos.line == 3 and "'a' is written twice" in err.what and "line 1" in err.what


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['true']", "!!python/name:os.system",
                                 "!!python/object/new:subprocess.Popen [[id]]"])
def test_python_tags_are_refused(tag):
    err = error_of(load_yaml, f"ok: 1\nbad: {tag}\n", "f.yaml")
    assert err.pos.line == 2 and f"tag '{tag.split()[0]}' is not allowed" in err.what and "plain data" in err.fix


def test_alias_bomb_is_refused_quickly():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    started = time.perf_counter()
    err = error_of(load_yaml, "\n".join(lines), "bomb.yaml")
    assert time.perf_counter() - started < 2
    assert "alias" in err.fix and "200000" in err.what


def test_yaml_syntax_error_has_its_line():
    err = error_of(load_yaml, "a: 1\nb: [1, 2\nc: 3\n", "f.yaml")
    assert err.pos.file == "f.yaml" and err.pos.line in (2, 3) and "YAML" in err.fix


def test_extends_merges_deeply_and_keeps_each_files_lines(tmp_path):
    (tmp_path / "base.yaml").write_text(MINI + "train: {epochs: 7, batch_size: 64}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\ntrain: {epochs: 2}\nclasses: null\n")
    spec = read_spec_file(child)
    assert spec["name"] == "child" and spec["train"] == {"epochs": 2, "batch_size": 64}
    assert "classes" not in spec and "extends" not in spec
    assert (spec.where("name").file, spec.where("name").line) == (str(child), 2)
    assert spec.where("nodes").file == str(tmp_path / "base.yaml")


def test_extends_missing_file_and_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nextends: nothere.yaml\n")
    err = error_of(read_spec_file, tmp_path / "a.yaml")
    assert err.pos.line == 2 and "nothere.yaml" in err.what and "relative" in err.fix
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    assert "deep" in error_of(read_spec_file, tmp_path / "b.yaml").what


def test_missing_spec_file(tmp_path):
    err = error_of(read_spec_file, tmp_path / "nope.yaml")
    assert "does not exist" in err.what and ".yaml" in err.fix


def test_overrides_set_values_typed_and_by_item_name():
    spec = load_yaml(MINI, "f.yaml")
    apply_overrides(spec, ["classes=5", "nodes.conv1.kernel=[3, 5]", "nodes.2.out=7", "train.epochs=2",
                           "input.mean=null"])
    assert spec["classes"] == 5 and spec["nodes"][0]["kernel"] == [3, 5] and spec["nodes"][2]["out"] == 7
    assert spec["train"] == {"epochs": 2}
    assert str(spec.where("classes")) == "override 'classes=5'"
    assert str(spec["nodes"][0].where("kernel")) == "override 'nodes.conv1.kernel=[3, 5]'"


@pytest.mark.parametrize("override, what, fix", [
    ("classes", "key=value", "train.epochs=3"),
    ("classes.x=3", "'x' cannot be set", "dotted key"),
    ("nodes.conv9.out=3", "'nodes' has no item named 'conv9'", "did you mean 'conv1'?"),
])
def test_bad_overrides(override, what, fix):
    err = error_of(apply_overrides, load_yaml(MINI, "f.yaml"), [override])
    assert what in err.what and fix in err.fix and str(err.pos) == f"override '{override}'"


def test_expressions_keep_type_and_use_the_context():
    assert evaluate("${2 * w}", {"w": 8}, None) == 16
    assert evaluate("conv_${i + 1}", {"i": 2}, None) == "conv_3"
    assert evaluate("${[w, w]}", {"w": 2}, None) == [2, 2]


@pytest.mark.parametrize("expr, what, fix", [
    ("${widht}", "'widht', which is not defined", "did you mean 'width'?"),
    ("${widht * 2}", "'widht', which is not defined", "did you mean 'width'?"),
    ("${n}", "'n', which is not defined", "defined here: w, width"),
    ("${w *}", "cannot evaluate", "arithmetic"),
    ("${w // 0}", "division", "check the expression"),
    ("${w.__class__.__mro__}", "unsafe", "arithmetic only"),
    ("${'x' * 10**9}", "more than", "check the expression"),
    ("${2 ** 100000}", "too large", "check the expression"),
])
def test_bad_expressions_are_errors_not_code(expr, what, fix):
    started = time.perf_counter()
    err = error_of(evaluate, expr, {"w": 4, "width": 16}, None)
    assert what in err.what and fix in err.fix
    assert time.perf_counter() - started < 1


def test_parse_resolves_vars_and_leaves_block_bodies(write_spec):
    path = write_spec(MINI.replace("out: 4,", "out: '${2 * w}',") + "vars: {w: 3, v: '${w + 1}'}\n"
                      "blocks: {b: {params: {out: null}, nodes: [{name: c, op: conv, out: '${out}', kernel: 1}]}}\n")
    raw, context = parse(path, ["vars.w=5"])
    assert context == {"classes": 3, "w": 5, "v": 6}
    assert raw["nodes"][0]["out"] == 10
    assert raw["blocks"]["b"]["nodes"][0]["out"] == "${out}"
    assert raw["nodes"][0].pos.line == next(i for i, line in enumerate(MINI.splitlines(), 1) if "conv1" in line)


def test_vars_must_be_a_mapping(write_spec):
    err = error_of(parse, write_spec(MINI + "vars: [1, 2]\n"))
    assert "`vars:` must be a mapping" in err.what and err.pos.line == 8


def test_spec_must_be_a_mapping(write_spec):
    err = error_of(parse, write_spec("- a\n- b\n"))
    assert "must be a mapping" in err.what and isinstance(err, SpecError)
