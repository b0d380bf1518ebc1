"""The bad-spec suite: each malformed spec must fail with `file:line: what — fix`, the right line and words.

A case is (id, spec text, words in "what", words in "fix", overrides). The line the error must point at
carries the comment `# <-` (several marks: any of them, e.g. any node of a cycle); a line marked
`# first` is substituted for `{first}` in the expected words. Override errors point at the override.
"""
from __future__ import annotations

import time

import pytest

from netspec.compiler import analyse
from netspec.cli import main
from netspec.errors import SpecErrors, UserError

H = "name: bad\ninput: {shape: [1, 8, 8]}\nclasses: 3\n"
FC = "  - {name: fc, op: fc, out: 3}\n"
NODES = H + "nodes:\n  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}\n  - {name: relu1, op: relu}\n" + FC
BRANCH = "branches:\n  aux:\n    from: relu1\n    nodes:\n      - {name: fc, op: fc, out: 3}\n"
BLOCK = ("blocks:\n  cbr:\n    params: {out: null, stride: 1}\n    nodes:\n"
         "      - {name: conv, op: conv, out: '${out}', kernel: 3, pad: 1, stride: '${stride}'}\n"
         "      - {name: relu, op: relu}\n")
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]  # <-\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))

CASES = [
    # --- unknown keys, with did-you-mean, at every level
    ("unknown_top_level_key", NODES + "nodez: []  # <-\n", "unknown top-level key 'nodez'", "did you mean 'nodes'?"),
    ("unknown_node_field", H + "nodes:\n  - {name: c, op: conv, out: 4, kernal: 3}  # <-\n" + FC,
     "nodes.c: unknown key 'kernal'", "did you mean 'kernel'?"),
    ("unknown_loss_field", NODES + "losses:\n  main: {head: main, wieght: 1}  # <-\n",
     "losses.main: unknown key 'wieght'", "did you mean 'weight'?"),
    ("unknown_train_field", NODES + "train:\n  lr_schedule: {type: cosine}\n  epoch: 3  # <-\n",
     "train: unknown key 'epoch'", "did you mean 'epochs'?"),
    ("unknown_branch_field", NODES + "branches:\n  aux:\n    form: relu1  # <-\n    nodes: [{name: fc, op: fc, out: 3}]\n",
     "branches.aux: unknown key 'form'", "did you mean 'from'?"),
    ("unknown_op", H + "nodes:\n  - {name: c, op: convv, out: 4, kernel: 3}  # <-\n" + FC,
     "nodes.c: unknown op 'convv'", "did you mean 'conv'?"),
    ("unknown_op_in_block", H + "blocks:\n  b:\n    nodes:\n      - {name: x, op: reluu}  # <-\n"
     "nodes:\n  - {name: i, block: b}\n" + FC, "node 'x': unknown op 'reluu'", "did you mean 'relu'?"),
    ("unknown_loss_type", NODES + "losses:\n  main: {type: crossentropy, head: main}  # <-\n",
     "losses.main: unknown type 'crossentropy'", "did you mean 'cross_entropy'?"),
    ("unknown_schedule", NODES + "losses:\n  main: {head: main, schedule: cndz}  # <-\n",
     "losses.main.schedule: unknown type 'cndz'", "did you mean 'cnds'?"),
    ("unknown_init", H + "init: {weight: gausian}  # <-\nnodes:\n" + FC,
     "init.weight: unknown type 'gausian'", "did you mean 'gaussian'?"),
    ("unknown_optimizer", NODES + "train: {optimizer: sdg}  # <-\n",
     "train.optimizer: unknown type 'sdg'", "did you mean 'sgd'?"),
    ("unknown_data_source", NODES + "data: {source: cifar}  # <-\n",
     "data.source: must be one of fashion-mnist, mnist", "did you mean 'cifar10'?"),
    ("unknown_synergy_direction", NODES + "losses:\n  main: {head: main}\n  s: {type: synergy, direction: topdown}  # <-\n",
     "got 'topdown'", "did you mean 'top_down'?"),
    # --- missing, wrong type, out of range
    ("missing_required_field", H + "nodes:\n  - {name: c, op: conv, out: 4}  # <-\n" + FC,
     "nodes.c: required key 'kernel' is missing", "add kernel: ... (kernel size"),
    ("missing_op", H + "nodes:\n  - {name: c, out: 4, kernel: 3}  # <-\n" + FC, "a node needs `op:`", "op: conv"),
    ("missing_name", "input: {shape: [1, 8, 8]}  # <-\nclasses: 3\nnodes:\n" + FC,
     "required key 'name' is missing", "build/<name>/"),
    ("wrong_type", H + "nodes:\n  - {name: c, op: conv, out: four, kernel: 3}  # <-\n" + FC,
     "nodes.c.out: must be an integer, got 'four'", "out: output channels"),
    ("wrong_type_bool", H + "nodes:\n  - {name: c, op: conv, out: 4, kernel: 3, bias: maybe}  # <-\n" + FC,
     "nodes.c.bias: must be true or false, got 'maybe'", "bias: learn a bias term"),
    ("negative_out", H + "nodes:\n  - {name: c, op: conv, out: -1, kernel: 3}  # <-\n" + FC,
     "nodes.c.out: must be greater than 0, got -1", "output channels"),
    ("stride_list_too_long", H + "nodes:\n  - {name: c, op: conv, out: 4, kernel: 3, stride: [1, 2, 3]}  # <-\n" + FC,
     "nodes.c.stride: must be an integer or a list of at most 2 items, got [1, 2, 3]", "int or [h, w]"),
    ("section_not_a_mapping", "name: bad\ninput: [1, 8, 8]  # <-\nclasses: 3\nnodes:\n" + FC,
     "input: must be a mapping (key: value), got [1, 8, 8]", "input shape"),
    ("node_not_a_mapping", H + "nodes:\n  - fc  # <-\n", "nodes[0]: must be a mapping, got 'fc'", "{name: conv1"),
    ("too_few_classes", "name: bad\ninput: {shape: [1, 8, 8]}\nclasses: 1  # <-\nnodes:\n" + FC,
     "classes: must be greater than 1, got 1", "number of classes"),
    ("input_mean_length", "name: bad\ninput: {shape: [3, 8, 8], mean: [0.5, 0.5]}  # <-\nclasses: 3\nnodes:\n" + FC,
     "mean has 2 values for 3 channels", "input shape and normalisation"),
    ("input_shape_length", "name: bad\ninput: {shape: [8, 8]}  # <-\nclasses: 3\nnodes:\n" + FC,
     "input.shape: has 2 item(s), needs 3", "shape: C, H, W"),
    ("custom_target_format", H + "nodes:\n  - {name: c, op: custom, target: torch.nn.Identity}  # <-\n" + FC,
     "target must be 'package.module:ClassName'", "target:"),
    # --- references, names, graph structure
    ("dangling_from", NODES.replace("{name: relu1, op: relu}", "{name: relu1, op: relu, from: conv_1}  # <-"),
     "node 'relu1' takes input from 'conv_1', which does not exist", "did you mean 'conv1'?"),
    ("cycle", H + "nodes:\n  - {name: a, op: relu, from: c}  # <-\n  - {name: b, op: relu}  # <-\n"
     "  - {name: c, op: add, from: [b, data]}  # <-\n" + FC, "the graph has a cycle: ", "fix one `from:` on this path"),
    ("self_loop", H + "nodes:\n  - {name: a, op: relu, from: a}  # <-\n" + FC, "the graph has a cycle: a → a", "`from:`"),
    ("duplicate_node_name", H + "nodes:\n  - {name: a, op: relu}  # first\n  - {name: a, op: relu}  # <-\n" + FC,
     "node name 'a' is used twice", "first defined at {first}"),
    ("unused_node", H + "nodes:\n  - {name: a, op: relu}\n  - {name: b, op: relu, from: data}  # <-\n"
     "  - {name: fc, op: fc, out: 3, from: a}\n", "the output of node 'b' is used by no head", "delete it"),
    ("too_few_inputs", H + "nodes:\n  - {name: a, op: relu}\n  - {name: s, op: add}  # <-\n" + FC,
     "node 's' (add) has 1 input(s), needs at least 2", "from: [a, b]"),
    ("head_without_loss", NODES + "branches:\n  aux:\n    from: relu1  # <-\n    nodes: [{name: fc, op: fc, out: 3}]\n",
     "head 'aux' has no loss", "head: aux"),
    ("loss_on_unknown_head", NODES + BRANCH + "losses:\n  main: {head: main}\n  aux: {head: axu}  # <-\n",
     "loss 'aux' is on head 'axu', which does not exist", "did you mean 'aux'?"),
    ("synergy_on_unknown_head", NODES + BRANCH + "losses:\n  main: {head: main}\n  aux: {head: aux}\n"
     "  syn: {type: synergy, heads: [main, aux2]}  # <-\n", "loss 'syn' is on head 'aux2'", "did you mean 'aux'?"),
    ("branch_attaches_to_unknown_node", NODES + BRANCH.replace("from: relu1", "from: relu  # <-"),
     "branch 'aux' attaches to 'relu', which does not exist", "did you mean 'relu1'?"),
    ("branch_named_like_a_node", NODES + "branches:\n  relu1:\n    from: conv1  # <-\n    nodes: [{name: fc, op: fc, out: 3}]\n",
     "branch 'relu1' has the name of a head or backbone node", "its own name"),
    # --- shapes
    ("add_shape_mismatch", H + "nodes:\n  - {name: a, op: conv, out: 4, kernel: 3, pad: 1}\n"
     "  - {name: b, op: conv, out: 8, kernel: 3, pad: 1}\n  - {name: s, op: add, from: [a, b]}  # <-\n" + FC,
     "node 's' (add) cannot take input (4, 8, 8) from 'a' and (8, 8, 8) from 'b': the shapes differ", "equal shapes"),
    ("conv_kernel_larger_than_input", H + "nodes:\n  - {name: a, op: conv, out: 4, kernel: 11}  # <-\n" + FC,
     "node 'a' (conv) cannot take input (1, 8, 8) from 'data'", "smaller than the kernel"),
    ("pool_window_larger_than_input", H + "nodes:\n  - {name: p, op: maxpool, kernel: 9}  # <-\n" + FC,
     "node 'p' (maxpool) cannot take input (1, 8, 8)", "smaller than the window"),
    ("concat_size_mismatch", H + "nodes:\n  - {name: a, op: conv, out: 4, kernel: 3, pad: 1}\n"
     "  - {name: b, op: maxpool, kernel: 2, from: a}\n  - {name: s, op: concat, from: [a, b]}  # <-\n" + FC,
     "node 's' (concat) cannot take input (4, 8, 8) from 'a' and (4, 4, 4) from 'b'", "equal height and width"),
    ("conv_groups", H + "nodes:\n  - {name: a, op: conv, out: 3, kernel: 3, groups: 2}  # <-\n" + FC,
     "in_channels must be divisible by groups", "parameters"),
    # --- blocks
    ("unknown_block", H + BLOCK + "nodes:\n  - {name: b1, block: crb, out: 4}  # <-\n" + FC,
     "node 'b1' uses block 'crb', which is not defined", "did you mean 'cbr'?"),
    ("block_unknown_param", H + BLOCK + "nodes:\n  - {name: b1, block: cbr, out: 4, strid: 2}  # <-\n" + FC,
     "block 'cbr' has no param 'strid'", "did you mean 'stride'?"),
    ("block_missing_param", H + BLOCK + "nodes:\n  - {name: b1, block: cbr}  # <-\n" + FC,
     "block 'cbr' needs param 'out'", "add out: ... to node 'b1'"),
    ("block_body_not_a_mapping", H + "blocks:\n  b:\n    nodes:\n      - 3  # <-\nnodes:\n  - {name: i, block: b}\n" + FC,
     "blocks.b.nodes[0]: a node must be a mapping, got 3", "{name: conv"),
    ("block_repeat_zero", H + BLOCK + "nodes:\n  - {name: b1, block: cbr, out: 4, repeat: 0}  # <-\n" + FC,
     "nodes.b1.repeat: must be greater than or equal to 1, got 0", "repeat: how many copies"),
    # --- expressions
    ("bad_expression", H + "vars: {w: 4}\nnodes:\n  - {name: a, op: conv, out: '${w *}', kernel: 3}  # <-\n" + FC,
     "cannot evaluate ${w *}", "arithmetic"),
    ("undefined_variable", H + "vars: {width: 4}\nnodes:\n  - {name: a, op: conv, out: '${widht}', kernel: 3}  # <-\n" + FC,
     "${widht} uses 'widht', which is not defined", "did you mean 'width'?"),
    ("undefined_block_param", H + "blocks:\n  cbr:\n    params: {out: null}\n    nodes:\n"
     "      - {name: conv, op: conv, out: '${outt}', kernel: 3}  # <-\nnodes:\n  - {name: b1, block: cbr, out: 4}\n" + FC,
     "uses 'outt', which is not defined", "did you mean 'out'?"),
    ("sandbox_escape", H + "vars: {w: 4}\nnodes:\n  - {name: a, op: conv, out: '${w.__class__.__mro__}', kernel: 3}  # <-\n"
     + FC, "unsafe", "names, numbers and arithmetic"),
    ("expression_memory_bomb", H + "vars:\n  big: \"${'x' * 10**10}\"  # <-\nnodes:\n" + FC, "more than 100,000 characters/items", "check the expression"),
    # --- YAML itself
    ("yaml_syntax_error", "name: bad\ninput: {shape: [1, 8, 8]\nclasses: 3  # <-\n", "expected ',' or '}'", "YAML syntax"),
    ("yaml_tab", "name: bad\n\tinput: 3  # <-\n", "'\\t' that cannot start any token", "YAML syntax"),
    ("yaml_python_tag", H + "nodes: !!python/object/apply:os.system ['echo pwned']  # <-\n",
     "the YAML tag '!!python/object/apply:os.system' is not allowed", "plain data"),
    ("yaml_alias_bomb", BOMB, "expands to more than 200000 values", "alias bomb"),
    ("yaml_duplicate_key", H + "classes: 4  # <-\nnodes:\n" + FC, "key 'classes' is written twice", "keep one"),
    ("extends_missing_file", "name: bad\nextends: base.yaml  # <-\n", "`extends: base.yaml` names a file that does not exist",
     "relative to this spec"),
    ("custom_op_not_allowed", H + "nodes:\n  - {name: c, op: custom, target: 'torch.nn:Identity'}  # <-\n" + FC,
     "node 'c' is a custom op: it imports and runs torch.nn:Identity", "--allow-custom (or NETSPEC_ALLOW_CUSTOM=1) if you trust"),
    # --- names that would break the module, recursion, degenerate losses, devices
    ("reserved_node_name", H + "nodes:\n  - {name: train, op: conv, out: 4, kernel: 3}  # <-\n" + FC,
     "'train' is reserved", "name"),
    ("invalid_node_name", H + "nodes:\n  - {name: 'loss:main', op: relu}  # <-\n" + FC, "is not a valid name", "name"),
    ("reserved_branch_name", NODES + "branches:\n  forward:  # <-\n    from: relu1\n    nodes: [{name: fc, op: fc, out: 3}]\n",
     "'forward' is reserved", ""),
    ("block_uses_itself", H + "blocks:\n  b:\n    nodes:\n      - {name: x, op: relu}\n      - {name: y, block: b}  # <-\n"
     "nodes:\n  - {name: inst, block: b}\n" + FC, "block 'b' uses itself: b → b", "cannot contain itself"),
    ("synergy_with_one_head", NODES + "losses:\n  main: {head: main}\n  syn: {type: synergy, heads: [main]}  # <-\n",
     "two or more different heads", ""),
    ("synergy_all_without_branches", NODES + "losses:\n  main: {head: main}\n  syn: {type: synergy}  # <-\n",
     "needs two or more heads", "add a branch"),
    ("bad_device", NODES + "train:\n  device: gpu  # <-\n", "train.device", ""),
]

