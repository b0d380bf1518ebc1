"""`${expr}` expressions: jinja2's immutable sandbox with no calls and no globals, bounded results.

Used by parse (the spec's values) and expand (block bodies, once an instance's params are known).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any

from jinja2 import Undefined
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.compiler.tree import LineDict, LineList


_EXPR = re.compile(r"\$\{([^}]*)\}")
MAX_EXPR_SIZE = 100_000  # longest string/list an expression may build


class _SpecSandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox (no attribute tricks, no code), also refusing calls, and `*` and `**` that would exhaust
    memory or CPU. Expressions are arithmetic, comparisons, indexing and a few filters (`SAFE_FILTERS`)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_EXPR_SIZE:
                    raise OverflowError(f"the result would have more than {MAX_EXPR_SIZE} items")
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 \
                and right * math.log2(abs(left)) > 4096:
            raise OverflowError("the result would be too large")
        return super().call_binop(context, operator, left, right)


    def is_safe_callable(self, obj) -> bool:
        return False  # no calls at all: `'a'.center(10**10)` and friends would exhaust memory


SAFE_FILTERS = ("abs", "int", "float", "round", "min", "max", "length", "first", "last", "sum", "join", "lower", "upper")
_env = _SpecSandbox()
_env.globals.clear()  # no range(), lipsum(), cycler(), ...
_env.filters = {name: _env.filters[name] for name in SAFE_FILTERS}


def evaluate(text: str, context: dict[str, Any], pos: Pos | None) -> Any:
    """Replace `${expr}` in a string. A string that is one `${expr}` keeps the expression's type.

    Expressions are jinja2 expressions evaluated in its sandbox: arithmetic, comparisons,
    indexing and the names in `context` (the spec's `vars:`, `classes`, block params); no code.
    """
    whole = _EXPR.fullmatch(text.strip())
    if whole:
        return _eval_one(whole.group(1), context, pos)
    return _EXPR.sub(lambda m: str(_eval_one(m.group(1), context, pos)), text)


@functools.lru_cache(maxsize=4096)
def _compiled(expr: str):
    return _env.compile_expression(expr, undefined_to_none=False)


def _eval_one(expr: str, context: dict[str, Any], pos: Pos | None) -> Any:
    try:
        value = _compiled(expr)(**context)
    except UndefinedError as err:
        name = re.match(r"'([^']*)' is undefined", str(err))
        value = Undefined(name=name.group(1) if name else None)
    except SecurityError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {str(err).rstrip('.')}",
                        "expressions may use names, numbers and arithmetic only", pos) from None
    except TemplateError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {err}", "use names from vars: (or block params) and arithmetic", pos) from None
    except Exception as err:  # arithmetic errors inside a user's expression, e.g. division by zero
        raise SpecError(f"cannot evaluate ${{{expr}}}: {err}", "check the expression", pos) from None
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
