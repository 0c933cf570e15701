"""Marked YAML loading: plain Python data plus the file:line:col of every value and key.

The config loader needs to point at the exact place of a mistake, also after ``include:`` files
were merged. PyYAML's ``compose`` gives nodes with marks; this module turns them into plain data
(``dict``/``list``/scalars) and a ``SourceMap`` from path tuples such as
``("devices", 2, "options", "address")`` to ``Loc(file, line, col)`` (1-based).

Features and invariants:
- ``include:`` at the top of a file (a path or a list of paths, relative to the including file,
  glob patterns allowed) is loaded first; then the including file is merged on top. Merging is
  deep: mappings merge key by key (later wins), lists concatenate, anything else is replaced.
  An include cycle is an error located at the ``include:`` entry that closes it.
- ``${NAME}`` and ``${NAME:-default}`` are substituted in scalar values (not in keys); the
  default is used when NAME is unset or empty; ``$${`` is a literal ``${``. An unquoted scalar
  is re-typed after substitution (``port: ${PORT}`` gives an int); quote it to keep a string.
  An unset variable without a default is an error located at the scalar.
- Duplicate mapping keys are errors (PyYAML would silently keep the last one), located at the
  second key and naming the first one's line. YAML merge keys (``<<: *anchor``) work.
- YAML syntax errors, unreadable files and non-UTF-8 bytes are reported as ``ConfigIssue``s
  with a location; alias bombs and deep include chains are bounded. Nothing raises anything
  but ``ConfigError``.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import Resolver

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "LoadedYaml",
    "Loc",
    "PathT",
    "SourceMap",
    "format_path",
    "load_yaml",
]

PathT = tuple[str | int, ...]

_YamlLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 200_000  # bounds alias expansion ("billion laughs")
#: a config file (or include) larger than this is refused before it is read: parsing 50 MB of
#: YAML took 1 GB of RSS before "document too large" (issue 9 #10); real configs are < 100 KB
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_INCLUDE_DEPTH = 16
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)
_GLOB_CHARS = re.compile(r"[*?\[]")


# --------------------------------------------------------------------------- issues
@dataclass(frozen=True, slots=True)
class Loc:
    """A place in a config file; ``line``/``col`` are 1-based, 0 when unknown."""

    file: str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration, formatted ``file:line:col: dotted.path: message``."""

    file: str
    line: int
    col: int
    path: str
    message: str
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"

    @classmethod
    def at(
        cls,
        loc: Loc,
        path: PathT | str,
        message: str,
        hint: str | None = None,
        severity: Literal["error", "warning"] = "error",
    ) -> ConfigIssue:
        dotted = path if isinstance(path, str) else format_path(path)
        return cls(loc.file, loc.line, loc.col, dotted, message, hint, severity)

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}:{self.col}" if self.line else self.file]
        if self.path:
            parts.append(self.path)
        if self.severity == "warning":
            parts.append("warning")
        parts.append(self.message)
        text = ": ".join(parts)
        return f"{text} (hint: {self.hint})" if self.hint else text

    @property
    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.line, self.col, self.path)


