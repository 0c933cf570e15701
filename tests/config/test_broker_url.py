"""`edgegw check` refuses exactly the broker URLs the daemon refuses (one grammar), at file:line.

For every URL: ``edgegw check`` (the real CLI, on a real file) and the daemon's uplink session
constructor (what ``edgegw run`` builds) agree; the enrollment client and the cloud ingest use
the same parser (tests/test_architecture.py checks that nothing else parses URLs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgegw.protocol.broker_url import BrokerUrlError, parse_broker_url
from edgegw.uplink.enroll import EnrollmentError, enroll
from edgegw.uplink.session import Uplink, UplinkConfigError

GOOD = ["mqtts://broker.example.com:8883", "mqtts://10.0.0.5", "mqtts://[::1]:18883"]
BAD = [
    "mqtt://127.0.0.1:1883",  # plaintext: check used to say OK, the daemon then refused it
    "ssl://127.0.0.1:8883",  # enrollment used to accept these three
    "tls://127.0.0.1:8883",
    "127.0.0.1:8883",
    "mqtts://",
    "mqtts://h:0",
    "mqtts://h:99999",
    "mqtts://h:port",
    "mqtts://user:pw@h:8883",
    "mqtts://h:8883/path",
    "mqtts://h:8883?x=1",
    " mqtts://h:8883",
]


def _check(tmp_path: Path, url: str) -> tuple[int, str]:
    cfg = tmp_path / "gw.yaml"
    # JSON is YAML; the broker sits on line 3, column 23 of this layout
    cfg.write_text(
        '{"gateway": {"id": "u-gw"},\n"devices": [],\n'
        f'"uplink": {{"broker": {json.dumps(url)}}}}}\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "edgegw.cli", "check", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )
    return r.returncode, r.stderr


def _daemon_refuses(url: str, tmp_path: Path) -> bool:
    # The session checks the URL before it looks at the identity files (none exist here).
    try:
        Uplink("u-gw", tmp_path / "no-identity", url, None)  # type: ignore[arg-type]
    except UplinkConfigError as exc:
        return "uplink.broker" in str(exc)
    raise AssertionError("unreachable: the identity dir is missing")


@pytest.mark.parametrize("url", GOOD + BAD)
def test_check_equals_runtime(tmp_path: Path, url: str) -> None:
    rc, err = _check(tmp_path, url)
    refused_by_daemon = _daemon_refuses(url, tmp_path)
    assert (rc != 0) == refused_by_daemon == (url in BAD), (url, err)
    if refused_by_daemon:
        assert f"{tmp_path / 'gw.yaml'}:3:" in err and "uplink.broker" in err, err
        assert "mqtts://HOST:PORT" in err  # the hint says what to write
        with pytest.raises(BrokerUrlError):
            parse_broker_url(url)
        with pytest.raises(EnrollmentError, match="broker URL"):
            enroll("u-gw", tmp_path / "id", broker=url, token="t", bootstrap_dir=tmp_path)
    else:
        assert parse_broker_url(url).port in (8883, 18883)
