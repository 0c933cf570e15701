"""The rule expression language: whitelist, compile errors users can act on, window functions
against a straightforward reference computation."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from edgegw.edge.expr import ExprError, Unknown, compile_expr
from edgegw.edge.windows import SeriesHistory


class Ctx:
    def __init__(self, values: dict[str, Any], windows: dict[str, float] | None = None) -> None:
        self.values = values
        self.windows = windows or {}

    def value(self, metric: str) -> Any:
        if metric not in self.values:
            raise Unknown
        return self.values[metric]

    def window(self, fn: str, metric: str, seconds: float) -> float:
        return self.windows[f"{fn}:{metric}:{seconds:g}"]


@pytest.mark.parametrize(
    ("source", "values", "expected"),
    [
        ("temp > 80 and not alarm", {"temp": 81, "alarm": False}, True),
        ("70 < temp <= 80", {"temp": 80}, True),
        ("mode in ('auto', 'eco')", {"mode": "eco"}, True),
        ("mode not in ['auto']", {"mode": "auto"}, False),
        ("max(a, b, 3) - min(a, b) == 4", {"a": -1, "b": 2}, True),
        ("abs(a) + round(b, 1)", {"a": -1, "b": 2.345}, 3.3),
        ("x if x > 0 else -x", {"x": -4}, 4),
        ("a.b.c * 2", {"a.b.c": 21}, 42),
        ('metric("flow-rate") // 3 % 2', {"flow-rate": 10}, 1),
        ("a or b", {"a": 0, "b": 5}, 5),
    ],
)
def test_evaluates(source: str, values: dict[str, Any], expected: Any) -> None:
    assert compile_expr(source)(Ctx(values)) == expected


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("__import__('os').system('x')", "only the built-in functions"),
        ("temp.__class__", None),  # parsed as the metric name "temp.__class__": harmless
        ("(lambda: 1)()", "only the built-in functions"),
        ("temp[0] > 1", "Subscript is not allowed"),
        ("avgg(temp, '5m') > 1", "unknown function 'avgg'"),
        ("avg(temp, '5 min') > 1", "bad window '5 min'"),
        ("avg(temp, window) > 1", "window must be a literal duration"),
        ("avg(temp) > 1", "takes a metric and a window"),
        ("temp >", "syntax error"),
        ("", "empty expression"),
        ("[x for x in y]", "ListComp is not allowed"),
        ("f'{temp}'", "JoinedStr is not allowed"),
        ("avg(1 + 2, '5m')", "first argument must be a metric name"),
    ],
)
def test_rejects(source: str, fragment: str | None) -> None:
    if fragment is None:
        compiled = compile_expr(source)
        assert compiled.metrics == ["temp.__class__"]
        return
    with pytest.raises(ExprError) as err:
        compile_expr(source)
    assert fragment in str(err.value)


def test_did_you_mean_and_column() -> None:
    with pytest.raises(ExprError) as err:
        compile_expr("temp > 1 and stdev(temp, '1m') > 2")
    assert err.value.hint == "did you mean 'stddev'?"
    assert "column 14" in err.value.message


def test_metadata_lists_metrics_and_windows() -> None:
    c = compile_expr('avg(temp, "5m") > 3 and prev(flow) < max(temp, "30s") and anomaly.score > 1')
    assert c.metrics == ["temp", "flow", "anomaly.score"]
    assert c.windows == {"temp": 300.0, "flow": 0.0}
    assert c.uses_time


def test_power_is_bounded() -> None:
    c = compile_expr("2 ** x")
    with pytest.raises(ValueError, match="exponent"):
        c(Ctx({"x": 10_000}))


def test_window_functions_match_reference() -> None:
    rng = random.Random(3)
    hist = SeriesHistory(horizon_s=30.0)
    stream: list[tuple[int, float]] = []
    t = 0
    for _ in range(2000):
        t += rng.randint(1, 3000)
        v = rng.gauss(20.0, 5.0)
        assert hist.add(t, v)
        stream.append((t, v))
        for seconds in (1.0, 7.5, 30.0):
            inside = np.array([x for ts, x in stream if ts > t - seconds * 1000])
            times = [ts for ts, _ in stream if ts > t - seconds * 1000]
            assert hist.window("count", seconds, t) == len(inside)
            assert hist.window("avg", seconds, t) == pytest.approx(inside.mean(), rel=1e-12)
            assert hist.window("min", seconds, t) == inside.min()
            assert hist.window("max", seconds, t) == inside.max()
            assert hist.window("sum", seconds, t) == pytest.approx(
                inside.sum(), rel=1e-12, abs=1e-9
            )
            assert hist.window("stddev", seconds, t) == pytest.approx(
                inside.std(), rel=1e-9, abs=1e-12
            )
            if len(inside) >= 2:
                assert hist.window("delta", seconds, t) == inside[-1] - inside[0]
                rate = (inside[-1] - inside[0]) / ((times[-1] - times[0]) / 1000)
                assert hist.window("rate", seconds, t) == pytest.approx(rate, rel=1e-12)
            else:
                with pytest.raises(Unknown):
                    hist.window("delta", seconds, t)
        if len(stream) > 1:
            assert hist.window("prev", 0, t) == stream[-2][1]
    assert len(hist) < 40  # bounded by the 30 s horizon (+2 kept for prev), not by the stream


def test_out_of_order_sample_is_refused() -> None:
    hist = SeriesHistory(10)
    assert hist.add(5_000, 1.0)
    assert not hist.add(4_000, 2.0)
    assert hist.window("count", 10, 5_000) == 1
    with pytest.raises(Unknown):
        hist.window("prev", 0, 5_000)
    assert hist.window("age", 0, 7_500) == 2.5
