"""Durations and byte sizes: accepted spellings, rejections with helpful messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from edgegw.units import (
    ByteSize,
    Duration,
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250us", 0.00025),
        ("1m30s", 90.0),
        (" 10 s ", 10.0),
        ("3", 3.0),
        (7, 7.0),
        (0.25, 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 sex", "", "ms", "1.2.3s", "-1s", "1e3", "fast", "inf"])
def test_bad_duration_message(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^bad duration '.*' \(use e\.g\. 500ms, 10s, 5m\)$"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [True, None, [1], -3, float("nan")])
def test_duration_rejects_non_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 * 1024**2),
        ("10MB", 10_000_000),
        ("256KiB", 262_144),
        ("4096", 4096),
        (4096, 4096),
        ("1.5GiB", 1_610_612_736),
        ("2k", 2000),
        ("1 gb", 1_000_000_000),
        ("12B", 12),
    ],
)
def test_parse_bytes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["64 MegaBytes", "MiB", "-1", "1.5", "10 XB", True, 2.5, None])
def test_bad_byte_size(bad: object) -> None:
    with pytest.raises(ValueError, match="bad byte size"):
        parse_bytes(bad)


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_round_trips_through_its_formatter(n: int, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9)


@given(st.integers(min_value=0, max_value=2**50))
def test_bytes_round_trip_through_its_formatter(size: int) -> None:
    assert parse_bytes(format_bytes(size)) == size


class _Model(BaseModel):
    every: Duration
    size: ByteSize


def test_pydantic_types_accept_the_same_and_report_the_same() -> None:
    m = _Model.model_validate({"every": "250ms", "size": "1KiB"})
    assert (m.every, m.size) == (0.25, 1024)
    with pytest.raises(ValidationError) as err:
        _Model.model_validate({"every": "5 sex", "size": "lots"})
    messages = [e["ctx"]["error"].args[0] for e in err.value.errors()]
    assert messages == [
        "bad duration '5 sex' (use e.g. 500ms, 10s, 5m)",
        "bad byte size 'lots' (use e.g. 4096, 256KiB, 64MiB, 10MB)",
    ]
    schema = _Model.model_json_schema()["properties"]
    assert {"type": "number", "minimum": 0} in schema["every"]["anyOf"]
    assert {"type": "integer", "minimum": 0} in schema["size"]["anyOf"]