OVERRIDE_CASES = [
    ("override_typo", ["train.epoch=3"], "train: unknown key 'epoch'", "did you mean 'epochs'?"),
    ("override_unknown_list_item", ["nodes.relu2.op=relu"], "'nodes' has no item named 'relu2'", "did you mean 'relu1'?"),
    ("override_node_field_typo", ["nodes.conv1.kernal=5"], "nodes.conv1: unknown key 'kernal'", "did you mean 'kernel'?"),
    ("override_wrong_type", ["train.epochs=abc"], "train.epochs: must be an integer, got 'abc'", "epochs:"),
    ("override_without_equals", ["train.epochs"], "an override must look like key=value", "train.epochs=3"),
    ("override_into_a_value", ["classes.n=3"], "'n' cannot be set: its parent is a value", "dotted key"),
    ("override_optimizer_typo", ["train.optimizer=sdg"], "train.optimizer: unknown type 'sdg'", "did you mean 'sgd'?"),
]


def marks(text: str, tag: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines(), 1) if f"# {tag}" in line]


def failure(path, overrides=()) -> UserError:
    with pytest.raises(UserError) as info:
        analyse(path, overrides)
    err = info.value
    return err.errors[0] if isinstance(err, SpecErrors) else err


def test_the_suite_is_big_enough():
    assert len(CASES) + len(OVERRIDE_CASES) >= 30
    assert all(marks(text, "<-") for _, text, *_ in CASES)


