"""Spec corner cases, each closed as a class and tested with generated cases: booleans are never numbers (nor
numbers or strings booleans) in any field of the schema; `output:` naming the network input; `extends:` naming
something that is not a spec; `${}` values bounded before they are built, for every builder and every type;
inputs read across branches reported at the `from:` that names them."""
from __future__ import annotations

import itertools
import time
import tracemalloc

import pytest

from netspec.compiler import analyse
from netspec.compiler.parse import MAX_SPEC_BYTES
from netspec.compiler.template import MAX_EXPR_SIZE, MAX_EXPR_TOTAL, evaluate, size
from netspec.errors import SpecError
from netspec.schema_base import Mistyped, Strict, _kinds, mark_mistyped
from netspec.spec import Spec
from conftest import MINI, error_of, marked_line, write

# --------------------------------------------------------------------------- booleans and numbers


def _models() -> list[type[Strict]]:
    """Every section and op model of the schema (subclasses of Strict that are complete)."""
    Spec.model_rebuild()
    seen, todo = [], [Strict]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return [m for m in seen if m.model_fields]


def _fields(kind: str) -> list[tuple[type, str, str]]:
    """(model, key, field) for every field that takes numbers but not booleans ('number') or the reverse ('bool')."""
    out = []
    for model in _models():
        for name, field in model.model_fields.items():
            kinds = _kinds(field.annotation)
            numbers, bools = "number" in kinds, "bool" in kinds
            if name not in ("at", "key_at") and "any" not in kinds and (numbers and not bools if kind == "number"
                                                                        else bools and not numbers and "str" not in kinds):
                out.append((model, field.alias or name, name))
    return out


NUMBER_FIELDS, BOOL_FIELDS = _fields("number"), _fields("bool")


def test_the_schema_has_both_kinds_of_fields():
    assert len(NUMBER_FIELDS) > 50 and len(BOOL_FIELDS) > 5  # the generated cases below cover the real schema


def _errors_on(model: type, key: str, value) -> list[dict]:
    from pydantic import ValidationError

    try:
        model.model_validate({key: value})
    except ValidationError as err:
        return [e for e in err.errors() if e["loc"] and e["loc"][0] == key]
    return []


@pytest.mark.parametrize("model,key,name", NUMBER_FIELDS, ids=[f"{m.__name__}.{k}" for m, k, _ in NUMBER_FIELDS])
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_never_a_number(model, key, name, value):
    errors = _errors_on(model, key, value)
    assert errors and all("YAML boolean" in str(e["input"]) for e in errors), (model, key, errors)


@pytest.mark.parametrize("model,key,name", BOOL_FIELDS, ids=[f"{m.__name__}.{k}" for m, k, _ in BOOL_FIELDS])
@pytest.mark.parametrize("value", [0, 1, 1.0, "yes", "on", "true"])
def test_a_number_or_string_is_never_a_boolean(model, key, name, value):
    errors = _errors_on(model, key, value)
    assert errors and all(isinstance(e["input"], Mistyped) for e in errors), (model, key, errors)


@pytest.mark.parametrize("annotation,value,marked", [
    (list[int], [1, True, 3], True), (tuple[int, int], (2, False), True), (dict[str, float], {"a": 1.0, "b": True}, True),
    (int | list[int], [True], True), (list[list[float]], [[0.5], [on := True]], True), (bool | int, True, False),
    (list[int], [1, 2], False), (dict[str, bool], {"a": True}, False), (int, 3, False), (float, 2.5, False),
])
def test_lists_and_mappings_are_checked_item_by_item(annotation, value, marked):
    assert (mark_mistyped(annotation, value) is not value) is marked


