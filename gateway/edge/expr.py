"""The rule expression language: a whitelisted subset of Python expressions, compiled once.

An expression is parsed with ``ast.parse(mode="eval")`` and compiled into a tree of closures; it is
never passed to ``eval``/``exec``. Anything outside the whitelist is a compile error that names the
construct and its column, so ``edgegw check`` can point at it.

Language (see docs/edge.md):
- names are metrics of the rule's device: ``temp``; dotted names are one metric: ``anomaly.score``;
  any other name via ``metric("flow-rate")``.
- literals: numbers, strings, True/False; tuples/lists of literals on the right of ``in``.
- operators: ``+ - * / // % **``, unary ``- + not``, ``and or``, comparisons (chained too),
  ``in``/``not in``, ``x if c else y``.
- window functions over the GOOD samples of the last duration: ``avg|mean|min|max|sum|count|
  stddev|delta|rate(metric, "5m")``; ``prev(metric)`` (the value before the current one),
  ``age(metric)`` (seconds since its last sample); plain ``min(a, b, ...)``, ``max``, ``abs``,
  ``round``.

Invariants:
- A missing input (no sample yet, or a non-GOOD latest sample, or an empty window) raises
  ``Unknown`` at evaluation; callers treat the whole expression as unknown, never as False.
- ``**`` is bounded (|exponent| <= 64) so an expression cannot hang the event loop.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgegw.protocol.suggest import did_you_mean
from edgegw.units import parse_duration

WINDOW_FUNCTIONS = frozenset(
    {"avg", "mean", "min", "max", "sum", "count", "stddev", "delta", "rate"}
)
SERIES_FUNCTIONS = frozenset({"prev", "age"})
PLAIN_FUNCTIONS = frozenset({"min", "max", "abs", "round", "metric"})
ALL_FUNCTIONS = sorted(WINDOW_FUNCTIONS | SERIES_FUNCTIONS | PLAIN_FUNCTIONS)
MAX_EXPONENT = 64


class Unknown(Exception):
    """A value the expression needs is not known (yet): the result is unknown."""


class ExprError(ValueError):
    """A compile error: ``message`` plus an optional ``hint`` for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class EvalContext(Protocol):
    """What a compiled expression reads: the device's current values and its windows."""

    def value(self, metric: str) -> Any: ...

    def window(self, fn: str, metric: str, seconds: float) -> float: ...


Fn = Callable[[EvalContext], Any]