class ConfigError(Exception):
    """The configuration is not usable; ``issues`` says every reason found, with locations."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")


def format_path(path: PathT) -> str:
    """``("devices", 2, "options", "address")`` -> ``devices.2.options.address``."""
    return ".".join(str(part) for part in path)


# --------------------------------------------------------------------------- source map
@dataclass
class SourceMap:
    """Where every value (and every mapping key) of the loaded data came from.

    Backed by a located tree (a lookup walks the path): a second structure keyed by path
    tuples would double its size. ``load_yaml`` builds the data without places and gives a
    ``rebuild`` that loads the same texts again with them, on the first lookup only: a config
    without issues never builds the tree, whose peak would stay in the daemon's resident memory
    (~1.4 KB per device point; docs/performance.md, section 3)."""

    root: Loc
    tree: _Node | None = None
    rebuild: Callable[[], _Node] | None = field(default=None, repr=False)

    @property
    def located(self) -> bool:
        """True once the located tree exists (built by the loader or by a first lookup)."""
        return self.tree is not None

    def _walk(self, path: PathT) -> tuple[Loc, int, _Node | None]:
        """(the deepest existing value's place, how many parts matched, its parent node)."""
        if self.tree is None and self.rebuild is not None:
            self.tree, self.rebuild = self.rebuild(), None
        node = self.tree
        if node is None:
            return self.root, 0, None
        parent: _Node | None = None
        for n, part in enumerate(path):
            child = _child(node, part)
            if child is None:
                return node.loc, n, parent
            parent, node = node, child
        return node.loc, len(path), parent

    def value(self, path: PathT) -> Loc:
        """The value at ``path``, or the nearest enclosing value that exists."""
        return self._walk(path)[0]

    def key(self, path: PathT) -> Loc:
        """The key that introduced ``path`` (falls back to the value's place)."""
        loc, matched, parent = self._walk(path)
        if path and matched == len(path) and isinstance(parent, _Map):
            return parent.entries[path[-1]][0]
        return loc

    def resolve(self, dotted: str, data: Any) -> PathT:
        """Turn ``rules[0].when`` or ``rules.0.when`` into a path tuple, guided by ``data``.

        Mapping keys containing dots (``buses: {"rs485.0": ...}``) are matched longest first.
        """
        tokens = [i if i else n for i, n in re.findall(r"\[(\d+)\]|([^.\[\]]+)", dotted)]
        path: list[str | int] = []
        node: Any = data
        pos = 0
        while pos < len(tokens):
            tok = tokens[pos]
            if isinstance(node, list) and tok.isdigit():
                path.append(int(tok))
                node = node[int(tok)] if int(tok) < len(node) else None
                pos += 1
                continue
            if isinstance(node, dict):
                for end in range(len(tokens), pos, -1):
                    candidate = ".".join(tokens[pos:end])
                    if candidate in node:
                        path.append(candidate)
                        node = node[candidate]
                        pos = end
                        break
                else:
                    path.append(tok)
                    node = None
                    pos += 1
                continue
            path.append(int(tok) if tok.isdigit() else tok)
            node = None
            pos += 1
        return tuple(path)


@dataclass
class LoadedYaml:
    """Merged plain data of a config file and its includes, with the source map."""

    data: dict[str, Any]
    source: SourceMap
    files: list[str]


# --------------------------------------------------------------------------- composing
# PyYAML's ``compose`` keeps a ``Node`` and two ``Mark`` objects (all with a ``__dict__``) for
# every value until the load ends: ~3.3 KB per device point, the largest part of the daemon's
# start-up peak (and a peak stays resident: freed memory is not returned to the system). This
# composer reads the same parser events and makes a slotted node with its tag, value and start
# line/column only; the rules are PyYAML's (``yaml.composer``): tags resolved the same way,
# anchors registered before their children (so a recursive alias is seen by ``build``), the same
# errors for an undefined alias, a duplicate anchor and a second document.
#
# Only an anchored node (and what is inside it) is composed whole, as an alias may visit it
# again. Any other collection is streamed: its ``value`` is an iterator that composes each
# child from the parser when the builder asks for it, so the composed nodes of a document never
# exist all at once (~1.2 KB per device point otherwise). The builder consumes children in
# document order; a child it skips (an issue, a merge key's value) is read whole before the
# next one (``_drain``), so the parser never loses its place.
@dataclass(slots=True)
class _YScalar:
    tag: str
    value: str
    style: str | None
    line: int  # 0-based, as in yaml.Mark
    col: int


@dataclass(slots=True)
class _YSeq:
    tag: str
    value: list[_YNode] | Iterator[_YNode]  # an iterator: streamed (not ``shared``)
    line: int
    col: int
    shared: bool = False  # anchored or inside an anchored node: an alias may visit it again


@dataclass(slots=True)
class _YMap:
    tag: str
    value: list[tuple[_YNode, _YNode]] | Iterator[tuple[_YNode, _YNode]]
    line: int
    col: int
    shared: bool = False


_YNode = _YScalar | _YSeq | _YMap
_T = TypeVar("_T")


def _children(node: _YSeq | _YMap, items: list[_T] | Iterator[_T]) -> Iterator[_T]:
    """``items`` (the node's ``value``) in order: streamed from the parser, or the list of an
    anchored node (visited again by each alias) or of a drained one."""
    yield from list(items) if node.shared else items


def _drain(node: _YNode) -> _YNode:
    """Compose the rest of a streamed node whole (its children drain each other in turn)."""
    if isinstance(node, _YSeq | _YMap) and not isinstance(node.value, list):
        node.value = list(node.value)  # type: ignore[assignment]
    return node


def _mark(name: str, line: int, col: int) -> yaml.Mark:
    return yaml.Mark(name, 0, line, col, None, None)


class _Composer:
    def __init__(self, text: str) -> None:
        self.parser = _YamlLoader(text)
        self.anchors: dict[str, _YNode] = {}
        self.in_anchor = 0  # depth of anchored nodes around the node being composed
        #: one str object per distinct scalar text: the loaded data keeps them (the devices'
        #: raw options live as long as the daemon), and a device list repeats its keys and
        #: most of its values (``name``, ``type: uint16``) once per point
        self.texts: dict[str, str] = {}

    def compose(self) -> _YNode | None:
        """The single document's root node (``None`` for an empty stream); ``finish`` after
        the root is built (its streamed children are read while it is built)."""
        parser = self.parser
        parser.get_event()  # StreamStart
        if parser.check_event(yaml.StreamEndEvent):
            return None
        parser.get_event()  # DocumentStart
        return self.node()

    def finish(self, root: _YNode) -> None:
        """Read the document's end: a second document is an error."""
        parser = self.parser
        _drain(root)
        parser.get_event()  # DocumentEnd
        if not parser.check_event(yaml.StreamEndEvent):
            event = parser.get_event()
            raise ComposerError(
                "expected a single document in the stream",
                _mark("<config>", root.line, root.col),
                "but found another document",
                event.start_mark,
            )

    def _stream_items(self) -> Iterator[_YNode]:
        parser = self.parser
        child: _YNode | None = None
        while True:
            if child is not None:
                _drain(child)  # whatever the builder left unread of the previous child
            if parser.check_event(yaml.SequenceEndEvent):
                break
            child = self.node()
            yield child
        parser.get_event()

    def _stream_pairs(self) -> Iterator[tuple[_YNode, _YNode]]:
        parser = self.parser
        value: _YNode | None = None
        while True:
            if value is not None:
                _drain(value)
            if parser.check_event(yaml.MappingEndEvent):
                break
            key = _drain(self.node())
            value = self.node()
            yield key, value
        parser.get_event()

    def node(self) -> _YNode:
        parser = self.parser
        if parser.check_event(yaml.AliasEvent):
            event = parser.get_event()
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, "found undefined alias", event.start_mark)
            return self.anchors[event.anchor]
        event = parser.get_event()
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            first = self.anchors[anchor]
            raise ComposerError(
                "found duplicate anchor; first occurrence",
                _mark("<config>", first.line, first.col),
                "second occurrence",
                event.start_mark,
            )
        mark = event.start_mark
        tag = event.tag
        made: _YNode
        if isinstance(event, yaml.ScalarEvent):
            if tag is None or tag == "!":
                tag = parser.resolve(yaml.ScalarNode, event.value, event.implicit)
            text = self.texts.setdefault(event.value, event.value)
            made = _YScalar(tag, text, event.style, mark.line, mark.column)
            if anchor is not None:
                self.anchors[anchor] = made
            return made
        shared = bool(anchor or self.in_anchor)
        if isinstance(event, yaml.SequenceStartEvent):
            if tag is None or tag == "!":
                tag = parser.resolve(yaml.SequenceNode, None, event.implicit)
            if not shared:
                return _YSeq(tag, self._stream_items(), mark.line, mark.column)
            items: list[_YNode] = []
            made = _YSeq(tag, items, mark.line, mark.column, True)
            if anchor is not None:
                self.anchors[anchor] = made
                self.in_anchor += 1
            while not parser.check_event(yaml.SequenceEndEvent):
                items.append(self.node())
            parser.get_event()
            if anchor is not None:
                self.in_anchor -= 1
            return made
        if tag is None or tag == "!":
            tag = parser.resolve(yaml.MappingNode, None, event.implicit)
        if not shared:
            return _YMap(tag, self._stream_pairs(), mark.line, mark.column)
        pairs: list[tuple[_YNode, _YNode]] = []
        made = _YMap(tag, pairs, mark.line, mark.column, True)
        if anchor is not None:
            self.anchors[anchor] = made
            self.in_anchor += 1
        while not parser.check_event(yaml.MappingEndEvent):
            key = self.node()
            pairs.append((key, self.node()))
        parser.get_event()
        if anchor is not None:
            self.in_anchor -= 1
        return made