BOOL_IN_SPEC = [  # (id, spec text with the line marked, overrides)
    ("node_field", MINI.replace("out: 4, kernel: 3, pad: 1}", "out: yes, kernel: 3, pad: 1}  # <-"), []),
    ("block_style_field", MINI.replace("  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}\n",
                                       "  - name: conv1\n    op: conv\n    out: 4\n    kernel: on  # <-\n"), []),
    ("list_item", MINI.replace("input: {shape: [1, 8, 8]}", "input: {shape: [1, 8, no]}  # <-"), []),
    ("classes", MINI.replace("classes: 3", "classes: yes  # <-"), []),
    ("train_section", MINI + "train: {epochs: yes}  # <-\n", []),
    ("loss_weight", MINI + "losses:\n  main: {head: main, weight: on}  # <-\n", []),
    ("number_for_bool", MINI.replace("{name: fc, op: fc, out: 3}", "{name: fc, op: fc, out: 3, bias: 0}  # <-"), []),
    ("string_for_bool", MINI + "data: {augment: {flip: 'yes'}}  # <-\n", []),
    ("through_vars", MINI.replace("out: 4, kernel: 3, pad: 1}", "out: '${w}', kernel: 3, pad: 1}  # <-")
     + "vars: {w: yes}\n", []),
    ("through_block_param", MINI.replace("  - {name: fc", "  - {name: b, block: cb, k: true}\n  - {name: fc")
     + "blocks:\n  cb:\n    params: {k: 3}\n    nodes:\n      - {name: c, op: conv, out: 2, kernel: '${k}', pad: 1}  # <-\n", []),
]


@pytest.mark.parametrize("case", BOOL_IN_SPEC, ids=[c[0] for c in BOOL_IN_SPEC])
def test_booleans_and_numbers_in_specs_at_their_line(tmp_path, case):
    _, text, overrides = case
    err = error_of(analyse, write(tmp_path, text), overrides)
    assert err.pos.line == marked_line(text), str(err)
    assert "YAML boolean" in str(err) or "not a boolean" in str(err), str(err)


@pytest.mark.parametrize("override", ["train.epochs=yes", "classes=on", "nodes.conv1.out=true", "nodes.fc.bias=1"])
def test_booleans_and_numbers_in_overrides(tmp_path, override):
    err = error_of(analyse, write(tmp_path, MINI), [override])
    assert override in err.pos.file and ("YAML boolean" in str(err) or "not a boolean" in str(err)), str(err)


# --------------------------------------------------------------------------- output: naming the input

OUTPUTS = [(name, how) for name in ("data", "x", "image") for how in ("spec", "override", "expression")]


@pytest.mark.parametrize("name,how", OUTPUTS)
def test_output_naming_the_input(tmp_path, name, how):
    text = MINI.replace("input: {shape: [1, 8, 8]}", f"input: {{shape: [1, 8, 8], name: {name}}}")
    overrides = []
    if how == "spec":
        text += f"output: {name}  # <-\n"
    elif how == "expression":
        text += f"vars: {{o: {name}}}\noutput: '${{o}}'  # <-\n"
    else:
        overrides = [f"output={name}"]
    err = error_of(analyse, write(tmp_path, text), overrides)
    assert f"`output:` names the network input '{name}'" in err.what, str(err)
    if how == "override":
        assert "output=" in err.pos.file
    else:
        assert err.pos.line == marked_line(text)


@pytest.mark.parametrize("output", ["aux", "aux.fc", "aux.pool"])
def test_output_naming_a_branch(tmp_path, output):
    from conftest import WITH_BRANCH

    text = WITH_BRANCH + f"output: {output}  # <-\n"
    err = error_of(analyse, write(tmp_path, text))
    assert f"`output:` names '{output}', a node of branch 'aux'" in err.what and err.pos.line == marked_line(text)


# --------------------------------------------------------------------------- extends: targets that are not specs

BAD_TARGETS = {
    "binary": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)),
    "utf16": "name: x\n".encode("utf-16"),
    "latin1": "name: caf\xe9\n".encode("latin-1"),
    "yaml_error": b"name: [unclosed\n",
    "a_list": b"- 1\n- 2\n",
    "a_scalar": b"just text\n",
    "empty": b"",
    "python_tag": b"name: !!python/object:os.system x\n",
    "alias_bomb": b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n".encode() for p, n in zip("abcdefgh", "bcdefghi")),
    "deep": b"a: " + b"[" * 100 + b"]" * 100 + b"\n",
    "control_char": b"name: x\x07\n",
}


def _extending(tmp_path, target: str, body: bytes | None, where: str = "sub") -> tuple[str, str]:
    folder = tmp_path / where
    folder.mkdir(exist_ok=True)
    if body is not None:
        (folder / "base.bin").write_bytes(body)
    return MINI + f"extends: {target}  # <-\n", str(folder / "base.bin")


