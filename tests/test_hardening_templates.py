"""Issue 10, class 4: `${}` expressions and repeats are bounded in size and time. Every operation that builds a
value (`*`, `+`, `%`, `**`, `~`, join, sum, round, nesting, many `${}` in one string) is tried with sizes around
and far beyond the limit: within it the value is built, beyond it the error comes at once, at the line."""
from __future__ import annotations

import time

import pytest

from netspec.compiler import analyse
from netspec.limits import Limits
from netspec.compiler.template import MAX_EXPR_SIZE, MAX_EXPR_TEXT, evaluate, size
from netspec.errors import SpecError
from conftest import MINI, error_of, write

N = MAX_EXPR_SIZE
BUILDERS = {
    "str_mul": "'x' * {n}", "list_mul": "[0] * {n}", "str_add": "'x' * ({n} // 2 + 1) + 'y' * ({n} // 2 + 1)",
    "list_add": "[0] * ({n} // 2 + 1) + [1] * ({n} // 2 + 1)", "concat": "'x' * ({n} // 2 + 1) ~ 'y' * ({n} // 2 + 1)",
    "format_width": "'%{n}d' % 1", "format_args": "'%s%s' % ('x' * ({n} // 2 + 1), 'y' * ({n} // 2 + 1))",
    "join": "(['ab'] * ({n} // 2 + 1)) | join", "join_sep": "(['a'] * ({n} // 4 + 1)) | join('xyz')",
    "sum_lists": "([[0, 1]] * ({n} // 2 + 1)) | sum(start=[])", "nested_mul": "[['x' * 100] * 100] * ({n} // 10000 + 1)",
    "concat_list": "([0] * ({n} // 4 + 1)) ~ ''", "interpolate": "many",
}


def _expr(kind: str, n: int) -> str:
    if kind == "interpolate":
        return "a" + "${w}" * min(n // 1000 + 1, 300)
    return "${" + BUILDERS[kind].format(n=n) + "}"


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("factor", [10**3, 10**9, 10**18])
def test_every_builder_is_bounded(kind, factor):
    n = N * factor // 1000 if factor != 10**3 else N + 1000
    started = time.process_time()  # CPU time: a bound on the work, not on the machine's load
    context = {"w": "w" * 1000}
    err = error_of(evaluate, _expr(kind, n), context, None)
    assert "more than" in str(err) or "too large" in str(err), str(err)
    assert time.process_time() - started < 1.0


@pytest.mark.parametrize("kind", [k for k in BUILDERS if k != "format_width"])
def test_within_the_limit_values_are_built(kind):
    value = evaluate(_expr(kind, N // 2 - 100), {"w": "w" * 1000}, None)
    assert size(value) <= N


@pytest.mark.parametrize("expr", ["2 ** 5000", "(2 ** 4000) * (2 ** 4000)", "10 ** 10 ** 10", "1.5 | round(10 ** 9, 'ceil')",
                                  "'%*d' % (10 ** 9, 1)", "[" * 3000 + "]" * 3000, "(" * 3000 + "1" + ")" * 3000,
                                  "x" * (MAX_EXPR_TEXT + 1), "('1' * 5000) | int", "1e308 * 10", "(10 ** 300) / 1e-300"])
def test_numbers_and_nesting_are_bounded(expr):
    started = time.process_time()
    try:
        value = evaluate("${" + expr + "}", {}, None)
    except SpecError as err:
        assert len(str(err)) < 500
    else:
        assert size(value) < 100
    assert time.process_time() - started < 1.0


def test_many_vars_are_refused_before_they_are_evaluated(tmp_path):
    lines = "".join(f"  v{i}: \"${{v{i - 1} + 1}}\"\n" for i in range(1, 3_000))
    path = write(tmp_path, MINI + "vars:  # <-\n  v0: 1\n" + lines)
    started = time.process_time()
    err = error_of(analyse, path)
    assert "the limit is 1,000" in err.what and err.pos.line == 8
    assert time.process_time() - started < 5


def test_vars_chain_cannot_grow_past_the_limit(tmp_path):
    """Each var may double the previous one: the chain stops at the limit, at the var's line."""
    lines = "".join(f"  v{i}: \"${{v{i - 1} ~ v{i - 1}}}\"\n" for i in range(1, 40))
    path = write(tmp_path, MINI + "vars:\n  v0: xxxxxxxxxx\n" + lines)
    started = time.process_time()
    err = error_of(analyse, path)
    assert "more than" in err.what and err.pos.line > 5
    assert time.process_time() - started < 2


BLOCK = """\
blocks:
  inner:
    nodes:
      - {{name: r, op: relu}}
  outer:
    nodes:
      - {{name: i, block: inner, repeat: {inner}}}
"""


@pytest.mark.parametrize("outer,inner", [(10_001, 1), (10**9, 1), (200, 200), (10_000, 10_000)])
def test_repeats_are_bounded(tmp_path, outer, inner):
    text = MINI.replace("  - {name: fc, op: fc, out: 3}", f"  - {{name: o, block: outer, repeat: {outer}}}\n"
                        "  - {name: fc, op: fc, out: 3}") + BLOCK.format(inner=inner)
    path = write(tmp_path, text)
    started = time.process_time()
    err = error_of(analyse, path)
    assert ("at most 10000" in str(err) or "less than or equal to 10000" in str(err)
            or f"more than {Limits().nodes:,} nodes" in str(err)), str(err)
    assert time.process_time() - started < 30


def test_the_node_limit_can_be_raised(tmp_path):
    text = MINI.replace("  - {name: fc, op: fc, out: 3}", "  - {name: o, block: outer, repeat: 30}\n"
                        "  - {name: fc, op: fc, out: 3}") + BLOCK.format(inner=2)
    path = write(tmp_path, text)
    err = error_of(analyse, path, limits=Limits(nodes=20))
    assert "more than 20 nodes" in err.what and "NETSPEC_MAX_NODES" in err.fix
    assert len(analyse(path, limits=Limits(nodes=200))[1].nodes) == 63
    err = error_of(analyse, path, limits=Limits(expand_seconds=1e-9))
    assert "took longer than" in err.what and "NETSPEC_MAX_EXPAND_SECONDS" in err.fix
