"""Enrollment end to end over the real broker: token -> CSR -> certificate -> working identity."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import pytest

from edgegw import pki
from edgegw.commands import enroll as enroll_cmd
from edgegw.uplink import enroll as enroll_mod
from edgegw.uplink.enroll import EnrollmentError, Identity, enroll
from edgegw_cloud.enrollment import EnrollmentService
from edgegw_cloud.registry import Registry
from edgegw_cloud.revocation import revoke_gateway

from .conftest import Cloud, file_mode, wait_until


def _urls(cloud: Cloud) -> dict[str, str]:
    """The gateway listener (stored in identity.json) and the enrollment listener."""
    return {"broker": cloud.broker.url, "enroll_broker": cloud.broker.service_url}


def _token(cloud: Cloud, gw: str, ttl: float = 600.0, **kw: bool) -> str:
    with Registry(cloud.paths.registry_db) as reg:
        return reg.create_token(gw, ttl, **kw)


def _counters(cloud: Cloud) -> dict[str, int]:
    with Registry(cloud.paths.registry_db) as reg:
        return reg.counters()


def _enroll(
    cloud: Cloud, gw: str, token: str | None, ident: Path | None = None, **kw: object
) -> Identity:
    return enroll(
        gw,
        ident or cloud.tmp / "id" / gw,
        **_urls(cloud),
        token=token,
        bootstrap_dir=cloud.bootstrap_dir(),
        timeout=15,
        **kw,
    )  # type: ignore[arg-type]


def test_enrollment_produces_a_working_identity(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    token = _token(cloud, "gw-1")
    ident = _enroll(cloud, "gw-1", token)

    assert ident == Identity.load(ident.dir)
    assert (ident.gateway_id, ident.key_id, ident.broker) == ("gw-1", 1, cloud.broker.url)
    assert file_mode(ident.key_path) == 0o600
    cert = pki.load_certificate(ident.cert_path)
    assert pki.common_name(cert.subject) == "gw-1"
    pki.verify_issued_by(cert, pki.load_certificate(cloud.paths.ca_crt))
    # the private key never left: the certificate carries the locally generated public key
    assert pki.public_key_fingerprint(cert.public_key()) == pki.public_key_fingerprint(
        ident.private_key().public_key()
    )
    assert (
        ident.ingest_public_key().public_numbers()
        == pki.load_public_key(cloud.paths.ingest_ka_pub(1)).public_numbers()
    )  # type: ignore[union-attr]
    with Registry(cloud.paths.registry_db) as reg:
        assert [pki.public_key_fingerprint(k) for k in reg.public_keys("gw-1")] == [
            pki.public_key_fingerprint(cert.public_key())
        ]
        assert reg.gateway("gw-1").cert_serial == format(cert.serial_number, "x")  # type: ignore[union-attr]

    ingest = cloud.ingest_probe()
    ingest.subscribe("gw/+/up/#")
    gw = cloud.gateway_probe(ident)
    gw.wait_connected()
    assert gw.publish("gw/gw-1/up/batch", b"hello").value == 0
    assert gw.publish("gw/gw-2/up/batch", b"nope").value == 0x87
    wait_until(lambda: ingest.got("gw/gw-1/up/batch") == [b"hello"], 10, "ingest delivery")
    assert enrollment.stats()["enrolled"] == 1


def test_used_token_is_refused(cloud: Cloud, enrollment: EnrollmentService) -> None:
    token = _token(cloud, "gw-1")
    _enroll(cloud, "gw-1", token)
    with pytest.raises(EnrollmentError, match="token_used"):
        _enroll(cloud, "gw-1", token, ident=cloud.tmp / "second")
    assert _counters(cloud)["refused_token_used"] == 1
    assert enrollment.stats()["refused"] == {"token_used": 1}
    assert not (cloud.tmp / "second" / "identity.json").exists()


def test_expired_token_is_refused(cloud: Cloud, enrollment: EnrollmentService) -> None:
    token = _token(cloud, "gw-1", ttl=0.2)
    deadline = time.time() + 0.25
    wait_until(lambda: time.time() > deadline, 5, "the token to expire")
    with pytest.raises(EnrollmentError, match="token_expired"):
        _enroll(cloud, "gw-1", token)
    assert _counters(cloud)["refused_token_expired"] == 1


def test_wrong_and_missing_tokens_are_refused(cloud: Cloud, enrollment: EnrollmentService) -> None:
    _token(cloud, "gw-1")
    with pytest.raises(EnrollmentError, match="token_unknown"):
        _enroll(cloud, "gw-1", "not-a-real-token")
    with pytest.raises(EnrollmentError, match="a token is needed"):
        _enroll(cloud, "gw-1", None)
    assert _counters(cloud)["refused_token_unknown"] == 1


def test_token_of_another_gateway_is_refused_and_stays_valid(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    token = _token(cloud, "gw-x")
    with pytest.raises(EnrollmentError, match="token_other_gateway"):
        _enroll(cloud, "gw-y", token)
    assert _counters(cloud)["refused_token_other_gateway"] == 1
    assert _enroll(cloud, "gw-x", token).gateway_id == "gw-x"  # not consumed by the refusal


def test_one_token_enrolls_once_even_when_raced(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    token = _token(cloud, "gw-r")
    bootstrap = cloud.bootstrap_dir()
    results: list[str] = []

    def attempt(i: int) -> None:
        try:
            enroll(
                "gw-r",
                cloud.tmp / f"race{i}",
                **_urls(cloud),
                token=token,
                bootstrap_dir=bootstrap,
                timeout=15,
            )
            results.append("ok")
        except EnrollmentError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results)[-1] == "ok" and results.count("ok") == 1, results
    assert all("token_used" in r for r in results if r != "ok")


def test_malformed_requests_are_answered_and_counted(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    p = cloud.paths
    dev = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "enroll-junk")
    dev.wait_connected()
    dev.subscribe("enroll/bootstrap/~enroll-junk/resp")
    bad_cn_key = pki.generate_ec_key()
    bad_cn = pki.csr_pem(pki.make_csr(bad_cn_key, "gw/../#"))
    payloads = [
        b"\xff\xfe not json",
        b"[1, 2]",
        json.dumps({"v": 9, "nonce": "a", "csr": "x"}).encode(),
        json.dumps(
            {"v": 1, "nonce": "b", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA=="}
        ).encode(),
        json.dumps({"v": 1, "nonce": "c", "csr": bad_cn, "token": "t"}).encode(),
        b"x" * 70_000,
    ]
    for body in payloads:
        assert not dev.publish("enroll/bootstrap/~enroll-junk/req", body).is_failure
    wait_until(
        lambda: len(dev.got("enroll/bootstrap/~enroll-junk/resp")) == len(payloads),
        10,
        "an answer to every request",
    )
    answers = [json.loads(m) for m in dev.got("enroll/bootstrap/~enroll-junk/resp")]
    assert all(a["ok"] is False for a in answers)
    assert [a["reason"] for a in answers] == ["malformed"] * 4 + ["bad_id", "malformed"]
    assert enrollment.stats()["malformed"] == 5
    # still serving
    assert _enroll(cloud, "gw-after", _token(cloud, "gw-after")).gateway_id == "gw-after"


def test_renewal_keeps_the_key_and_needs_no_token(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    first = _enroll(cloud, "gw-n", _token(cloud, "gw-n"))
    old = pki.load_certificate(first.cert_path)
    renewed = enroll("gw-n", first.dir, **_urls(cloud), renew=True, timeout=15)
    new = pki.load_certificate(renewed.cert_path)
    assert new.serial_number != old.serial_number
    assert pki.public_key_fingerprint(new.public_key()) == pki.public_key_fingerprint(
        old.public_key()
    )
    assert enrollment.stats()["renewed"] == 1
    probe = cloud.gateway_probe(renewed)
    probe.wait_connected()
    assert not probe.publish("gw/gw-n/up/batch", b"x").is_failure


def test_a_gateway_cannot_renew_or_enroll_another(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    a = _enroll(cloud, "gw-a", _token(cloud, "gw-a"))
    # gw-a's own identity asking for gw-b's certificate, with and without gw-b's token
    tok_b = _token(cloud, "gw-b")
    for token in (None, tok_b):
        ctx = pki.make_tls_context(a.ca_path, a.cert_path, a.key_path)
        ans = enroll_mod._Exchange("127.0.0.1", cloud.service_port, ctx, "gw-a", 15).run(
            pki.csr_pem(pki.make_csr(pki.generate_ec_key(), "gw-b")), token
        )
        assert ans["ok"] is False and ans["reason"] == "other_identity", ans
    assert _counters(cloud)["refused_other_identity"] == 2


def test_revoked_gateway_needs_reinstate_and_gets_a_fresh_serial(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    first = _enroll(cloud, "gw-v", _token(cloud, "gw-v"))
    old_serial = pki.load_certificate(first.cert_path).serial_number
    old_key = pki.load_certificate(first.cert_path).public_key().public_numbers()
    revoke_gateway(cloud.paths, "gw-v")
    cloud.broker.reload()
    with pytest.raises(EnrollmentError, match="refused the certificate"):
        enroll("gw-v", first.dir, **_urls(cloud), renew=True, timeout=10)
    from edgegw_cloud.registry import RegistryError

    with pytest.raises(RegistryError, match="--reinstate"):
        _token(cloud, "gw-v")
    crl_before = cloud.paths.crl.read_bytes()
    # issue 9 #6: the old (possibly stolen) key is never certified again
    tok = _token(cloud, "gw-v", reinstate=True)
    with pytest.raises(EnrollmentError, match="key_revoked"):
        _enroll(cloud, "gw-v", tok, ident=first.dir)
    assert cloud.paths.crl.read_bytes() == crl_before
    again = _enroll(cloud, "gw-v", tok, ident=first.dir, new_key=True)  # token still valid
    assert cloud.paths.crl.read_bytes() != crl_before  # re-signed: what makes `serve` reload
    assert again.private_key().public_key().public_numbers() != old_key
    cloud.broker.reload()
    new_serial = pki.load_certificate(again.cert_path).serial_number
    assert new_serial != old_serial
    probe = cloud.gateway_probe(again)
    probe.wait_connected()
    assert not probe.publish("gw/gw-v/up/batch", b"back").is_failure


def test_enroll_cli_entry_point(
    cloud: Cloud, enrollment: EnrollmentService, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    enroll_cmd.add_arguments(parser)
    base = [
        "--gateway-id",
        "gw-cli",
        "--broker",
        cloud.broker.url,
        "--enroll-broker",
        cloud.broker.service_url,
        "--identity-dir",
        str(cloud.tmp / "cli"),
        "--bootstrap-dir",
        str(cloud.bootstrap_dir()),
        "--timeout",
        "15",
    ]
    assert enroll_cmd.run(parser.parse_args([*base, "--token", "bogus"])) == 1
    assert "token_unknown" in capsys.readouterr().err
    # --token=T: a url-safe token may start with '-' (argparse would read it as an option)
    assert enroll_cmd.run(parser.parse_args([*base, f"--token={_token(cloud, 'gw-cli')}"])) == 0
    assert Identity.load(cloud.tmp / "cli").gateway_id == "gw-cli"
    assert enroll_cmd.run(parser.parse_args(["--gateway-id", "gw-cli"])) == 1
    assert "missing broker, identity dir" in capsys.readouterr().err


def test_unreachable_or_untrusted_broker_gives_a_clear_error(cloud: Cloud, tmp_path: Path) -> None:
    from .conftest import free_port

    with pytest.raises(EnrollmentError, match="cannot connect"):
        enroll(
            "gw-1",
            tmp_path / "i",
            broker=f"mqtts://127.0.0.1:{free_port()}",
            token="t",
            bootstrap_dir=cloud.bootstrap_dir(),
            timeout=5,
        )
    with pytest.raises(EnrollmentError, match="only mqtts"):
        enroll(
            "gw-1",
            tmp_path / "i",
            broker="mqtt://127.0.0.1:1883",
            token="t",
            bootstrap_dir=cloud.bootstrap_dir(),
        )
    with pytest.raises(pki.PkiError, match="bad gateway id"):
        enroll(
            "gw+1",
            tmp_path / "i",
            **_urls(cloud),
            token="t",
            bootstrap_dir=cloud.bootstrap_dir(),
        )


def test_enroll_cli_reads_gateway_yaml(
    cloud: Cloud, enrollment: EnrollmentService, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    boot = state / "bootstrap"  # the default bootstrap dir: STATE_DIR/bootstrap
    boot.mkdir(parents=True)
    for f in cloud.bootstrap_dir().iterdir():
        (boot / f.name).write_bytes(f.read_bytes())
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"gateway:\n  id: gw-yaml\n  state_dir: {state}\n"
        f"uplink:\n  enabled: true\n  broker: {cloud.broker.url}\n"
        f"  enroll_broker: {cloud.broker.service_url}\ndevices: []\n"
    )
    parser = argparse.ArgumentParser()
    enroll_cmd.add_arguments(parser)
    args = parser.parse_args(["-c", str(cfg), f"--token={_token(cloud, 'gw-yaml')}"])
    assert enroll_cmd.run(args) == 0
    ident = Identity.load(state / "identity")  # uplink.identity_dir default
    assert (ident.gateway_id, ident.broker) == ("gw-yaml", cloud.broker.url)
    assert file_mode(ident.key_path) == 0o600
    # renewal through the same config, no token
    assert enroll_cmd.run(parser.parse_args(["-c", str(cfg), "--renew"])) == 0
    assert enrollment.stats()["renewed"] == 1


def test_token_from_stdin_file_or_environment_not_only_argv(
    cloud: Cloud, enrollment: EnrollmentService, tmp_path: Path
) -> None:
    """Issue 9 #10: the token on the command line is visible in `ps`, and 1.5% of tokens start
    with '-' (argparse took them for an option). The real CLI, in a subprocess, each way."""
    import os
    import subprocess
    import sys

    def cli(gw: str, extra: list[str], env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "edgegw.cli", "enroll", "--gateway-id", gw, "--broker",
                cloud.broker.url, "--enroll-broker", cloud.broker.service_url,
                "--identity-dir", str(tmp_path / gw), "--bootstrap-dir",
                str(cloud.bootstrap_dir()), "--timeout", "15", *extra]
        return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})

    tok = _token(cloud, "gw-stdin")
    r = cli("gw-stdin", ["--token-file", "-"], stdin=f"  {tok}\n")
    assert r.returncode == 0, r.stderr
    tokfile = tmp_path / "token"
    tokfile.write_text(_token(cloud, "gw-file") + "\n")
    tokfile.chmod(0o600)
    r = cli("gw-file", ["--token-file", str(tokfile)])
    assert r.returncode == 0, r.stderr
    r = cli("gw-env", [], env={"EDGEGW_ENROLL_TOKEN": _token(cloud, "gw-env")})
    assert r.returncode == 0, r.stderr
    for gw in ("gw-stdin", "gw-file", "gw-env"):
        assert Identity.load(tmp_path / gw).gateway_id == gw
    # --token=TOKEN (tokens never start with '-' any more, but a user may still quote one)
    r = cli("gw-eq", [f"--token={_token(cloud, 'gw-eq')}"])
    assert r.returncode == 0, r.stderr
    r = cli("gw-none", ["--token-file", str(tmp_path / "missing")])
    assert r.returncode == 1 and "cannot read the token" in r.stderr


def test_renewal_needs_the_same_key_and_everything_is_audited(
    cloud: Cloud, enrollment: EnrollmentService
) -> None:
    """Issue 9 #6: renewal matches the docs ("same key"); enroll / renew / revoke / reinstate
    and refusals are in the audit log with who, when and which MQTT client."""
    first = _enroll(cloud, "gw-au", _token(cloud, "gw-au"))
    # a renewal CSR with another key, sent with the gateway's current identity
    ctx = pki.make_tls_context(first.ca_path, first.cert_path, first.key_path)
    ex = enroll_mod._Exchange("127.0.0.1", cloud.service_port, ctx, "gw-au", 15)
    ans = ex.run(pki.csr_pem(pki.make_csr(pki.generate_ec_key(), "gw-au")), None)
    assert ans["ok"] is False and ans["reason"] == "renew_new_key", ans
    with pytest.raises(EnrollmentError, match="exclude each other"):
        enroll("gw-au", first.dir, **_urls(cloud), renew=True, new_key=True)
    enroll("gw-au", first.dir, **_urls(cloud), renew=True, timeout=15)
    revoke_gateway(cloud.paths, "gw-au")
    _token(cloud, "gw-au", reinstate=True)
    with Registry(cloud.paths.registry_db) as reg:
        log = reg.audit_log("gw-au")
    actions = [(r["action"], r["actor"], r["detail"]) for r in log]
    assert [a for a, _, _ in actions] == ["token", "enroll", "refused", "renew", "revoke",
                                          "reinstate"], actions
    enroll_row, refused, renew_row = log[1], log[2], log[3]
    assert enroll_row["actor"] == "bootstrap" and enroll_row["client_id"].startswith("~enroll-")
    assert enroll_row["serial"] and renew_row["serial"] and renew_row["actor"] == "gw-au"
    assert refused["detail"] == "renew_new_key" and refused["client_id"]
    assert str(log[0]["actor"]).startswith("operator:") and "NEW key" in str(log[5]["detail"])
    assert all(int(str(r["ts_ms"])) > 1_700_000_000_000 for r in log)