@dataclass
class Compiled:
    """A compiled expression; ``metrics`` in order of first use, ``windows`` = metric -> longest
    window (seconds) any function needs (0 for ``prev``/``age``, which need only history)."""

    source: str
    fn: Fn
    metrics: list[str] = field(default_factory=list)
    windows: dict[str, float] = field(default_factory=dict)
    uses_time: bool = False  # window functions: the result changes as time passes

    def __call__(self, ctx: EvalContext) -> Any:
        return self.fn(ctx)


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def _pow(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > MAX_EXPONENT:
        raise ValueError(f"exponent {b} too large (limit {MAX_EXPONENT})")
    return a**b


def _suggest(name: str, choices: list[str]) -> str | None:
    close = did_you_mean(name, choices)
    return f"did you mean {close!r}?" if close else None


class _Compiler:
    def __init__(self, source: str) -> None:
        self.source = source
        self.metrics: list[str] = []
        self.windows: dict[str, float] = {}
        self.uses_time = False

    def fail(self, node: ast.AST, message: str, hint: str | None = None) -> ExprError:
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        return ExprError(f"{message}{where} in {self.source!r}", hint)

    def use(self, metric: str, seconds: float | None = None) -> None:
        if metric not in self.metrics:
            self.metrics.append(metric)
        if seconds is not None:
            self.windows[metric] = max(self.windows.get(metric, 0.0), seconds)

    # ----------------------------------------------------------------- metric references
    def metric_name(self, node: ast.AST) -> str | None:
        """``temp``, ``anomaly.score`` or ``"flow-rate"`` as a metric name; None otherwise."""
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            base = self.metric_name(node.value)
            if base is None or isinstance(node.value, ast.Constant):
                return None
            return f"{base}.{node.attr}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    def compile(self, node: ast.AST) -> Fn:
        if isinstance(node, ast.Expression):
            return self.compile(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float | str):
                value = node.value
                return lambda ctx: value
            raise self.fail(node, f"literal {node.value!r} is not allowed")
        if isinstance(node, ast.Name | ast.Attribute):
            name = self.metric_name(node)
            if name is None:
                raise self.fail(node, "attribute access is not allowed")
            self.use(name)
            return lambda ctx: ctx.value(name)
        if isinstance(node, ast.Tuple | ast.List):
            items = []
            for elt in node.elts:
                if not isinstance(elt, ast.Constant) or not isinstance(
                    elt.value, bool | int | float | str
                ):
                    raise self.fail(elt, "only literals are allowed inside a tuple/list")
                items.append(elt.value)
            frozen = frozenset(items)
            return lambda ctx: frozen
        if isinstance(node, ast.BinOp):
            left, right = self.compile(node.left), self.compile(node.right)
            if isinstance(node.op, ast.Pow):
                return lambda ctx: _pow(left(ctx), right(ctx))
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
            return lambda ctx: op(left(ctx), right(ctx))
        if isinstance(node, ast.UnaryOp):
            inner = self.compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda ctx: not inner(ctx)
            if isinstance(node.op, ast.USub):
                return lambda ctx: -inner(ctx)
            if isinstance(node.op, ast.UAdd):
                return lambda ctx: +inner(ctx)
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.BoolOp):
            parts = [self.compile(v) for v in node.values]
            if isinstance(node.op, ast.And):

                def all_of(ctx: EvalContext) -> Any:
                    result: Any = True
                    for p in parts:
                        result = p(ctx)
                        if not result:
                            return result
                    return result

                return all_of

            def any_of(ctx: EvalContext) -> Any:
                result: Any = False
                for p in parts:
                    result = p(ctx)
                    if result:
                        return result
                return result

            return any_of
        if isinstance(node, ast.Compare):
            return self.compile_compare(node)
        if isinstance(node, ast.IfExp):
            test, body, orelse = (
                self.compile(node.test),
                self.compile(node.body),
                self.compile(node.orelse),
            )
            return lambda ctx: body(ctx) if test(ctx) else orelse(ctx)
        if isinstance(node, ast.Call):
            return self.compile_call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed in a rule expression")

    def compile_compare(self, node: ast.Compare) -> Fn:
        first = self.compile(node.left)
        ops: list[tuple[Callable[[Any, Any], Any], Fn]] = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            fn = _CMPOPS.get(type(op))
            if fn is None:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
            ops.append((fn, self.compile(comparator)))

        def compare(ctx: EvalContext) -> bool:
            left = first(ctx)
            for fn, right_fn in ops:
                right = right_fn(ctx)
                if not fn(left, right):
                    return False
                left = right
            return True

        return compare

    def duration_arg(self, node: ast.AST, fn: str) -> float:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str | int | float)
            and not isinstance(node.value, bool)
        ):
            try:
                seconds = parse_duration(node.value)
            except ValueError as exc:
                raise self.fail(node, f"{fn}(): bad window {node.value!r}", str(exc)) from None
            if seconds <= 0:
                raise self.fail(node, f"{fn}(): window must be longer than 0", 'e.g. "30s", "5m"')
            return seconds
        raise self.fail(
            node, f"{fn}(): the window must be a literal duration", 'e.g. avg(temp, "5m")'
        )

    def compile_call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name):
            raise self.fail(
                node, "only the built-in functions can be called", ", ".join(ALL_FUNCTIONS)
            )
        fn = node.func.id
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, f"{fn}(): keyword and * arguments are not allowed")
        args = node.args
        if fn not in ALL_FUNCTIONS:
            raise self.fail(
                node,
                f"unknown function {fn!r}",
                _suggest(fn, ALL_FUNCTIONS) or ", ".join(ALL_FUNCTIONS),
            )
        # window form: f(metric, "5m"); min/max fall back to the plain form when the second
        # argument is not a literal string (min(a, b) keeps its usual meaning)
        windowed = (
            fn in WINDOW_FUNCTIONS
            and len(args) == 2
            and (
                fn not in ("min", "max")
                or (isinstance(args[1], ast.Constant) and isinstance(args[1].value, str))
            )
        )
        if windowed:
            metric = self.metric_name(args[0])
            if metric is None:
                raise self.fail(args[0], f"{fn}(): the first argument must be a metric name")
            seconds = self.duration_arg(args[1], fn)
            self.use(metric, seconds)
            self.uses_time = True
            name = "avg" if fn == "mean" else fn
            series: str = metric
            return lambda ctx: ctx.window(name, series, seconds)
        if fn in WINDOW_FUNCTIONS and fn not in ("min", "max"):
            raise self.fail(node, f"{fn}() takes a metric and a window", f'e.g. {fn}(temp, "5m")')
        if fn in SERIES_FUNCTIONS or fn == "metric":
            if len(args) != 1:
                raise self.fail(node, f"{fn}() takes exactly one metric")
            metric = self.metric_name(args[0])
            if metric is None or (fn == "metric" and not isinstance(args[0], ast.Constant)):
                raise self.fail(args[0], f"{fn}(): the argument must be a metric name")
            self.use(metric, 0.0 if fn != "metric" else None)
            if fn == "metric":
                return lambda ctx: ctx.value(metric)
            self.uses_time = self.uses_time or fn == "age"
            return lambda ctx: ctx.window(fn, metric, 0.0)
        compiled = [self.compile(a) for a in args]
        if fn in ("min", "max"):
            if len(compiled) < 2:
                raise self.fail(
                    node, f'{fn}() needs a window (f(metric, "5m")) or two or more values'
                )
            builtin = min if fn == "min" else max
            return lambda ctx: builtin(c(ctx) for c in compiled)
        if fn == "abs":
            if len(compiled) != 1:
                raise self.fail(node, "abs() takes one value")
            only = compiled[0]
            return lambda ctx: abs(only(ctx))
        # round
        if len(compiled) not in (1, 2):
            raise self.fail(node, "round() takes a value and optional digits")
        if len(compiled) == 1:
            only = compiled[0]
            return lambda ctx: round(only(ctx))
        value_fn, digits_fn = compiled
        return lambda ctx: round(value_fn(ctx), int(digits_fn(ctx)))


def compile_expr(source: str) -> Compiled:
    """Compile ``source`` or raise ``ExprError`` (syntax, disallowed construct, bad window)."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("empty expression", 'e.g. "temp > 80"')
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise ExprError(
            f"syntax error{col} in {source!r}: {exc.msg}",
            "rule expressions use Python syntax: and/or/not, == != < <= > >=",
        ) from None
    compiler = _Compiler(source.strip())
    fn = compiler.compile(tree)
    return Compiled(compiler.source, fn, compiler.metrics, compiler.windows, compiler.uses_time)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
