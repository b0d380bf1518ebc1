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
MAX_EXPR_TOTAL = 2_000_000  # all the values the expressions of one spec build, blocks' copies included
MAX_EXPR_TEXT = 2_000  # longest `${...}` expression
MAX_INT_BITS = 4_096  # largest integer an expression may build
MAX_PRECISION = 30  # digits `round` may keep
_SIZED = (str, bytes, bytearray, list, tuple, set, frozenset, dict)  # every type with a size an expression can see
_FLOAT_DIGITS = 330  # '%f' of the largest float: 309 digits, sign, point (precision counted apart)


class Context(dict):
    """The names an expression sees, with the running total of what every expression of one spec built (shared
    by the scopes made with `scoped`), so repeated block copies cannot add up past MAX_EXPR_TOTAL."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built = [0]

    def spend(self, amount: int, expr: str, pos: Pos | None) -> None:
        self.built[0] += amount
        if self.built[0] > MAX_EXPR_TOTAL:
            raise SpecError(f"the ${{...}} expressions of this spec build more than {MAX_EXPR_TOTAL:,} characters/items "
                            f"in all (at ${{{expr[:40]}}})", "build smaller values, or fewer copies of them "
                            "(repeated blocks evaluate their expressions once per copy)", pos)


def scoped(context: dict[str, Any], names: dict[str, Any]) -> Context:
    """`context` with `names` added (a block copy's params), sharing its running total."""
    out = Context(context)
    out.update(names)
    if isinstance(context, Context):
        out.built = context.built
    return out


def size(value: Any, cap: int = MAX_EXPR_SIZE) -> int:
    """What a value costs, counted in characters and items (nested containers in full): the measure every bound
    of the sandbox is checked in, before the value is built. Counting stops once past `cap`, so measuring a
    value that shares one large part many times costs no more than the bound."""
    total, stack = 0, [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += 1 + item.bit_length() // 64
        elif isinstance(item, dict):
            total += 1
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 1
            stack.extend(item)
        else:
            total += 1
    return total


def rendered(value: Any, quoted: bool = False, float_digits: int = 25, cap: int = MAX_EXPR_SIZE) -> int:
    """An upper bound on len(str(value)) (`quoted`: on len(repr(value))), found without building the string.
    Strings inside containers are shown quoted and escaped (up to 10 characters for one: '\\U000e0001').
    Stops counting once past `cap`."""
    total, stack = 0, [(value, quoted)]
    while stack and total <= cap:
        item, inner = stack.pop()
        if isinstance(item, str):
            total += (2 * len(item) + 2 if item.isprintable() else 10 * len(item) + 2) if inner else len(item)
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 14
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += float_digits
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend((part, True) for pair in item.items() for part in pair)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += (3 if isinstance(item, (list, tuple)) else 13) + 2 * len(item)  # [], (x,), frozenset({}); ", "
            stack.extend((part, True) for part in item)
        else:  # a date from YAML, a jinja object: small, shown by its own repr
            total += 4 * size(item) + 100
    return total


def _bound(total: int) -> None:
    if total > MAX_EXPR_SIZE:
        raise OverflowError(f"the result would have more than {MAX_EXPR_SIZE:,} characters/items")


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise OverflowError(f"the result would be an integer of more than {MAX_INT_BITS} bits")
    return value


def _bound_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse a binary operation whose result would be past the bounds, before it is computed, for operands of
    any type (str, bytes, lists, tuples, sets, dicts, ints, floats)."""
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SIZED) and isinstance(count, int):
                _bound(size(seq) * max(count, 0))
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise OverflowError(f"the result would be an integer of more than {MAX_INT_BITS} bits")
    elif operator == "+" and (isinstance(left, _SIZED) or isinstance(right, _SIZED)):
        _bound(size(left) + size(right))
    elif operator == "%" and isinstance(left, (str, bytes)):
        _check_format(left, right)
    elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 \
            and right * math.log2(abs(left)) > MAX_INT_BITS:
        raise OverflowError("the result would be too large")


_FORMAT_FIELD = re.compile(rb"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)


class _SpecSandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox (no attribute tricks, no code), also refusing calls, and bounding every value it builds:
    `*`, `+`, `-`, `%` (string formatting), `**`, `~` (concatenation) and the filters that build values (`join`,
    `sum`, `round`, `int`, `upper`, `lower`) check the size of their result before building it, whatever the
    types. Expressions are arithmetic, comparisons, indexing and a few filters (`SAFE_FILTERS`)."""

    intercepted_binops = frozenset(["*", "**", "+", "-", "%"])

    def call_binop(self, context, operator, left, right):
        _bound_binop(operator, left, right)
        return _check_int(super().call_binop(context, operator, left, right))

    def is_safe_callable(self, obj) -> bool:
        return False  # no calls at all: `'a'.center(10**10)` and friends would exhaust memory

    @staticmethod
    def checked_concat(parts) -> str:
        """`a ~ b ~ c`, its size checked before it is joined."""
        _bound(sum(rendered(p) for p in parts))
        return "".join(map(str, parts))


def _check_format(text: str | bytes, args: Any) -> None:
    """`'%5d' % x`: no `*` widths, and widths and precisions that keep the result within bounds (`%r` / `%a`
    arguments counted as their escaped repr, floats as `%f` writes the largest)."""
    widths, quoted = 0, False
    for match in _FORMAT_FIELD.finditer(text if isinstance(text, bytes) else text.encode("utf-8", "replace")):
        width, precision, conversion = match.groups()
        for group in (width, precision):
            if group == b"*":
                raise OverflowError("`*` widths are not allowed in % formatting")
            if group:
                widths += int(group) if len(group) < 12 else MAX_EXPR_SIZE + 1
        quoted |= conversion in (b"r", b"a")
    _bound(len(text) + widths + rendered(args, quoted, _FLOAT_DIGITS))


class _CodeGenerator(CodeGenerator):
    """jinja2's code generator with `~` going through the sandbox's size check."""

    def visit_Concat(self, node, frame):
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _items(value: Any) -> Any:
    return list(value) if isinstance(value, _SIZED) else value


def _join(value, d: str = "") -> str:
    items = _items(value)
    _bound(sum(rendered(v) for v in items) + rendered(d) * len(items))
    return str(d).join(map(str, items))


def _sum(value, start: Any = 0) -> Any:
    """Numbers added with their size checked at each step; strings, bytes, lists and tuples joined in one go
    (repeated `+` would take time quadratic in the count), their total size checked first."""
    parts = [start, *_items(value)]
    if not any(isinstance(p, _SIZED) for p in parts):
        out = start
        for item in parts[1:]:
            out = _check_int(out + item)
        return out
    _bound(size(parts) - 1)
    for kind, joined in ((str, "".join), (bytes, b"".join), (tuple, lambda ps: tuple(x for p in ps for x in p))):
        if all(isinstance(p, kind) for p in parts):
            return joined(parts)
    if isinstance(start, list) and all(isinstance(p, (list, tuple)) for p in parts[1:]):
        return [x for part in parts for x in part]
    raise TypeError(f"sum cannot add {', '.join(sorted({type(p).__name__ for p in parts}))}")


def _round(value, precision: int = 0, method: str = "common"):
    if not isinstance(precision, int) or abs(precision) > MAX_PRECISION:
        raise OverflowError(f"round keeps at most {MAX_PRECISION} digits")
    return _round_filter(value, precision, method)


def _case(convert):
    """`upper` / `lower`: one character may become up to three ('ΐ'.upper()); the text of a non-string is its str."""
    def checked(value):
        _bound(rendered(value) * (1 if isinstance(value, str) and value.isascii() else 3))
        return convert(value)
    return checked


SAFE_FILTERS = ("abs", "int", "float", "round", "min", "max", "length", "first", "last", "sum", "join", "lower", "upper")
_env = _SpecSandbox(optimized=False)  # no constant folding: every operation goes through the checks above
_env.code_generator_class = _CodeGenerator
_env.globals.clear()  # no range(), lipsum(), cycler(), ...
_round_filter, _int_filter = _env.filters["round"], _env.filters["int"]
_env.filters = {name: _env.filters[name] for name in SAFE_FILTERS}
_env.filters.update(join=_join, sum=_sum, round=_round, int=lambda *args, **kwargs: _check_int(_int_filter(*args, **kwargs)),
                    upper=_case(_env.filters["upper"]), lower=_case(_env.filters["lower"]))


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
    cost = 0
    try:
        value = _compiled(expr)(**context)
        cost = size(value)
        _bound(cost)
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
    if isinstance(context, Context):
        context.spend(cost, expr, pos)
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
