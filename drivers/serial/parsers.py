"""Line parsers: one decoded text line -> {metric: value}. No I/O, no state.

Invariants: a parser either returns at least one metric or raises ``ParseError`` (counted by
the caller as ``parse_error``); values are converted by the configured type per metric
("auto": int, else float, else the string as is); a conversion failure is a ``ParseError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from edgegw import Value

from .options import LineOptions

_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


class ParseError(ValueError):
    """The line does not have the configured shape."""


def _auto(text: str) -> Value:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use 1/0, true/false, on/off)")


_CONVERTERS: dict[str, Callable[[str], Value]] = {
    "auto": _auto,
    "int": int,
    "float": float,
    "str": str,
    "bool": _bool,
    "hex": lambda t: int(t, 16),
}


def convert(values: Mapping[str, str], types: Mapping[str, str]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for name, text in values.items():
        try:
            out[name] = _CONVERTERS[types.get(name, "auto")](text.strip())
        except ValueError as exc:
            raise ParseError(f"{name}: {exc}") from None
    return out


LineParser = Callable[[str], dict[str, Value]]


def make_line_parser(opts: LineOptions) -> LineParser:
    """Build the parser configured by ``line.parse``."""
    types = dict(opts.types)
    if opts.parse == "regex":
        assert opts.regex is not None
        pattern = re.compile(opts.regex)

        def parse_regex(line: str) -> dict[str, Value]:
            m = pattern.search(line)
            if m is None:
                raise ParseError("line does not match line.regex")
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            if not groups:
                raise ParseError("line.regex matched but captured no metric")
            return convert(groups, types)

        return parse_regex

    if opts.parse == "kv":
        pair_sep, kv_sep = opts.pair_separator, opts.kv_separator

        def parse_kv(line: str) -> dict[str, Value]:
            pairs: dict[str, str] = {}
            for item in line.split(pair_sep):
                item = item.strip()
                if not item:
                    continue
                key, sep, value = item.partition(kv_sep)
                key = key.strip()
                if not sep or not key:
                    raise ParseError(f"{item!r} is not key{kv_sep}value")
                pairs[key] = value
            if not pairs:
                raise ParseError("no key=value pairs in line")
            return convert(pairs, types)

        return parse_kv

    names = list(opts.fields)
    delimiter = opts.delimiter

    def parse_delimited(line: str) -> dict[str, Value]:
        parts = line.split(delimiter)
        if len(parts) != len(names):
            raise ParseError(f"{len(parts)} fields, expected {len(names)} (line.fields)")
        return convert({n: parts[i] for i, n in enumerate(names) if n}, types)

    return parse_delimited
