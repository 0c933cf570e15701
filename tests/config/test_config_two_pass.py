"""The YAML loader's two passes (issue 13, memory): data first without places, the located tree
only when a place is asked for.

A valid config must never build the located tree (~1.4 KB per device point, whose peak stays in
the daemon's resident memory), and the plain pass must read exactly what the located one reads:
the composer streams every collection outside an anchor, so a child the builder skips (a
duplicate key's value, a non-scalar key, a merge key's value) must be read whole before the
next one, or the parser would lose its place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cfgtest_drivers import DRIVERS
from cfgtest_helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.config import load_and_check
from edgegw.yamlsrc import ConfigError, load_yaml


def _plain(node: Any) -> Any:
    """The data a located tree stands for (its values, without places)."""
    entries = getattr(node, "entries", None)
    if entries is not None:
        return {key: _plain(child) for key, (_kloc, child) in entries.items()}
    items = getattr(node, "items", None)
    if isinstance(items, list):
        return [_plain(item) for item in items]
    return node.value


def test_a_valid_config_never_builds_the_located_tree() -> None:
    cfg = load_and_check(str(FIXTURES / "good" / "main.yaml"), DRIVERS, env={})
    assert cfg.source is not None and not cfg.source.located
    # asked for a place, it builds the tree from the same texts, once
    assert cfg.source.value(("devices", 0, "id")).line > 1
    assert cfg.source.located


TRICKY = {
    # a merge key's inline (not anchored) mapping is built after the explicit keys
    "inline_merge.yaml": "a: 1\nb:\n  <<: {x: 1, y: [1, 2]}\n  x: 2\nc: [3]\n",
    "anchors.yaml": "a: &A {p: [1, 2], q: {r: 3}}\nb:\n  <<: [*A, {s: 4}]\n  t: 5\nc: *A\n"
    "d:\n  - &n {x: 1}\n  - *n\n  - <<: *n\n    y: 2\n  - {<<: *n, x: 3}\n",
    "nested.yaml": "l: [[[[[[1]]]]], {a: {b: {c: [2, {d: 3}]}}}]\nm: {n: [4, 5]}\no: 6\n",
    "include_main.yaml": "include: [inline_merge.yaml, anchors.yaml]\nb: {t: 6}\nz: [9]\n",
    "env.yaml": "a: [1, 2]\nb: ${NAME}\nc: '${PORT}'\nd: ${PORT}\ne: {f: [x, {g: y}]}\n",
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_the_plain_pass_reads_what_the_located_tree_holds(tmp_path: Path, name: str) -> None:
    for file, text in TRICKY.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    loaded = load_yaml(tmp_path / name, env={"NAME": "x", "PORT": "1883"})
    assert not loaded.source.located
    loaded.source.value(())  # builds the located tree
    assert loaded.source.tree is not None
    assert _plain(loaded.source.tree) == loaded.data


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        # the duplicate's nested value is skipped whole: the keys after it are still read
        ("a: {x: [1, {y: 2}]}\na: {z: [3]}\nb: {c: [4]}\nb2: ${NOPE}\n", [(2, 1), (4, 5)],
         ["duplicate key 'a' (first defined at line 1)", "environment variable NOPE is not set"]),
        # a non-scalar key and its value are skipped whole
        ("? [a, {b: 1}]\n: {c: [2]}\nd: ${NOPE}\n", [(1, 3), (3, 4)],
         ["mapping keys must be plain scalars", "environment variable NOPE is not set"]),
        # an issue found before a syntax error is not reported beside it (as if composed first)
        ("a: ${NOPE}\nb: [1, 2\n", [(3, 1)], ["YAML syntax error: did not find expected ','"]),
    ],
)
def test_issues_of_a_streamed_document_are_located(
    tmp_path: Path, text: str, where: list[tuple[int, int]], message: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml(path, env={})
    issues = err.value.issues
    assert [(i.line, i.col) for i in issues] == where
    assert all(i.message.startswith(m) for i, m in zip(issues, message, strict=True))


def test_places_come_from_the_texts_read_at_load_time(tmp_path: Path) -> None:
    """The located pass reads the texts the plain pass read, not the files as they are now."""
    path = tmp_path / "main.yaml"
    path.write_text("a: 1\nb: {c: 2}\n", encoding="utf-8")
    loaded = load_yaml(path, env={})
    path.write_text("\n\n\n\nb: {c: 2}\na: 1\n", encoding="utf-8")
    assert loaded.source.value(("b", "c")).line == 2
    assert loaded.source.key(("a",)).line == 1


_KEYS = st.text(alphabet="abcxyz_", min_size=1, max_size=4)
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text("ab c:#-", max_size=6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
_DOCS = st.dictionaries(
    _KEYS,
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
        max_leaves=25,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_DOCS, st.booleans())
def test_any_document_reads_the_same_in_both_passes(
    tmp_path: Path, doc: dict[str, Any], flow: bool
) -> None:
    """Random nested documents (block and flow style): the plain pass gives what PyYAML gives,
    and the located tree built afterwards holds the same data."""
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(doc, default_flow_style=flow), encoding="utf-8")
    loaded = load_yaml(path, env={})
    assert loaded.data == yaml.safe_load(path.read_text(encoding="utf-8"))
    loaded.source.value(())
    assert _plain(loaded.source.tree) == loaded.data
