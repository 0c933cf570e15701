"""Release format, `edgegw-cloud ota publish|releases`, and every refusal of the gateway verifier.

Each refusal test asserts the machine-readable reason AND that nothing was written to the slots
dir (the verifier runs before any slot is created).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from edgegw import pki
from edgegw.ota import launcher
from edgegw.ota.slots import install_software
from edgegw.ota.verify import Refusal, check_chunk, check_offer, load_trusted_key, verify_payload
from edgegw.protocol.release import (
    Manifest,
    ReleaseError,
    compare_versions,
    parse_manifest,
    sign,
)
from edgegw_cloud.cli import main as cloud_main
from edgegw_cloud.ota import ReleaseStore, make_manifest, tar_file_entries
from edgegw_cloud.pki_setup import init_data_dir
from tests.ota.helpers import write_tar


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cloud")
    init_data_dir(d)
    return d


@pytest.fixture(scope="module")
def other_cloud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("other-cloud")
    init_data_dir(d)
    return d


def key_of(cloud: Path):  # type: ignore[no-untyped-def]
    return load_trusted_key(cloud / "pki" / "ota-signing.pub")


def test_versions_compare_numerically() -> None:
    assert compare_versions("1.2.10", "1.2.9") == 1
    assert compare_versions("1.2", "1.2.0") == 0
    assert compare_versions("0.9", "1.0") == -1
    with pytest.raises(ReleaseError):
        compare_versions("1.0rc1", "1.0")


def test_publish_and_list_through_the_cli(
    cloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("gateway: {id: gw1}\n")
    rc = cloud_main(
        [
            "ota",
            "publish",
            "--data-dir",
            str(cloud),
            "--kind",
            "config",
            "--name",
            "site-a",
            "--version",
            "3",
            "--targets",
            "gw1,gw2",
            str(cfg),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "config" and summary["targets"] == {"gateways": ["gw1", "gw2"]}
    rid = summary["release"]
    rel = cloud / "ota" / "releases" / rid
    raw = (rel / "manifest.json").read_bytes()
    m = check_offer(raw, (rel / "manifest.sig").read_bytes(), key_of(cloud), gateway_id="gw1")
    assert [(f.path, f.size) for f in m.files] == [("gateway.yaml", cfg.stat().st_size)]
    assert m.files[0].sha256 == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert m.created_ms > 0 and m.serial == summary["serial"]
    verify_payload(rel / "payload.tar", m)
    assert cloud_main(["ota", "releases", "--data-dir", str(cloud), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rid in [r["release"] for r in listed]
    # operator mistakes are one clear line, exit 1
    assert (
        cloud_main(
            [
                "ota",
                "publish",
                "--data-dir",
                str(cloud),
                "--kind",
                "firmware",
                "--name",
                "fw",
                "--version",
                "1",
                str(cfg),
            ]
        )
        == 1
    )
    assert "--driver" in capsys.readouterr().err


def _publish(
    cloud: Path, version: str, *, targets: dict | None = None
) -> tuple[bytes, bytes, Path]:
    with ReleaseStore(cloud) as store:
        row = store.publish(
            {"bundle.json": json.dumps({"version": version}).encode(), "wheels/x.whl": b"w" * 300},
            kind="software",
            name="edgegw",
            version=version,
            targets=targets,
            chunk_size=256,
        )
        manifest, sig = store.read(row)
    return manifest, sig, row.path / "payload.tar"


def _evil_release(
    cloud: Path, tmp: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], version: str = "9.0"
) -> tuple[Manifest, Path]:
    """A release signed with the right key whose payload tar holds ``members`` as given."""
    payload = write_tar(tmp / "evil.tar", members)
    files = tar_file_entries(payload)
    manifest = make_manifest(
        payload, files, kind="software", name="edgegw", version=version, serial=10_000
    )
    key = pki.load_private_key(cloud / "pki" / "ota-signing.key")
    raw = manifest.encode()
    m = check_offer(raw, sign(raw, key), key_of(cloud), gateway_id="gw1")  # type: ignore[arg-type]
    return m, payload


def _assert_refused_nothing_written(slots: Path, reason: str, fn) -> None:  # type: ignore[no-untyped-def]
    before = sorted(p.name for p in slots.iterdir()) if slots.exists() else []
    with pytest.raises(Refusal) as err:
        fn()
    assert err.value.reason == reason, err.value
    after = sorted(p.name for p in slots.iterdir()) if slots.exists() else []
    assert after == before


@pytest.fixture
def slots(tmp_path: Path) -> Path:
    s = tmp_path / "slots"
    s.mkdir()
    launcher.write_boot(s, {"committed": "0.1.0", "trial": None})
    return s


def test_refuses_bad_signature(cloud: Path, slots: Path) -> None:
    manifest, sig, _ = _publish(cloud, "1.0")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    _assert_refused_nothing_written(
        slots,
        "bad_signature",
        lambda: check_offer(manifest, flipped, key_of(cloud), gateway_id="gw1"),
    )
    forged = manifest.replace(b'"version":"1.0"', b'"version":"9.9"')
    _assert_refused_nothing_written(
        slots, "bad_signature", lambda: check_offer(forged, sig, key_of(cloud), gateway_id="gw1")
    )


def test_refuses_another_clouds_key(cloud: Path, other_cloud: Path, slots: Path) -> None:
    manifest, sig, _ = _publish(other_cloud, "1.0")
    _assert_refused_nothing_written(
        slots, "bad_signature", lambda: check_offer(manifest, sig, key_of(cloud), gateway_id="gw1")
    )


def test_refuses_tampered_chunk_and_tampered_payload(
    cloud: Path, slots: Path, tmp_path: Path
) -> None:
    manifest, sig, payload = _publish(cloud, "1.1")
    m = check_offer(manifest, sig, key_of(cloud), gateway_id="gw1")
    data = payload.read_bytes()
    first = data[: m.chunk_size]
    check_chunk(m, 0, first)
    bad = bytes([first[0] ^ 0xFF]) + first[1:]
    _assert_refused_nothing_written(slots, "tampered_chunk", lambda: check_chunk(m, 0, bad))
    copy = tmp_path / "payload.tar"
    copy.write_bytes(bad + data[m.chunk_size :])
    _assert_refused_nothing_written(
        slots, "tampered_payload", lambda: install_software(slots, copy, m, config=None)
    )


def test_refuses_tampered_file(cloud: Path, slots: Path, tmp_path: Path) -> None:
    """A tar whose bytes match the signed payload hash but not a file's hash cannot exist; so
    this is a manifest whose file entry is wrong while its payload hash is right."""
    m, payload = _evil_release(cloud, tmp_path, [("bundle.json", b"{}"), ("wheels/a.whl", b"a")])
    wrong = Manifest(
        **{
            **{f: getattr(m, f) for f in m.__dataclass_fields__},
            "files": (m.files[0], m.files[1].__class__("wheels/a.whl", "0" * 64, 1)),
        }
    )
    _assert_refused_nothing_written(
        slots, "tampered_file", lambda: install_software(slots, payload, wrong, config=None)
    )


def test_refuses_downgrade_and_same_version(cloud: Path, slots: Path) -> None:
    manifest, sig, _ = _publish(cloud, "0.0.9")
    _assert_refused_nothing_written(
        slots,
        "downgrade",
        lambda: check_offer(
            manifest, sig, key_of(cloud), gateway_id="gw1", installed_version="0.1.0"
        ),
    )
    manifest, sig, _ = _publish(cloud, "0.1.0")
    _assert_refused_nothing_written(
        slots,
        "downgrade",
        lambda: check_offer(
            manifest, sig, key_of(cloud), gateway_id="gw1", installed_version="0.1.0"
        ),
    )


def test_refuses_release_for_another_gateway_or_label(cloud: Path, slots: Path) -> None:
    manifest, sig, _ = _publish(cloud, "2.0", targets={"gateways": ["gw2"]})
    _assert_refused_nothing_written(
        slots, "wrong_target", lambda: check_offer(manifest, sig, key_of(cloud), gateway_id="gw1")
    )
    manifest, sig, _ = _publish(cloud, "2.1", targets={"labels": {"site": "b"}})
    _assert_refused_nothing_written(
        slots,
        "wrong_target",
        lambda: check_offer(manifest, sig, key_of(cloud), gateway_id="gw1", labels={"site": "a"}),
    )
    assert check_offer(manifest, sig, key_of(cloud), gateway_id="gw1", labels={"site": "b"})


def test_refuses_replayed_old_offer(cloud: Path, slots: Path) -> None:
    old_manifest, old_sig, _ = _publish(cloud, "3.0")
    new_manifest, new_sig, _ = _publish(cloud, "3.1")
    new = check_offer(new_manifest, new_sig, key_of(cloud), gateway_id="gw1")
    _assert_refused_nothing_written(
        slots,
        "replayed_offer",
        lambda: check_offer(
            old_manifest, old_sig, key_of(cloud), gateway_id="gw1", last_serial=new.serial
        ),
    )
    # the very same offer again after it was accepted is a replay too
    _assert_refused_nothing_written(
        slots,
        "replayed_offer",
        lambda: check_offer(
            new_manifest, new_sig, key_of(cloud), gateway_id="gw1", last_serial=new.serial
        ),
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../escape.txt", "unsafe_path"),
        ("/etc/passwd", "unsafe_path"),
        ("wheels/../../x", "unsafe_path"),
        ("./bundle.json", "unsafe_path"),
    ],
)
def test_refuses_path_traversal(
    cloud: Path, slots: Path, tmp_path: Path, name: str, reason: str
) -> None:
    m, payload = _evil_release(cloud, tmp_path, [("bundle.json", b"{}"), (name, b"x")])
    _assert_refused_nothing_written(
        slots, reason, lambda: install_software(slots, payload, m, config=None)
    )
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_refuses_links(cloud: Path, slots: Path, tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("wheels/evil")
    link.type = kind
    link.linkname = "/etc/shadow" if kind == tarfile.SYMTYPE else "bundle.json"
    m, payload = _evil_release(cloud, tmp_path, [("bundle.json", b"{}"), link])
    _assert_refused_nothing_written(
        slots, "link_in_archive", lambda: install_software(slots, payload, m, config=None)
    )


def test_manifest_parser_refuses_garbage() -> None:
    for raw in (b"not json", b"[]", b'{"format": 2}'):
        with pytest.raises(ReleaseError):
            parse_manifest(raw)