@pytest.mark.parametrize("kind", sorted(BAD_TARGETS))
@pytest.mark.parametrize("placement", ["beside", "absolute"])
def test_extends_a_file_that_is_not_a_spec(tmp_path, kind, placement):
    """The error is at the spec's `extends:` line and names the target (and, when it has one, the line in it)."""
    _, target = _extending(tmp_path, "", BAD_TARGETS[kind], "elsewhere" if placement == "absolute" else ".")
    name = target if placement == "absolute" else "base.bin"
    text = MINI + f"extends: {name}  # <-\n"
    spec = write(tmp_path, text)
    err = error_of(analyse, spec)
    assert err.pos.file == str(spec) and err.pos.line == marked_line(text), str(err)
    assert "base.bin" in err.what and "\n" not in str(err), str(err)


@pytest.mark.parametrize("kind", ["directory", "device", "missing", "too_large"])
def test_extends_something_that_is_not_a_file(tmp_path, kind):
    target = {"directory": str(tmp_path), "device": "/dev/zero", "missing": "nope.yaml", "too_large": "big.yaml"}[kind]
    if kind == "too_large":
        (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_SPEC_BYTES + 1))
    text = MINI + f"extends: {target}  # <-\n"
    spec = write(tmp_path, text)
    err = error_of(analyse, spec)
    assert err.pos.file == str(spec) and err.pos.line == marked_line(text), str(err)
    assert target.split("/")[-1] in err.what, str(err)


@pytest.mark.parametrize("kind", ["binary", "a_list", "yaml_error"])
def test_a_bad_target_down_a_chain_is_reported_where_it_is_named(tmp_path, kind):
    (tmp_path / "bad.bin").write_bytes(BAD_TARGETS[kind])
    middle = "description: middle\nextends: bad.bin  # <-\n"
    write(tmp_path, middle, "middle.yaml")
    err = error_of(analyse, write(tmp_path, MINI + "extends: middle.yaml\n"))
    assert err.pos.file.endswith("middle.yaml") and err.pos.line == marked_line(middle), str(err)
    assert "bad.bin" in err.what and err.what.count("extends") == 1, str(err)


# --------------------------------------------------------------------------- ${} sizes, bounded before building

TYPES = {  # a value of each type an expression can meet (YAML gives bytes with !!binary, sets with !!set)
    "str": "s", "bytes": "b", "list": "l", "tuple": "t", "dict_in_list": "[d]", "nested": "[l, [s]]",
    "unicode": "u", "control": "c",
}
CONTEXT = {"s": "ab", "b": b"ab", "l": [1, 2], "t": (1, 2), "d": {"k": "v"}, "u": "ßΐ", "c": "\x01\x02", "w": "w" * 1000}
BUILDERS = {  # each builds a value of about 2 × n from a value of each type
    "mul": "{v} * {n}", "rmul": "{n} * {v}", "add": "{v} * ({n} // 2) + {v} * ({n} // 2)", "concat": "({v} * {n}) ~ ''",
    "format": "'%s' % ({v} * {n},)", "format_repr": "'%r' % ({v} * {n},)", "join": "[{v}] * {n} | join(',')",
    "sum": "[{v}] * {n} | sum(start={v} * 0)", "upper": "({v} * {n}) | upper", "lower": "({v} * {n}) | lower",
    "in_list": "[{v} * {n}, 0]", "interpolate": "interpolate",
}