# --------------------------------------------------------------------------- located tree
@dataclass(slots=True)
class _Scalar:
    value: Any
    loc: Loc


@dataclass(slots=True)
class _Seq:
    items: list[_Node]
    loc: Loc


@dataclass(slots=True)
class _Map:
    entries: dict[Any, tuple[Loc, _Node]]
    loc: Loc


_Node = _Scalar | _Seq | _Map


class _Abort(Exception):
    """Stop loading now (the issue is already recorded)."""


def _merge(base: Any, over: Any) -> Any:
    """Deep merge of two loaded values, located nodes or plain data (the first pass)."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(merged[key], value) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(over, list):
        return base + over
    if isinstance(base, _Map) and isinstance(over, _Map):
        entries = dict(base.entries)
        for key, (kloc, value) in over.entries.items():
            if key in entries:
                entries[key] = (kloc, _merge(entries[key][1], value))
            else:
                entries[key] = (kloc, value)
        return _Map(entries, over.loc)
    if isinstance(base, _Seq) and isinstance(over, _Seq):
        return _Seq(base.items + over.items, over.loc)
    return over


def _child(node: _Node, part: Any) -> _Node | None:
    """The value under ``node`` at one path part (a mapping key or a list index), if any."""
    if isinstance(node, _Map):
        try:
            entry = node.entries.get(part)
        except TypeError:  # an unhashable part names nothing
            return None
        return entry[1] if entry is not None else None
    if isinstance(node, _Seq) and isinstance(part, int) and 0 <= part < len(node.items):
        return node.items[part]
    return None


#: the place of everything in the first pass: it records no places (``located`` False)
_UNPLACED = Loc("", 0, 0)


def _loc_of(node: Any) -> Loc:
    return node.loc if isinstance(node, _Scalar | _Seq | _Map) else _UNPLACED


# --------------------------------------------------------------------------- loader
class _FileLoader:
    """Loads a file and its includes into a located tree (``located``) or into plain data.

    The first pass is plain: a config file is loaded at every start and is usually right, and
    the located tree costs ~1.4 KB per device point (a ``Loc`` per key and value, a node per
    value) against ~0.2 KB for the data. When the plain pass records an issue, or the source
    map is first asked for a place, the same texts (``texts``, filled by the first pass) are
    loaded again, located. Both passes run the same code; only the node makers differ."""

    def __init__(
        self, env: Mapping[str, str], *, located: bool, texts: dict[Path, bytes]
    ) -> None:
        self.env = env
        self.located = located
        self.texts = texts
        self.issues: list[ConfigIssue] = []
        self.files: list[str] = []
        self.budget = MAX_NODES
        self.constructor = SafeConstructor()
        self.resolver = Resolver()
        self.active: set[int] = set()

    def run(self, display: str) -> Any:
        """The merged root (a ``_Map``, or a ``dict`` in the plain pass); issues in ``issues``."""
        try:
            return self.load_file(Path(display), display, (), None)
        except _Abort:
            pass
        except RecursionError:
            self.issues.append(ConfigIssue.at(Loc(display, 0, 0), (), "YAML nested too deeply"))
        return self._map({}, Loc(display, 1, 1))

    # ----------------------------------------------------------------- node makers
    def _map(self, entries: dict[Any, Any], loc: Loc) -> Any:
        return _Map(entries, loc) if self.located else entries

    def _read(self, path: Path) -> bytes:
        raw = self.texts.get(path)
        if raw is None:
            with path.open("rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
            self.texts[path] = raw
        return raw

    # ----------------------------------------------------------------- files
    def load_file(self, path: Path, display: str, stack: tuple[Path, ...], via: Loc | None) -> Any:
        empty = self._map({}, Loc(display, 1, 1))
        try:
            raw = self._read(path)
        except OSError as exc:
            where = via or Loc(display, 0, 0)
            reason = exc.strerror or str(exc)
            self.issues.append(ConfigIssue.at(where, (), f"cannot read {display}: {reason}"))
            return empty
        if len(raw) > MAX_FILE_BYTES:
            self.issues.append(
                ConfigIssue.at(
                    via or Loc(display, 0, 0),
                    (),
                    f"{display} is too large (over {MAX_FILE_BYTES // (1024 * 1024)} MiB): not a "
                    "config file? Configs are a few KB; split big device lists with `include`",
                )
            )
            return empty
        self.files.append(display)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            self.issues.append(
                ConfigIssue.at(
                    Loc(display, line, col), (), f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})"
                )
            )
            return empty
        composer = _Composer(text)
        before = len(self.issues)
        try:
            root_node = composer.compose()
            if root_node is None:
                return empty
            root = self.build(root_node, display, ())
            composer.finish(root_node)
        except yaml.MarkedYAMLError as exc:
            # as if composed first: a file that does not parse reports that alone
            del self.issues[before:]
            self.issues.append(self._syntax_issue(exc, display))
            return empty
        except yaml.YAMLError as exc:  # ReaderError (control characters) has no mark
            del self.issues[before:]
            self.issues.append(self._reader_issue(exc, display, text))
            return empty
        finally:
            composer.parser.dispose()
        del root_node  # the composed root: only the built one is needed from here on
        if not isinstance(root, _Map | dict):
            self.issues.append(
                ConfigIssue.at(
                    _loc_of(root),
                    (),
                    "the top level of a config file must be a mapping of sections",
                    "start with e.g. 'gateway:' and 'devices:'",
                )
            )
            return empty
        included: Any = self._map({}, _loc_of(root))
        inc = (root.entries if isinstance(root, _Map) else root).pop("include", None)
        if inc is not None:
            for target, loc in self._include_targets(inc[1] if self.located else inc, path,
                                                     display):
                included = _merge(included, self._load_include(target, loc, path, stack))
        return _merge(included, root)

    def _include_targets(
        self, node: Any, path: Path, display: str
    ) -> list[tuple[tuple[Path, str], Loc]]:
        is_list = isinstance(node, _Seq | list)
        entries: list[Any]
        if isinstance(node, _Seq):
            entries = node.items
        elif isinstance(node, list):
            entries = node
        elif node is None or (isinstance(node, _Scalar) and node.value is None):
            entries = []
        else:
            entries = [node]
        targets: list[tuple[tuple[Path, str], Loc]] = []
        for i, entry in enumerate(entries):
            ipath: PathT = ("include", i) if is_list else ("include",)
            rel = entry.value if isinstance(entry, _Scalar) else entry
            if not isinstance(rel, str) or not rel:
                self.issues.append(
                    ConfigIssue.at(_loc_of(entry), ipath, "an include entry must be a file path")
                )
                continue
            base_dir = path.parent
            display_dir = os.path.dirname(display)
            if _GLOB_CHARS.search(rel):
                for match in sorted(glob.glob(str(base_dir / rel))):
                    shown = os.path.normpath(
                        os.path.join(display_dir, os.path.relpath(match, base_dir))
                    )
                    targets.append(((Path(match), shown), _loc_of(entry)))
            else:
                shown = os.path.normpath(os.path.join(display_dir, rel))
                targets.append(((base_dir / rel, shown), _loc_of(entry)))
        return targets

    def _load_include(
        self, target: tuple[Path, str], loc: Loc, parent: Path, stack: tuple[Path, ...]
    ) -> Any:
        path, display = target
        real = path.resolve()
        chain = (*stack, parent.resolve())
        if real in chain:
            names = [p.name for p in chain[chain.index(real) :]] + [real.name]
            self.issues.append(
                ConfigIssue.at(
                    loc,
                    ("include",),
                    f"include cycle: {' -> '.join(names)}",
                    "remove one of these includes",
                )
            )
            return self._map({}, loc)
        if len(chain) > MAX_INCLUDE_DEPTH:
            self.issues.append(
                ConfigIssue.at(
                    loc, ("include",), f"includes nested deeper than {MAX_INCLUDE_DEPTH}"
                )
            )
            return self._map({}, loc)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            self.issues.append(
                ConfigIssue.at(
                    loc,
                    ("include",),
                    f"included file {display} {what}",
                    f"paths are relative to the including file's folder ({parent.parent})",
                )
            )
            return self._map({}, loc)
        return self.load_file(path, display, chain, loc)

    @staticmethod
    def _syntax_issue(exc: yaml.MarkedYAMLError, display: str) -> ConfigIssue:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(display, mark.line + 1, mark.column + 1) if mark else Loc(display, 0, 0)
        message = f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
        hint = None
        if exc.context and exc.context_mark is not None and exc.problem:
            hint = f"{exc.context} started at line {exc.context_mark.line + 1}"
        return ConfigIssue.at(loc, (), message, hint)

    @staticmethod
    def _reader_issue(exc: yaml.YAMLError, display: str, text: str) -> ConfigIssue:
        pos = getattr(exc, "position", None)
        if isinstance(pos, int):
            line = text.count("\n", 0, pos) + 1
            col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        else:
            line = col = 0
        detail = str(exc).splitlines()[0]
        return ConfigIssue.at(Loc(display, line, col), (), f"unreadable YAML: {detail}")

    # ----------------------------------------------------------------- nodes
    def _loc(self, node: _YNode, display: str) -> Loc:
        if not self.located:
            return _UNPLACED
        return Loc(display, node.line + 1, node.col + 1)

    def build(self, node: _YNode, display: str, path: PathT) -> Any:
        """The value of ``node``: a located node, or plain data in the plain pass."""
        self.budget -= 1
        loc = self._loc(node, display)
        if self.budget < 0:
            self.issues.append(
                ConfigIssue.at(
                    loc, path, f"document too large (more than {MAX_NODES} values after aliases)"
                )
            )
            raise _Abort
        if id(node) in self.active:
            self.issues.append(ConfigIssue.at(loc, path, "recursive YAML alias"))
            return _Scalar(None, loc) if self.located else None
        if isinstance(node, _YScalar):
            value = self._scalar(node, display, path)
            return _Scalar(value, loc) if self.located else value
        self.active.add(id(node))
        try:
            if isinstance(node, _YSeq):
                self._check_tag(node, "tag:yaml.org,2002:seq", display, path)
                children = _children(node, node.value)
                items = [self.build(n, display, (*path, i)) for i, n in enumerate(children)]
                return _Seq(items, loc) if self.located else items
            assert isinstance(node, _YMap)
            self._check_tag(node, "tag:yaml.org,2002:map", display, path)
            return self._mapping(node, display, path, loc)
        finally:
            self.active.discard(id(node))

    def _check_tag(self, node: _YNode, expected: str, display: str, path: PathT) -> None:
        if node.tag != expected:
            self.issues.append(
                ConfigIssue.at(self._loc(node, display), path, f"unsupported YAML tag '{node.tag}'")
            )

    def _mapping(self, node: _YMap, display: str, path: PathT, loc: Loc) -> Any:
        # located: key -> (the key's place, node); plain pass: key -> value
        entries: dict[Any, Any] = {}
        merges: list[_YNode] = []
        for knode, vnode in _children(node, node.value):
            if knode.tag == _MERGE_TAG:
                merges.append(_drain(vnode))  # built after the explicit keys
                continue
            kloc = self._loc(knode, display)
            if not isinstance(knode, _YScalar):
                self.issues.append(ConfigIssue.at(kloc, path, "mapping keys must be plain scalars"))
                continue
            key = self._construct(knode, display, path)
            if key in entries:
                first = entries[key][0] if self.located else _UNPLACED
                where = f"line {first.line}" if first.file == display else str(first)
                self.issues.append(
                    ConfigIssue.at(
                        kloc,
                        (*path, key),
                        f"duplicate key '{key}' (first defined at {where})",
                        "YAML keeps only one of them: remove or rename one",
                    )
                )
                continue
            value = self.build(vnode, display, (*path, key))
            entries[key] = (kloc, value) if self.located else value
        for mnode in merges:  # YAML merge keys: explicit keys win, earlier merges win
            sources = mnode.value if isinstance(mnode, _YSeq) else [mnode]
            for src in sources:
                merged = self.build(src, display, path)
                if not isinstance(merged, _Map | dict):
                    self.issues.append(
                        ConfigIssue.at(
                            _loc_of(merged), path, "'<<' must merge a mapping or a list of mappings"
                        )
                    )
                    continue
                for key, entry in (merged.entries if isinstance(merged, _Map) else merged).items():
                    entries.setdefault(key, entry)
        return self._map(entries, loc)

    def _construct(self, node: _YScalar, display: str, path: PathT) -> Any:
        ynode = yaml.ScalarNode(node.tag, node.value, None, None, node.style)
        try:
            value = self.constructor.construct_object(ynode, deep=True)
        except ConstructorError as exc:
            self.issues.append(
                ConfigIssue.at(self._loc(node, display), path, f"cannot read value: {exc.problem}")
            )
            return None
        # the constructor remembers every node it built (for aliases of whole documents): a
        # scalar is cheap to build again, and the memo would keep them all until the load ends
        self.constructor.constructed_objects.pop(ynode, None)
        return value

    def _scalar(self, node: _YScalar, display: str, path: PathT) -> Any:
        if node.tag != _STR_TAG or "${" not in node.value:
            return self._construct(node, display, path)
        text = self._substitute(node.value, self._loc(node, display), path)
        if node.style in (None, ""):  # plain scalar: type it as if written literally
            tag = self.resolver.resolve(yaml.ScalarNode, text, (True, False))
        else:
            tag = _STR_TAG
        return self._construct(_YScalar(tag, text, node.style, node.line, node.col), display, path)

    def _substitute(self, text: str, loc: Loc, path: PathT) -> str:
        def replace(match: re.Match[str]) -> str:
            whole = match.group(0)
            if whole == "$${":
                return "${"
            inner = match.group(1)
            parsed = _ENV_NAME.match(inner) if inner is not None else None
            if parsed is None:
                self.issues.append(
                    ConfigIssue.at(
                        loc,
                        path,
                        f"malformed variable reference '{whole}'",
                        "use ${NAME} or ${NAME:-default}; write $${ for a literal ${",
                    )
                )
                return ""
            name, default = parsed.group(1), parsed.group(2)
            value = self.env.get(name)
            if value:
                return value
            if default is not None:
                return default
            if value is None:
                self.issues.append(
                    ConfigIssue.at(
                        loc,
                        path,
                        f"environment variable {name} is not set",
                        f"set {name} or give a default: ${{{name}:-value}}",
                    )
                )
            return ""

        return _ENV_REF.sub(replace, text)


def load_yaml(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> LoadedYaml:
    """Load a config file with its includes; raise ``ConfigError`` with every issue found.

    The data is built without places; the source map loads the same texts (kept until the
    source map is let go) and the same environment again, located, when it is first asked for
    a place, and so does an issue of the first pass, to say where it is."""
    display = os.fspath(path)
    environ = dict(os.environ if env is None else env)
    texts: dict[Path, bytes] = {}
    loader = _FileLoader(environ, located=False, texts=texts)
    data = loader.run(display)

    def located() -> tuple[_Node, list[ConfigIssue]]:
        again = _FileLoader(environ, located=True, texts=texts)
        return again.run(display), again.issues

    if loader.issues:
        issues = located()[1] or loader.issues
        raise ConfigError(sorted(issues, key=lambda i: i.sort_key))
    return LoadedYaml(
        data, SourceMap(Loc(display, 1, 1), rebuild=lambda: located()[0]), loader.files
    )
