"""The import rules of docs/architecture.md and the "one definition" rules, checked over the AST.

Nodes of the package graph: ``edgegw`` (the SDK facade, gateway/__init__.py), each top-level
module or sub-package of gateway/ (``edgegw.protocol``, ``edgegw.runtime``, ``edgegw.config``,
...), ``edgegw.drivers`` (drivers/) and ``edgegw_cloud`` (cloud_stub/, its commands included).
Only module-level imports and function-level imports are both counted: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"gateway": "edgegw", "drivers": "edgegw.drivers", "cloud_stub": "edgegw_cloud"}

#: what each node may import (besides itself); the layering of docs/architecture.md
ALLOWED: dict[str, set[str]] = {
    "edgegw.protocol": set(),
    "edgegw.transport": set(),
    "edgegw.share": set(),  # package data only (examples, systemd units)
    "edgegw.units": set(),
    "edgegw.yamlsrc": set(),
    "edgegw.pki": {"edgegw.protocol"},
    "edgegw.model": {"edgegw.protocol"},
    "edgegw.sdk": {"edgegw.model", "edgegw.protocol", "edgegw.units"},
    "edgegw": {"edgegw.model", "edgegw.sdk"},
    "edgegw.edge": {"edgegw.model", "edgegw.protocol", "edgegw.units"},
    "edgegw.config": {
        "edgegw.edge", "edgegw.protocol", "edgegw.sdk", "edgegw.units", "edgegw.yamlsrc",
    },
    "edgegw.store": {"edgegw.model", "edgegw.protocol"},
    "edgegw.uplink": {"edgegw.pki", "edgegw.protocol", "edgegw.store", "edgegw.transport"},
    # ota: the install-from-disk verb reads the config; config releases go through device's
    # commit-confirmed transaction (built once); the trial reads the running version (root)
    "edgegw.ota": {
        "edgegw", "edgegw.config", "edgegw.device", "edgegw.model", "edgegw.pki",
        "edgegw.protocol", "edgegw.sdk",
    },
    "edgegw.device": {"edgegw.model", "edgegw.protocol", "edgegw.sdk", "edgegw.edge"},
    "edgegw.runtime": {
        "edgegw.config", "edgegw.edge", "edgegw.model", "edgegw.pki", "edgegw.protocol",
        "edgegw.sdk", "edgegw.store", "edgegw.uplink", "edgegw.ota", "edgegw.device",
    },
    "edgegw.commands": {
        "edgegw", "edgegw.config", "edgegw.edge", "edgegw.model", "edgegw.pki",
        "edgegw.protocol", "edgegw.runtime", "edgegw.sdk", "edgegw.uplink", "edgegw.units",
        "edgegw.ota", "edgegw.device",
    },
    "edgegw.cli": {"edgegw", "edgegw.protocol"},  # protocol.logfmt: --log-format
    # drivers: the public SDK only
    "edgegw.drivers": {"edgegw", "edgegw.sdk", "edgegw.model"},
    # the cloud: the protocol package and the PKI helpers only, plus the documented transport
    "edgegw_cloud": {"edgegw.protocol", "edgegw.pki", "edgegw.transport"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [p for p in rel.with_suffix("").parts[1:] if p != "__init__"]
    return ".".join([FOLDERS[rel.parts[0]], *parts])


def _exists(module: str) -> bool:
    for folder, pkg in sorted(FOLDERS.items(), key=lambda kv: -len(kv[1])):
        if module == pkg or module.startswith(pkg + "."):
            rest = module[len(pkg) :].lstrip(".").split(".") if module != pkg else []
            base = ROOT / folder / Path(*rest) if rest else ROOT / folder
            return base.with_suffix(".py").exists() or (base / "__init__.py").exists()
    return False


def node_of(module: str) -> str | None:
    p = module.split(".")
    if p[0] == "edgegw_cloud":
        return "edgegw_cloud"
    if p[0] != "edgegw":
        return None
    if len(p) == 1:
        return "edgegw"
    if p[1] == "drivers":
        return "edgegw.drivers"
    return f"edgegw.{p[1]}"


def sources() -> Iterator[tuple[Path, str, ast.Module]]:
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "build" in path.relative_to(ROOT).parts:
                continue
            yield path, _module_name(path), ast.parse(path.read_text(), str(path))


def imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for nd in ast.walk(tree):
        if isinstance(nd, ast.Import):
            for a in nd.names:
                yield nd.lineno, a.name
        elif isinstance(nd, ast.ImportFrom) and nd.module and nd.level == 0:
            for a in nd.names:
                sub = f"{nd.module}.{a.name}"
                yield nd.lineno, sub if _exists(sub) else nd.module


def edges() -> dict[str, dict[str, list[str]]]:
    """node -> imported node -> ["file:line", ...]"""
    out: dict[str, dict[str, list[str]]] = {}
    for path, module, tree in sources():
        src = node_of(module)
        assert src is not None
        for line, target in imports(tree):
            dst = node_of(target)
            if dst is not None and dst != src:
                where = f"{path.relative_to(ROOT)}:{line}"
                out.setdefault(src, {}).setdefault(dst, []).append(where)
    return out


def test_every_package_is_listed_in_the_rules() -> None:
    nodes = {node_of(m) for _, m, _ in sources()}
    assert nodes <= set(ALLOWED), f"add {sorted(nodes - set(ALLOWED))} to ALLOWED and the docs"


def test_import_rules() -> None:
    broken = [
        f"{src} -> {dst} ({', '.join(where[:3])})"
        for src, targets in edges().items()
        for dst, where in targets.items()
        if dst not in ALLOWED[src]
    ]
    assert not broken, "imports outside docs/architecture.md's rules:\n" + "\n".join(broken)


def test_no_package_cycle() -> None:
    graph = {src: set(t) for src, t in edges().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycle = [*stack[stack.index(m) :], m]
                pytest.fail("package cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_every_edgegw_import_exists() -> None:
    """An import of a moved or removed module fails here, statically (not only when run)."""
    stale = []
    for path, _module, tree in sources():
        for nd in ast.walk(tree):
            if isinstance(nd, ast.ImportFrom) and nd.module and nd.level == 0:
                names = [nd.module]
            elif isinstance(nd, ast.Import):
                names = [a.name for a in nd.names]
            else:
                continue
            for name in names:
                if node_of(name) is not None and not _exists(name):
                    stale.append(f"{path.relative_to(ROOT)}:{nd.lineno}: {name}")
    assert not stale, f"imports of modules that do not exist: {stale}"


def test_the_rules_can_fail() -> None:
    """The checker sees a forbidden import (guards against a checker that sees nothing)."""
    tree = ast.parse("from edgegw.runtime.pipeline import Batcher\nimport edgegw_cloud.store\n")
    found = {node_of(t) for _, t in imports(tree)}
    assert found == {"edgegw.runtime", "edgegw_cloud"}
    assert "edgegw.runtime" not in ALLOWED["edgegw.edge"]
    assert "edgegw.uplink" not in ALLOWED["edgegw_cloud"]


def test_function_level_imports_are_only_commented_lazy() -> None:
    """Lazy imports hide the dependency graph: only optional extras, heavy dependencies and
    subsystems a config may leave off (docs/architecture.md), each commented ``# lazy: why``.
    The import rules above count them like top-level imports."""
    bad = []
    for path, _module, tree in sources():
        lines = path.read_text().splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for nd in ast.walk(fn):
                if not isinstance(nd, ast.Import | ast.ImportFrom):
                    continue
                relative = isinstance(nd, ast.ImportFrom) and nd.level > 0
                if relative or "# lazy:" not in lines[nd.lineno - 1]:
                    bad.append(f"{path.relative_to(ROOT)}:{nd.lineno}: {lines[nd.lineno - 1]}")
    assert not bad, "function-level imports (move to the top, or comment `# lazy: why`):\n" + (
        "\n".join(bad)
    )


# --------------------------------------------------------------------------- one definition
def _product_files() -> Iterator[tuple[Path, ast.Module]]:
    for path, _m, tree in sources():
        yield path, tree


def _string_constants(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """String constants, docstrings left out (prose may name files and topics)."""
    docstrings: set[int] = set()
    for nd in ast.walk(tree):
        if isinstance(nd, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = nd.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for nd in ast.walk(tree):
        if isinstance(nd, ast.Constant) and isinstance(nd.value, str) and id(nd) not in docstrings:
            yield nd.lineno, nd.value


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_broker_urls_are_parsed_only_by_the_protocol_package() -> None:
    owner = "gateway/protocol/broker_url.py"
    users = []
    for path, tree in _product_files():
        if _rel(path) == owner or _rel(path).startswith("drivers/"):
            continue  # drivers parse their own device URLs (rtsp://, coap://), not broker URLs
        for line, name in imports(tree):
            if name in ("urllib.parse", "urllib.parse.urlsplit", "urllib.parse.urlparse"):
                users.append(f"{_rel(path)}:{line}")
        for nd in ast.walk(tree):
            if isinstance(nd, ast.Attribute) and nd.attr in ("urlsplit", "urlparse"):
                users.append(f"{_rel(path)}:{nd.lineno}")
    assert not users, f"URL parsing outside {owner}: {users}"


def test_id_grammar_has_one_definition() -> None:
    owner = "gateway/protocol/ids.py"
    pattern = re.compile(r"A-Za-z0-9\]\[A-Za-z0-9")
    found = [
        f"{_rel(p)}:{line}"
        for p, tree in _product_files()
        if _rel(p) != owner
        for line, s in _string_constants(tree)
        if pattern.search(s)
    ]
    assert not found, f"an id pattern outside {owner}: {found}"


IDENTITY_NAMES = {
    "gateway.key", "gateway.crt", "ca.crt", "ingest-ka.pub", "identity.json",
    "bootstrap.crt", "bootstrap.key",
}


def test_identity_layout_has_one_definition() -> None:
    owner = "gateway/protocol/identity.py"
    # The cloud's own data dir (cloud_stub/pki_setup.py) and its broker's TLS dir hold a ca.crt
    # and the bootstrap pair it hands out: the cloud's layout, not a gateway identity dir.
    cloud_own = {"cloud_stub/pki_setup.py": IDENTITY_NAMES, "cloud_stub/broker.py": {"ca.crt"}}
    found = [
        f"{_rel(p)}:{line}: {s!r}"
        for p, tree in _product_files()
        if _rel(p) != owner
        for line, s in _string_constants(tree)
        if s in IDENTITY_NAMES and s not in cloud_own.get(_rel(p), set())
    ]
    assert not found, f"identity file names outside {owner}: {found}"


def test_topics_have_one_definition() -> None:
    owner = "gateway/protocol/topics.py"
    topic = re.compile(r"(^|[\s/])(gw|enroll)/|/(up|down)/|\$share/")
    found = []
    for p, tree in _product_files():
        if _rel(p) == owner:
            continue
        for line, s in _string_constants(tree):
            if topic.search(s):
                found.append(f"{_rel(p)}:{line}: {s!r}")
        for nd in ast.walk(tree):  # f-strings: their literal parts
            if isinstance(nd, ast.JoinedStr):
                lit = "".join(v.value for v in nd.values if isinstance(v, ast.Constant))
                if topic.search(lit):
                    found.append(f"{_rel(p)}:{nd.lineno}: f{lit!r}")
    assert not found, f"topic strings outside {owner}: {found}"
