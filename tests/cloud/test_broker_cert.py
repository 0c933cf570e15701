"""Broker certificate host names: chosen at ``init``, added later by ``broker-cert --add-host``."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import ssl
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from edgegw import pki
from edgegw_cloud.cli import main
from edgegw_cloud.pki_setup import add_broker_hosts, broker_sans, init_data_dir

from .helpers import CloudProc, wait_until


def test_init_takes_several_hosts_and_add_host_reissues_with_the_same_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "cloud"
    assert main(["init", "--data-dir", str(d), "--broker-host", "cloud.example.net",
                 "--broker-host", "192.0.2.10"]) == 0
    paths = init_data_dir(d)  # idempotent, nothing re-issued
    assert broker_sans(paths.broker_crt) == ["127.0.0.1", "192.0.2.10", "localhost",
                                             "cloud.example.net"]
    key_before = paths.broker_key.read_bytes()
    capsys.readouterr()
    assert main(["broker-cert", "--data-dir", str(d), "--add-host", "2001:db8::7",
                 "--add-host", "GW-Cloud.example.net"]) == 0
    out = capsys.readouterr().out
    assert "re-issued" in out and "2001:db8::7" in out and "gw-cloud.example.net" in out
    assert paths.broker_key.read_bytes() == key_before
    cert = pki.load_certificate(paths.broker_crt)
    ca = pki.load_certificate(paths.ca_crt)
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == pki.load_private_key(paths.broker_key).public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    # nothing new asked: nothing re-issued
    assert add_broker_hosts(paths, ["192.0.2.10"])[1] is False
    # init with a host the certificate lacks names the fix
    with pytest.raises(pki.PkiError, match="broker-cert"):
        init_data_dir(d, broker_host="new.example.net")


def test_a_bad_host_name_is_refused_with_a_clear_error(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "cloud"
    init_data_dir(d)
    assert main(["broker-cert", "--data-dir", str(d), "--add-host", "bad host/name"]) == 1
    assert "neither an IP address nor a DNS host name" in capsys.readouterr().err


def test_a_running_serve_presents_an_added_host_after_broker_cert() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgegw-brokercert-"))
    os.chmod(work, 0o711)  # mosquitto (dropped to its own user) must reach the data dir
    cloud = CloudProc(work / "cloud")
    try:
        def sans() -> set[str]:
            ctx = pki.make_tls_context(cloud.data / "pki" / "ca.crt",
                                       cloud.data / "pki" / "bootstrap.crt",
                                       cloud.data / "pki" / "bootstrap.key")
            # A connection the restarting broker resets before the handshake makes CPython
            # 3.11's SSLSocket._create raise from its not-connected check without closing the
            # socket it built (the fd is closed when it is collected, with a ResourceWarning):
            # that warning of the stdlib's probe socket is not this test's finding.
            # The exception's traceback holds that socket in a reference cycle: it is let go
            # by the collection below, while the warning is ignored.
            cert: dict[str, Any] | None = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                try:
                    with socket.create_connection(("127.0.0.1", cloud.port), timeout=2) as raw, \
                            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        cert = dict(tls.getpeercert() or {})
                except (OSError, ssl.SSLError):
                    pass  # the broker is restarting
                if cert is None:
                    gc.collect()
                    return set()
            return {v for _k, v in cert.get("subjectAltName", ())}

        assert "192.0.2.77" not in sans()
        cloud.cli("broker-cert", "--add-host", "192.0.2.77")
        wait_until(lambda: "192.0.2.77" in sans(), 30, "the restarted broker's new certificate")
    finally:
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)
