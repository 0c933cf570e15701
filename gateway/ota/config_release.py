"""OTA config releases -> the commit-confirmed config transaction (``edgegw.device.config_apply``).

A config release goes through the same verification as any release (signature, target, replay,
downgrade against the committed config version, payload and per-file hashes, archive paths),
then its files become a ``Bundle`` for devmgmt's ``ConfigApply``: validated with the ``edgegw
check`` checker first (refusals carry its ``file:line:col`` messages), installed with a rollback
copy, and kept only if confirmed within the time limit (built once, shared with remote config).

Invariant: ``bundle_from_release`` reads file bytes only from a payload that ``verify_payload``
accepted, and only the files the signed manifest lists.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

from edgegw.device.config_apply import Bundle, ConfigApply, Pending
from edgegw.ota.verify import Refusal, verify_payload
from edgegw.protocol.release import Manifest


class ConfigRefused(Refusal):
    """The bundle is well signed but the checker refuses it; ``messages`` are its lines."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("check_failed", "; ".join(messages[:10]))
        self.messages = messages


def bundle_from_release(payload: Path, m: Manifest, main: str = "gateway.yaml") -> Bundle:
    if m.kind != "config":
        raise Refusal("wrong_kind", f"{m.release_id} is a {m.kind} release, not config")
    verify_payload(payload, m)
    wanted = {f.path for f in m.files}
    files: dict[str, bytes] = {}
    with tarfile.open(payload, "r:") as tar:
        for member in tar:
            if member.isfile() and member.name in wanted:
                f = tar.extractfile(member)
                assert f is not None
                files[member.name] = f.read()
    if main not in files:
        yaml_files = sorted(n for n in files if n.endswith((".yaml", ".yml")))
        if len(yaml_files) != 1:
            raise Refusal("bad_bundle", f"{m.release_id} has no {main} (files: {sorted(files)})")
        main = yaml_files[0]
    return Bundle(files, main)


def apply_config_release(
    config_path: Path,
    payload: Path,
    m: Manifest,
    check_file: Callable[[Path], list[str]],
    *,
    confirm_within: float,
) -> Pending:
    """Check, then install commit-confirmed; the caller applies it and confirms or reverts."""
    bundle = bundle_from_release(payload, m)
    tx = ConfigApply(config_path)
    issues = tx.check(bundle, check_file)
    if issues:
        raise ConfigRefused(issues)
    return tx.install(bundle, m.version, confirm_within)