def _builder(builder: str, kind: str, n: int) -> str:
    if builder == "interpolate":
        return "a" + "${w}" * min(n // 1000 + 1, 300)
    return "${" + BUILDERS[builder].format(v=TYPES[kind], n=n) + "}"


def _measured(text: str) -> tuple[object, float, int]:
    """(value or error, CPU seconds, peak bytes allocated) of evaluating `text`."""
    tracemalloc.start()
    started = time.process_time()
    try:
        result = evaluate(text, CONTEXT, None)
    except SpecError as err:
        result = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, time.process_time() - started, peak


CASES = [(b, k) for b, k in itertools.product(BUILDERS, TYPES) if not (b == "interpolate" and k != "str")]


@pytest.mark.parametrize("builder,kind", CASES)
@pytest.mark.parametrize("factor", [1, 10**4, 10**12])
def test_values_past_the_bound_are_refused_before_they_are_built(builder, kind, factor):
    """Past the bound the error comes at once, with no more memory than a value within the bound takes."""
    result, seconds, peak = _measured(_builder(builder, kind, MAX_EXPR_SIZE * factor))
    if not isinstance(result, SpecError):  # some pairs are type errors, e.g. a dict to upper-case: not values
        pytest.fail(f"built a value of size {size(result)}")
    assert peak < 8 * MAX_EXPR_SIZE and seconds < 1.0, (str(result), peak, seconds)


@pytest.mark.parametrize("builder,kind", CASES)
def test_values_within_the_bound_are_built(builder, kind):
    result, seconds, peak = _measured(_builder(builder, kind, MAX_EXPR_SIZE // 100))
    if isinstance(result, SpecError):
        assert "cannot evaluate" in result.what and "more than" not in result.what, str(result)  # a type error
    else:
        assert size(result) <= MAX_EXPR_SIZE and seconds < 1.0


@pytest.mark.parametrize("expr", ["('9' * 4000) | int", "(2 ** 4096) - (-(2 ** 4096))", "(2 ** 4000) * (2 ** 200)",
                                  "([(0,)] * 50000) | sum(start=())", "(['a'] * 50000) | sum(start='')"])
def test_numbers_and_sums_stay_in_bounds_and_linear(expr):
    result, seconds, _ = _measured("${" + expr + "}")
    assert isinstance(result, SpecError) or (size(result) <= MAX_EXPR_SIZE and seconds < 1.0), result
    if isinstance(result, int):
        assert result.bit_length() <= 4096


def test_bytes_from_yaml_are_bounded(tmp_path):
    text = MINI + "vars:\n  b: !!binary YWJjZA==\n  big: '${b * 10**9}'  # <-\n"
    started = time.process_time()
    err = error_of(analyse, write(tmp_path, text))
    assert err.pos.line == marked_line(text) and "more than" in err.what
    assert time.process_time() - started < 2


def test_what_all_expressions_build_is_bounded(tmp_path):
    """Each var below is within the bound; together they pass the spec's total, reported at the var that does."""
    count = MAX_EXPR_TOTAL // (MAX_EXPR_SIZE - 1000) + 1
    lines = "".join(f"  v{i}: '${{\"x\" * {MAX_EXPR_SIZE - 1000}}}'\n" for i in range(count))
    started = time.process_time()
    err = error_of(analyse, write(tmp_path, MINI + "vars:\n" + lines))
    assert "in all" in err.what and err.pos.line == len(MINI.splitlines()) + 1 + count, str(err)
    assert time.process_time() - started < 5


def test_repeated_blocks_count_toward_the_total(tmp_path):
    body = ("blocks:\n  wide:\n    nodes:\n      - {name: cat, op: concat, from: '${[\"input\"] * 15000}'}  # <-\n"
            "      - {name: conv, op: conv, out: 1, kernel: 1}\n")
    text = MINI.replace("  - {name: fc", "  - {name: w, block: wide, repeat: 100}\n  - {name: fc") + body
    started = time.process_time()
    err = error_of(analyse, write(tmp_path, text))
    assert "in all" in err.what and err.pos.line == marked_line(text), str(err)
    assert time.process_time() - started < 20


# --------------------------------------------------------------------------- inputs across branches, at from:

TWO_BRANCHES = MINI + """\
branches:
  aux:
    from: relu1
    nodes:
      - {name: fc, op: fc, out: 3}
  aux2:
{aux2}
losses:
  main: {head: main}
  aux: {head: aux, weight: 0.3}
  aux2: {head: aux2, weight: 0.3}
"""
ACROSS = {
    "node_from_flow": "    from: relu1\n    nodes:\n      - {name: r, op: relu, from: aux.fc}  # <-\n"
                      "      - {name: fc, op: fc, out: 3}",
    "node_from_block_style": "    from: relu1\n    nodes:\n      - name: r\n        op: relu\n        from: aux.fc  # <-\n"
                             "      - {name: fc, op: fc, out: 3}",
    "node_from_list": "    from: relu1\n    nodes:\n      - name: r\n        op: add\n        from: [input, aux.fc]  # <-\n"
                      "      - {name: fc, op: fc, out: 3}",
    "branch_from": "    from: aux.fc  # <-\n    nodes:\n      - {name: fc, op: fc, out: 3}",
    "branch_from_grad_scale": "    grad_scale: 0.5\n    from: aux.fc  # <-\n    nodes:\n      - {name: fc, op: fc, out: 3}",
    "block_instance_from": "    from: relu1\n    nodes:\n      - name: b\n        block: id\n        from: aux.fc  # <-\n"
                           "      - {name: fc, op: fc, out: 3}",
}
BLOCK_ID = "blocks:\n  id:\n    nodes:\n      - {name: r, op: relu}\n"


@pytest.mark.parametrize("case", sorted(ACROSS))
def test_a_branch_reading_another_branch_is_reported_at_its_from(tmp_path, case):
    text = TWO_BRANCHES.replace("{aux2}", ACROSS[case]) + BLOCK_ID
    err = error_of(analyse, write(tmp_path, text))
    assert "a node of branch 'aux'" in err.what and err.pos.line == marked_line(text), str(err)


@pytest.mark.parametrize("style", ["flow", "block"])
def test_the_backbone_reading_a_branch_is_reported_at_its_from(tmp_path, style):
    reader = ("  - {name: x, op: relu, from: aux.fc}  # <-\n" if style == "flow"
              else "  - name: x\n    op: relu\n    from: aux.fc  # <-\n")
    text = TWO_BRANCHES.replace("{aux2}", ACROSS["branch_from"].replace("aux.fc  # <-", "relu1"))
    text = text.replace("  - {name: fc, op: fc, out: 3}\nbranches:", reader + "  - {name: fc, op: fc, out: 3, from: relu1}\nbranches:")
    err = error_of(analyse, write(tmp_path, text))
    assert "backbone node 'x'" in err.what and err.pos.line == marked_line(text), str(err)


def test_a_dangling_from_is_reported_at_its_from(tmp_path):
    text = MINI.replace("  - {name: relu1, op: relu}\n", "  - name: relu1\n    op: relu\n    from: conv_1  # <-\n")
    err = error_of(analyse, write(tmp_path, text))
    assert "'conv_1', which does not exist" in err.what and err.pos.line == marked_line(text), str(err)


def _random_expression(rng, depth: int) -> str:
    """A random expression over every builder and leaf type, with counts from tiny to far past the bound."""
    if depth == 0:
        return rng.choice(["s", "b", "l", "t", "[d]", "u", "c", "w", "1", "2.5", "(2 ** 60)", "'%s%r'", "''"])
    a, b = _random_expression(rng, depth - 1), _random_expression(rng, depth - 1)
    n = rng.choice([0, 1, 3, 1000, MAX_EXPR_SIZE // 3, MAX_EXPR_SIZE, 10**9, 10**30])
    return rng.choice([f"({a} * {n})", f"({n} * {a})", f"({a} + {b})", f"({a} ~ {b})", f"({a} % ({b},))",
                       f"([{a}] * {n} | join({b}))", f"([{a}] * {n} | sum(start={a} * 0))", f"({a} | upper)",
                       f"[{a}, {b}]", f"({a} - {b})", f"({a} ** {rng.choice([2, 64, 5000])})", f"({a} | int)"])


@pytest.mark.parametrize("seed", range(8))
def test_random_expressions_stay_in_bounds(seed):
    """Whatever an expression combines, it is a value within the bounds or an error, with no more memory than a
    value within the bound takes and at once."""
    import random

    rng = random.Random(seed)
    for _ in range(60):
        text = "${" + _random_expression(rng, rng.choice([1, 2, 3])) + "}"
        result, seconds, peak = _measured(text)
        if not isinstance(result, SpecError):
            assert size(result) <= MAX_EXPR_SIZE and (not isinstance(result, int) or result.bit_length() <= 4096), text
        assert peak < 64 * MAX_EXPR_SIZE and seconds < 1.0, (text, peak, seconds)