@pytest.mark.parametrize("text, what, fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec(tmp_path, text, what, fix):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    started = time.process_time()  # CPU time: a bound on the work done, whatever else the machine runs
    err = failure(path)
    assert time.process_time() - started < 5
    lines = marks(text, "<-")
    assert err.pos is not None and err.pos.file == str(path), str(err)
    assert err.pos.line in lines, f"{err} (expected line {lines})"
    first = marks(text, "first")
    assert what in err.what, str(err)
    assert fix.replace("{first}", f"{path}:{first[0]}" if first else "") in err.fix, str(err)
    assert str(err) == f"{path}:{err.pos.line}: {err.what} — {err.fix}"


@pytest.mark.parametrize("overrides, what, fix", [c[1:] for c in OVERRIDE_CASES], ids=[c[0] for c in OVERRIDE_CASES])
def test_bad_override(tmp_path, overrides, what, fix):
    path = tmp_path / "spec.yaml"
    path.write_text(NODES)
    err = failure(path, overrides)
    assert str(err.pos) == f"override '{overrides[0]}'"
    assert what in err.what and fix in err.fix, str(err)


SAMPLE = ["unknown_node_field", "cycle", "add_shape_mismatch", "yaml_python_tag", "yaml_alias_bomb", "undefined_variable",
          "loss_on_unknown_head", "custom_op_not_allowed", "block_unknown_param", "yaml_syntax_error"]


@pytest.mark.parametrize("case", SAMPLE)
def test_cli_exits_2_with_one_clean_message(tmp_path, monkeypatch, capsys, case):
    text = dict((c[0], c[1]) for c in CASES)[case]
    (tmp_path / "spec.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NETSPEC_BUILD", str(tmp_path / "build"))
    assert main(["compile", "spec.yaml"]) == 2
    out, err = capsys.readouterr()
    assert not out and "Traceback" not in err
    line = int(err.split(":")[1])
    assert err.startswith("spec.yaml:") and line in marks(text, "<-") and " — " in err


def test_head_without_loss_suggests_valid_yaml(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(NODES + "branches:\n  aux:\n    from: relu1\n    nodes: [{name: fc, op: fc, out: 3}]\n")
    assert "aux: {type: cross_entropy, head: aux, weight: 0.3}," in failure(path).fix


# --- known bugs in files this suite does not own (compiler/expand.py, netspec/spec.py) --------------------------


def test_unknown_output_points_at_output_line(tmp_path):
    text = NODES + "output: fcc  # <-\n"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    err = failure(path)
    assert err.pos.line == marks(text, "<-")[0] and "output" in err.what and "did you mean 'fc'?" in err.fix


def test_branch_from_error_points_at_from_line(tmp_path):
    text = NODES + "branches:\n  aux:\n    nodes: [{name: fc, op: fc, out: 3}]\n    from: relu  # <-\n"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert failure(path).pos.line == marks(text, "<-")[0]


def test_input_shape_must_be_positive(tmp_path):
    text = "name: bad\ninput: {shape: [1, 0, 8]}  # <-\nclasses: 3\nnodes:\n" + FC
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    err = failure(path)
    assert err.pos.line == 2 and "shape" in err.what


def test_map_op_on_a_vector_names_the_node_and_the_fix(tmp_path):
    text = NODES.replace("op: fc, out: 3", "op: fc, out: 8") + "  - {name: late_pool, op: maxpool, kernel: 2}  # <-\n"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    err = failure(path)
    assert err.pos.line == marks(text, "<-")[0] and "late_pool" in err.what and "(C, H, W)" in err.what


def test_empty_from_list_is_refused(tmp_path):
    text = NODES.replace("op: fc, out: 3", "op: fc, from: [], out: 3")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert "names no input" in failure(path).what
