"""Arithmetic over config.json values, as written in architecture YAML (`hidden_size * 2`).

YAML is data, never code: an expression is parsed with `ast` and only literals, names (config keys,
dotted for nested objects such as `rope_scaling.factor`), + - * // /, comparisons (`in` too), and/or/not,
`A if COND else B`, indexing a list (`layer_types[bid]`) and the pure functions of FUNCTIONS are allowed (in a
condition, a key config.json lacks is false; so is an index past the end of a list or into a non-list).
Anything else is a configuration error.
"""
from __future__ import annotations

import ast
import functools
import operator
from typing import Any, Callable, Mapping

from .errors import BadInputError, ConfigError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def int_list(value: Any) -> list[int]:
    """A list of ints from a list or a comma-separated string ("3,4,5", Step-3.5's moe_layers_enum)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        return [int(i) for i in items if str(i).strip()]
    except (TypeError, ValueError):
        raise BadInputError(f"{value!r} is not a list of integers") from None


FUNCTIONS: dict[str, Callable[..., Any]] = {"len": len, "min": min, "max": max, "int_list": int_list}


class MissingKey(BadInputError):
    """A config.json key the architecture needs is absent."""

    def __init__(self, key: str):
        super().__init__(f"config.json: missing key '{key}'")
        self.key = key


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"expression {text!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression, ast.BinOp, ast.UnaryOp, ast.USub, ast.Not, ast.BoolOp, ast.And, ast.Or,
            ast.Compare, ast.Constant, ast.Name, ast.Attribute, ast.Load, ast.IfExp, ast.Subscript, ast.Call,
        ) + tuple(_BINARY) + tuple(_COMPARE)
        if not isinstance(node, allowed):
            raise ConfigError(f"expression {text!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and (node.keywords or not isinstance(node.func, ast.Name)
                                           or node.func.id not in FUNCTIONS):
            raise ConfigError(f"expression {text!r}: only {', '.join(FUNCTIONS)} can be called (positional arguments)")
    return tree


def dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted_name(node.value)}.{node.attr}"
    raise ConfigError(f"not a name: {ast.dump(node)}")


def lookup(values: Mapping[str, Any], key: str) -> Any:
    """Value of a dotted key in nested mappings; MissingKey when any part is absent or null."""
    current: Any = values
    for part in key.split("."):
        if not isinstance(current, Mapping) or current.get(part) is None:
            raise MissingKey(key)
        current = current[part]
    return current


def has(values: Mapping[str, Any], key: str) -> bool:
    try:
        lookup(values, key)
    except MissingKey:
        return False
    return True


def evaluate(text: str | int | float, values: Mapping[str, Any]) -> Any:
    """Evaluate an expression against `values` (config.json merged with derived names)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    return _eval(parse(str(text)).body, values)


def _eval(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        return lookup(values, dotted_name(node))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else not operand
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, values), _eval(node.right, values))
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval_condition(node.test, values) else node.orelse, values)
    if isinstance(node, ast.Subscript):
        container, index = _eval(node.value, values), _eval(node.slice, values)
        if not isinstance(container, (list, tuple)) or isinstance(index, bool) or not isinstance(index, int) \
                or not -len(container) <= index < len(container) or container[index] is None:
            raise MissingKey(f"{ast.unparse(node)}")
        return container[index]
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval(arg, values) for arg in node.args))
    if isinstance(node, ast.BoolOp):
        # in a condition, a key config.json lacks is simply false ("rope_scaling.type == 'yarn' or ...")
        results = (_eval_condition(v, values) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise ConfigError(f"unsupported expression node {type(node).__name__}")


def holds(text: str, values: Mapping[str, Any]) -> bool:
    """A condition (`when:`, `where:`, `reject:`): a key config.json lacks makes it false, not an error."""
    return _eval_condition(parse(str(text)).body, values)


def _eval_condition(node: ast.AST, values: Mapping[str, Any]) -> bool:
    try:
        return bool(_eval(node, values))
    except MissingKey:
        return False


def names_in(text: str | int | float) -> set[str]:
    """Dotted names an expression refers to (for lint and error messages)."""
    if isinstance(text, (int, float)):
        return set()
    tree = parse(str(text))
    found: set[str] = set()
    functions = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(dotted_name(node))
        elif isinstance(node, ast.Name) and id(node) not in functions:
            found.add(node.id)
    # drop prefixes of dotted names ("rope_scaling" when "rope_scaling.factor" is present)
    return {n for n in found if not any(o != n and o.startswith(n + ".") for o in found)}
