"""The calculator tool the chat model calls between `<|python_start|>` and `<|python_end|>`.

`use_calculator(expr)` returns the result as text (what the engine forces between `<|output_start|>` and
`<|output_end|>`), or None when the expression is not one it evaluates (then nothing is injected).

What it evaluates — the reference's two kinds of expression, by walking the parsed syntax tree against an
allow-list (nothing is ever passed to `eval`, `exec` or `compile` beyond `ast.parse`):
- arithmetic: int and float literals, `+ - * / // %`, unary `+ -`, parentheses; `/` gives a float as in
  Python (`6/3` -> `2.0`). `**` is rejected, as in the reference: it is the one operator whose cost explodes.
- string counting: `'strawberry'.count('r')` on string literals, usable as a number inside arithmetic.
Commas are stripped first, as in the reference (`1,234 * 2` -> `2468`), so `.count` takes one argument.

The result is formatted like the reference's `str(eval(expr))`: ints as ints, floats by Python's repr.

Bounded in time and size, with no signals, timers or global state (so it works the same in any thread): the expression
is at most 1,000 characters and 64 levels deep, every number (literal or intermediate) must satisfy
|x| < 1e100 and be finite, so no operation ever touches a big number and a call takes microseconds.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings

MAX_EXPR_CHARS = 1000
MAX_DEPTH = 64
MAX_MAGNITUDE = 10**100

# The parser warns about some inputs ('\\d' escapes, '1if'); such warnings are silenced by a filter that matches
# only this pseudo-file, set once at import. (warnings.catch_warnings would be simpler but swaps process-wide
# state: two threads interleaving it can leave every warning of the process ignored.)
_FILENAME = "<nanochat-calculator>"
warnings.filterwarnings("ignore", module=re.escape(_FILENAME))

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class _Rejected(Exception):
    """The expression is outside what the calculator evaluates."""


def use_calculator(expr: str) -> str | None:
    """Evaluate a calculator expression; the result as text, or None if it is not one we evaluate."""
    if not isinstance(expr, str):
        return None
    expr = expr.replace(",", "").strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        tree = ast.parse(expr, filename=_FILENAME, mode="eval")
        value = _number(tree.body, 0)
    except (_Rejected, SyntaxError, ValueError, ArithmeticError, RecursionError, MemoryError, TypeError):
        return None
    return str(value)


def _number(node: ast.AST, depth: int) -> int | float:
    """The value of an allowed numeric node; _Rejected for anything else."""
    if depth > MAX_DEPTH:
        raise _Rejected("too deep")
    kind = type(node)
    if kind is ast.Constant:
        value = node.value
        if type(value) not in (int, float):  # bool, complex, str, bytes, None, Ellipsis
            raise _Rejected("not a number")
        return _bounded(value)
    if kind is ast.BinOp:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise _Rejected("operator not allowed")
        left = _number(node.left, depth + 1)
        right = _number(node.right, depth + 1)
        return _bounded(op(left, right))  # ZeroDivisionError -> ArithmeticError
    if kind is ast.UnaryOp:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise _Rejected("operator not allowed")
        return _bounded(op(_number(node.operand, depth + 1)))
    if kind is ast.Call:
        return _count(node)
    raise _Rejected("node not allowed")


def _count(node: ast.Call) -> int:
    """`'literal'.count('literal')` and nothing else."""
    func = node.func
    if not (
        type(func) is ast.Attribute
        and func.attr == "count"
        and type(func.value) is ast.Constant
        and type(func.value.value) is str
        and len(node.args) == 1
        and not node.keywords
        and type(node.args[0]) is ast.Constant
        and type(node.args[0].value) is str
    ):
        raise _Rejected("only 'text'.count('text') is allowed")
    return str.count(func.value.value, node.args[0].value)


def _bounded(value: int | float) -> int | float:
    if type(value) is float and not math.isfinite(value):
        raise _Rejected("not finite")
    if not -MAX_MAGNITUDE < value < MAX_MAGNITUDE:
        raise _Rejected("too large")
    return value
