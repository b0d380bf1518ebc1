"""Pass 2, validate: the schema, and pydantic's errors turned into `file:line: what — fix`."""
from __future__ import annotations

import pytest

from netspec.compiler.parse import load_yaml, parse
from netspec.compiler.validate import spec_errors, validate, validate_node
from netspec.errors import SpecErrors
from netspec.ops import Conv
from netspec.schedules import ConstantSchedule
from netspec.solver import TrainSpec
from netspec.spec import CrossEntropyLoss, Spec, SynergyLoss
from conftest import MINI, error_of, marked_line


def check(text: str, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return validate(parse(path)[0])


def test_valid_spec_and_defaults(tmp_path):
    spec = check(MINI + "losses:\n  aux: {head: main, schedule: dsn}\n  syn: {type: synergy, beta: 2}\n", tmp_path)
    assert isinstance(spec, Spec) and [n.name for n in spec.nodes] == ["conv1", "relu1", "fc"]
    assert isinstance(spec.losses["aux"], CrossEntropyLoss) and spec.losses["aux"].schedule.type == "dsn"
    assert isinstance(spec.losses["syn"], SynergyLoss) and spec.losses["syn"].direction == "bidirectional"
    assert spec.nodes[0].at.line == next(i for i, l in enumerate(MINI.splitlines(), 1) if "conv1" in l)
    default = check(MINI, tmp_path).losses
    assert list(default) == ["main"] and isinstance(default["main"].schedule, ConstantSchedule)


def test_unknown_key_points_at_the_key_not_the_section(tmp_path):
    text = MINI + "train:\n  batch_size: 8\n  epoch: 3  # <-\n"
    err = error_of(check, text, tmp_path)
    assert err.pos.line == marked_line(text)
    assert err.what == "train: unknown key 'epoch'" and err.fix == "did you mean 'epochs'?"


def test_hint_offers_the_yaml_key_not_the_python_name(tmp_path):
    err = error_of(check, MINI.replace("{name: relu1, op: relu}", "{name: relu1, op: relu, frm: conv1}"), tmp_path)
    assert "did you mean 'from'?" in err.fix
    err = error_of(check, MINI.replace("{name: relu1, op: relu}", "{name: relu1, op: relu, zzz: 1}"), tmp_path)
    assert "from" in err.fix and "from_" not in err.fix


def test_field_description_is_the_fix_when_there_is_no_better_one(tmp_path):
    err = error_of(check, MINI.replace("out: 4", "out: -4"), tmp_path)
    assert err.what == "nodes.conv1.out: must be greater than 0, got -4"
    assert err.fix == f"out: {Conv.model_fields['out'].description}"
    err = error_of(check, MINI + "train: {epochs: many}\n", tmp_path)
    assert err.fix == f"epochs: {TrainSpec.model_fields['epochs'].description}"


@pytest.mark.parametrize("section, text", [
    ("train", "train: {log_gradients: true}\n"),
    ("data", "data: {source: npz, path: x.npz, crop: caffe}\n"),
    ("data", "data: {source: npz, path: x.npz, download: true}\n"),
    ("data", "data: {source: npz, path: x.npz, stream: true}\n"),
])
def test_a_sections_own_check_points_to_its_reference_not_its_description(tmp_path, section, text):
    """A model-level check fails on the section as a whole: its description is the fix, so it must point on."""
    err = error_of(check, MINI + text, tmp_path)
    assert err.what.startswith(f"{section}: ") and err.fix == f"{section}: {Spec.model_fields[section].description}"
    assert f"docs/spec.md, section {section}" in err.fix


def test_missing_key_says_what_it_is(tmp_path):
    err = error_of(check, MINI.replace("kernel: 3, ", ""), tmp_path)
    assert err.what == "nodes.conv1: required key 'kernel' is missing"
    assert err.fix.startswith("add kernel: ...") and "kernel size" in err.fix


def test_union_alternatives_give_one_message(tmp_path):
    err = error_of(check, MINI.replace("pad: 1", "pad: 1, stride: [1, 2, 3]"), tmp_path)
    assert len(err.errors) == 1
    assert err.what == "nodes.conv1.stride: must be an integer or a list of at most 2 items, got [1, 2, 3]"


def test_every_error_is_reported_with_its_own_line(tmp_path):
    text = "name: t\ninput: {shape: [1, 8, 8]}\nclasses: 1  # <-\nnodes:\n  - {name: fc, op: fc, out: 0}\n"
    err = error_of(check, text, tmp_path)
    assert isinstance(err, SpecErrors) and len(err.errors) == 2
    assert [e.pos.line for e in err.errors] == [marked_line(text), marked_line(text) + 2]
    assert str(err).count("\n") == 1 and all(" — " in line for line in str(err).splitlines())


def test_literal_choices_with_did_you_mean(tmp_path):
    err = error_of(check, MINI + "losses:\n  s: {type: synergy, direction: topdown}\n", tmp_path)
    assert "must be one of bidirectional, top_down, bottom_up, got 'topdown'" in err.what
    assert err.fix == "did you mean 'top_down'?"


def test_block_body_items_must_be_mappings(tmp_path):
    text = MINI + "blocks:\n  b:\n    nodes:\n      - 3  # <-\n"
    err = error_of(check, text, tmp_path)
    assert err.pos.line == marked_line(text) and "blocks.b.nodes[0]: a node must be a mapping, got 3" == err.what


def test_validate_node_names_the_node():
    raw = load_yaml("{name: x, op: reluu}", "block.yaml")
    err = error_of(validate_node, raw)
    assert str(err) == "block.yaml:1: node 'x': unknown op 'reluu' — did you mean 'relu'?"


def test_spec_errors_locates_through_union_tags():
    """loc ('nodes', 0, 'block', 'repeat'): 'block' is the union tag, not the node's `block:` key."""
    from pydantic import ValidationError

    raw = load_yaml("name: t\ninput: {shape: [1, 2, 2]}\nclasses: 2\nnodes:\n  - {name: i, block: b, repeat: 0}\n", "f")
    try:
        Spec.model_validate(raw)
    except ValidationError as exc:
        err = spec_errors(exc, raw)
    assert str(err).startswith("f:5: nodes.i.repeat: must be greater than or equal to 1, got 0 — repeat: ")


def test_a_loss_without_type_is_cross_entropy_never_silently_synergy(tmp_path):
    text = MINI + "losses:\n  main: {head: main}\n  syn: {beta: 2}\n"
    err = error_of(check, text, tmp_path)
    assert "add `type: synergy`" in err.what


def test_extends_with_another_type_replaces_the_section(tmp_path):
    (tmp_path / "base.yaml").write_text(MINI + "train:\n  lr_schedule: {type: multistep, milestones: [2], gamma: 0.5}\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\ntrain:\n  lr_schedule: {type: cosine, min_lr: 0.01}\n")
    schedule = validate(parse(tmp_path / "top.yaml")[0]).train.lr_schedule
    assert schedule.type == "cosine" and schedule.min_lr == 0.01 and not hasattr(schedule, "gamma")
