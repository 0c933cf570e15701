"""The reusable commit-confirmed mechanism (edgegw.device.config_apply) on real files: install
with a rollback copy, confirm, revert (overwritten files restored, new files removed), and the
recovery the daemon runs at start (interrupted install, expired pending config)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgegw.device.config_apply import ConfigApply, Pending
from edgegw.protocol.bundle import Bundle, BundleError
from edgegw.runtime.daemon import load

GOOD = "gateway:\n  id: gw-1\n  state_dir: ./var\nmetrics:\n  enabled: false\n"
NEW = GOOD + "batch:\n  max_age: 100ms\n"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "gateway.yaml").write_text(GOOD)
    return d


def test_install_confirm_and_revert(etc: Path) -> None:
    tx = ConfigApply(etc / "gateway.yaml")
    bundle = Bundle({"gateway.yaml": NEW.encode(), "rules/extra.yaml": b"x: 1\n"})
    p = tx.install(bundle, 7, confirm_within=30)
    assert (etc / "gateway.yaml").read_text() == NEW and (etc / "rules/extra.yaml").exists()
    assert p.version == "7" and not p.installing and 29 < p.remaining_s <= 30
    with pytest.raises(BundleError, match="waiting for confirmation"):
        tx.install(bundle, 8, confirm_within=30)
    assert tx.confirm("6") is False  # another version: nothing happens
    assert tx.revert("operator said no") is not None
    assert (etc / "gateway.yaml").read_text() == GOOD
    assert not (etc / "rules/extra.yaml").exists()
    assert tx.last() is not None and tx.last()["outcome"] == "reverted"  # type: ignore[index]
    tx.install(Bundle({"gateway.yaml": NEW.encode()}), 8, confirm_within=30)
    assert tx.confirm("8") is True
    assert tx.pending() is None and tx.committed_version() == "8"
    assert (etc / "gateway.yaml").read_text() == NEW
    assert tx.revert("late") is None  # confirmed: nothing to revert


def test_bundle_names_are_confined() -> None:
    for name in ("../escape.yaml", "/etc/passwd", ".edgegw-apply/pending.json"):
        with pytest.raises(BundleError, match="must be relative"):
            Bundle({"gateway.yaml": b"", name: b""})
    with pytest.raises(BundleError, match="no main file"):
        Bundle({"other.yaml": b""})


def test_check_reports_the_checkers_lines_relative_to_the_config_folder(etc: Path) -> None:
    tx = ConfigApply(etc / "gateway.yaml")
    seen: list[Path] = []

    def checker(path: Path) -> list[str]:
        seen.append(path)
        assert path.read_text() == "bad"
        return [f"{path}:1:1: gateway: nope"]

    got = tx.check(Bundle({"gateway.yaml": b"bad"}), checker)
    assert got == ["gateway.yaml:1:1: gateway: nope"]
    assert not seen[0].exists()  # the staged copy is gone
    assert (etc / "gateway.yaml").read_text() == GOOD


def test_daemon_start_reverts_an_expired_or_interrupted_config(etc: Path) -> None:
    tx = ConfigApply(etc / "gateway.yaml")
    tx.install(Bundle({"gateway.yaml": NEW.encode()}), 3, confirm_within=60)
    assert tx.recover() == "pending"  # still within its time: kept, the timer is re-armed
    # the deadline passes while the daemon is down (e.g. the new config made it crash)
    doc = json.loads(tx.pending_file.read_text())
    doc["deadline_ms"] = int(time.time() * 1000) - 1
    tx.pending_file.write_text(json.dumps(doc))
    cfg, _drivers = load(etc / "gateway.yaml")  # what `edgegw run` does first
    assert (etc / "gateway.yaml").read_text() == GOOD and cfg.batch.max_age != 0.1
    assert tx.last()["outcome"] == "reverted"  # type: ignore[index]

    # a crash in the middle of installing: pending says "installing"
    tx.install(Bundle({"gateway.yaml": NEW.encode()}), 4, confirm_within=60)
    p = tx.pending()
    assert isinstance(p, Pending)
    doc = json.loads(tx.pending_file.read_text())
    doc["installing"] = True
    tx.pending_file.write_text(json.dumps(doc))
    assert tx.recover() == "reverted" and (etc / "gateway.yaml").read_text() == GOOD
