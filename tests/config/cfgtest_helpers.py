"""Helpers for the config tests: locate a snippet in a fixture, collect every issue."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cfgtest_drivers import DRIVERS

from edgegw.config import ConfigError, ConfigIssue, check_config, load_config

FIXTURES = Path(__file__).parent / "fixtures"


def locate(file: Path, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, col) of the n-th occurrence of ``needle`` in ``file`` (plain text search,
    independent of the YAML parser whose marks are under test)."""
    text = file.read_text(encoding="utf-8")
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def problems(path: Path, env: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    """Every issue of both phases (phase 2 only runs when phase 1 passed)."""
    try:
        cfg = load_config(str(path), env={} if env is None else env)
    except ConfigError as exc:
        return exc.issues
    return check_config(cfg, DRIVERS)
