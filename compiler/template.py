"""`${expr}` expressions: jinja2's immutable sandbox with no calls and no globals, bounded results.

Used by parse (the spec's values) and expand (block bodies, once an instance's params are known).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any

from jinja2 import Undefined
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.compiler.tree import LineDict, LineList


_EXPR = re.compile(r"\$\{([^}]*)\}")
MAX_EXPR_SIZE = 100_000  # largest string/list (counted in characters and items) an expression may build
MAX_EXPR_TEXT = 2_000  # longest `${...}` expression
MAX_INT_BITS = 4_096  # largest integer an expression may build
MAX_PRECISION = 30  # digits `round` may keep


def size(value: Any) -> int:
    """What a value costs, counted in characters and items (nested sequences in full): the measure every
    bound of the sandbox is checked in, before the value is built where it can be."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 1 + value.bit_length() // 64
    if isinstance(value, dict):
        return 1 + sum(size(k) + size(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 1 + sum(size(v) for v in value)
    return 1


def rendered(value: Any) -> int:
    """An upper bound on len(str(value)), found without building the string."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, float):
        return 25
    if isinstance(value, dict):
        return 2 + sum(rendered(k) + rendered(v) + 6 for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 2 + sum(rendered(v) + 4 for v in value)
    return 4 * size(value) + 100


def _bound(total: int) -> None:
    if total > MAX_EXPR_SIZE:
        raise OverflowError(f"the result would have more than {MAX_EXPR_SIZE:,} characters/items")


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise OverflowError(f"the result would be an integer of more than {MAX_INT_BITS} bits")
    return value


_FORMAT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class _SpecSandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox (no attribute tricks, no code), also refusing calls, and bounding every value it builds:
    `*`, `+`, `%` (string formatting), `**`, `~` (concatenation) and the filters that combine values (`join`,
    `sum`, `round`) check the size of their result before building it. Expressions are arithmetic,
    comparisons, indexing and a few filters (`SAFE_FILTERS`)."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                    _bound(size(seq) * max(count, 0))
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise OverflowError(f"the result would be an integer of more than {MAX_INT_BITS} bits")
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 \
                and right * math.log2(abs(left)) > MAX_INT_BITS:
            raise OverflowError("the result would be too large")
        if operator == "+" and isinstance(left, (str, list, tuple)):
            _bound(size(left) + size(right))
        if operator == "%" and isinstance(left, str):
            _check_format(left, right)
        return _check_int(super().call_binop(context, operator, left, right))

    def is_safe_callable(self, obj) -> bool:
        return False  # no calls at all: `'a'.center(10**10)` and friends would exhaust memory

    @staticmethod
    def checked_concat(parts) -> str:
        """`a ~ b ~ c`, its size checked before it is joined."""
        _bound(sum(rendered(p) for p in parts))
        return "".join(map(str, parts))


def _check_format(text: str, args: Any) -> None:
    """`'%5d' % x`: no `*` widths, and widths and precisions that keep the result within bounds."""
    widths = 0
    for match in _FORMAT_FIELD.finditer(text):
        for group in match.groups():
            if group == "*":
                raise OverflowError("`*` widths are not allowed in % formatting")
            if group:
                widths += int(group) if len(group) < 12 else MAX_EXPR_SIZE + 1
    _bound(len(text) + widths + rendered(args))


class _CodeGenerator(CodeGenerator):
    """jinja2's code generator with `~` going through the sandbox's size check."""

    def visit_Concat(self, node, frame):
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _join(value, d: str = "") -> str:
    items = list(value) if isinstance(value, (list, tuple, str, dict)) else value
    _bound(sum(rendered(v) for v in items) + len(str(d)) * len(items))
    return str(d).join(map(str, items))


def _sum(value, start: Any = 0) -> Any:
    items = list(value) if isinstance(value, (list, tuple, dict)) else value
    if any(isinstance(v, (str, list, tuple)) for v in [start, *items]):
        _bound(size(start) + sum(size(v) for v in items))
    if isinstance(start, list) and all(isinstance(v, (list, tuple)) for v in items):
        return [x for part in (start, *items) for x in part]  # linear, not quadratic like repeated +
    out = start
    for item in items:
        out = _check_int(out + item)
    return out


def _round(value, precision: int = 0, method: str = "common"):
    if not isinstance(precision, int) or abs(precision) > MAX_PRECISION:
        raise OverflowError(f"round keeps at most {MAX_PRECISION} digits")
    return _round_filter(value, precision, method)


SAFE_FILTERS = ("abs", "int", "float", "round", "min", "max", "length", "first", "last", "sum", "join", "lower", "upper")
_env = _SpecSandbox(optimized=False)  # no constant folding: every operation goes through the checks above
_env.code_generator_class = _CodeGenerator
_env.globals.clear()  # no range(), lipsum(), cycler(), ...
_round_filter = _env.filters["round"]
_env.filters = {name: _env.filters[name] for name in SAFE_FILTERS}
_env.filters.update(join=_join, sum=_sum, round=_round)


def evaluate(text: str, context: dict[str, Any], pos: Pos | None) -> Any:
    """Replace `${expr}` in a string. A string that is one `${expr}` keeps the expression's type.

    Expressions are jinja2 expressions evaluated in its sandbox: arithmetic, comparisons,
    indexing and the names in `context` (the spec's `vars:`, `classes`, block params); no code.
    """
    whole = _EXPR.fullmatch(text.strip())
    if whole:
        return _eval_one(whole.group(1), context, pos)
    built = [0]

    def one(match: re.Match) -> str:
        value = _eval_one(match.group(1), context, pos)
        built[0] += rendered(value)
        if built[0] > MAX_EXPR_SIZE:
            raise SpecError(f"the string built by the ${{...}} in {_short(text)} would have more than {MAX_EXPR_SIZE:,} "
                            "characters", "build smaller values", pos)
        return str(value)

    return _EXPR.sub(one, text)


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit - 3] + "...")


@functools.lru_cache(maxsize=4096)
def _compiled(expr: str):
    return _env.compile_expression(expr, undefined_to_none=False)


def _eval_one(expr: str, context: dict[str, Any], pos: Pos | None) -> Any:
    if len(expr) > MAX_EXPR_TEXT:
        raise SpecError(f"an expression ${{{expr[:40]}...}} is {len(expr):,} characters long; the limit is "
                        f"{MAX_EXPR_TEXT:,}", "split it over vars:", pos)
    try:
        value = _compiled(expr)(**context)
        if size(value) > MAX_EXPR_SIZE:
            _bound(size(value))
    except UndefinedError as err:
        name = re.match(r"'([^']*)' is undefined", str(err))
        value = Undefined(name=name.group(1) if name else None)
    except SecurityError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {str(err)[:200].rstrip('.')}",
                        "expressions may use names, numbers and arithmetic only", pos) from None
    except TemplateError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {str(err)[:200]}", "use names from vars: (or block params) and "
                        "arithmetic", pos) from None
    except OverflowError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {str(err)[:200]}", "check the expression: it may build small "
                        "values only (numbers, short strings and lists)", pos) from None
    except RecursionError:
        raise SpecError(f"cannot evaluate ${{{expr[:40]}...}}: it is nested too deeply", "simplify the expression",
                        pos) from None
    except Exception as err:  # arithmetic errors inside a user's expression, e.g. division by zero
        raise SpecError(f"cannot evaluate ${{{expr}}}: {str(err)[:200] or type(err).__name__}", "check the expression",
                        pos) from None
    if isinstance(value, Undefined) or value.__class__.__module__.startswith("jinja2"):
        name = getattr(value, "_undefined_name", None)
        names = ", ".join(sorted(context)) or "none"
        if not name:
            raise SpecError(f"${{{expr}}} uses a name that is not defined", f"defined here: {names}", pos)
        hint = did_you_mean(name, context)
        hint = f"{hint} (defined here: {names})" if hint.startswith("did you mean") else f"defined here: {names}"
        raise SpecError(f"${{{expr}}} uses '{name}', which is not defined", f"{hint}; or add it under vars:", pos)
    return value


def substitute(value: Any, context: dict[str, Any], pos: Pos | None = None, skip: tuple[str, ...] = ()) -> Any:
    """Evaluate every `${...}` in a parsed tree (positions kept); keys listed in `skip` are left as written."""
    if isinstance(value, str):
        return evaluate(value, context, pos) if "${" in value else value
    if isinstance(value, dict):
        out = LineDict()
        out.pos, out.key_pos = getattr(value, "pos", pos), dict(getattr(value, "key_pos", {}))
        for key, item in value.items():
            item_pos = out.key_pos.get(key, out.pos)
            out[key] = item if key in skip else substitute(item, context, item_pos)
        return out
    if isinstance(value, list):
        out = LineList()
        out.pos = getattr(value, "pos", pos)
        out.item_pos = list(getattr(value, "item_pos", [])) or [out.pos] * len(value)
        out.extend(substitute(item, context, out.where(i)) for i, item in enumerate(value))
        return out
    return value
