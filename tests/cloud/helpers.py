"""Helpers for cloud tests: run ``edgegw-cloud serve`` and an ``edgegw run`` gateway as the
operator would (the installed commands, real ports on loopback), and talk HTTPS to the API with
the cloud's CA."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run(*argv: str, stdin: str | None = None, timeout: float = 60) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, input=stdin, timeout=timeout,
                       check=False)
    assert p.returncode == 0, f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class CloudProc:
    """``edgegw-cloud serve`` in a subprocess with the HTTP side on, plus the accounts."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.port = free_port()
        self.enroll_port = free_port()
        self.http_port = free_port()
        run(str(BIN / "edgegw-cloud"), "init", "--data-dir", str(data))
        self.log = data.parent / f"serve-{self.port}.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [str(BIN / "edgegw-cloud"), "serve", "--data-dir", str(data), "--port",
                 str(self.port), "--enroll-port", str(self.enroll_port), "--http",
                 f"127.0.0.1:{self.http_port}", *extra],
                stdout=subprocess.PIPE, stderr=err, text=True,
            )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.startswith("serving "), first + self.log.read_text()
        lines = [self.proc.stdout.readline() for _ in range(2)]  # enrollment, dashboard
        assert "dashboard and API on https://" in lines[-1], str(lines) + self.log.read_text()
        self.ctx = ssl.create_default_context(cafile=str(data / "pki" / "ca.crt"))

    @property
    def broker(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def enroll_broker(self) -> str:
        return f"mqtts://127.0.0.1:{self.enroll_port}"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def cli(self, *argv: str, stdin: str | None = None) -> str:
        return run(str(BIN / "edgegw-cloud"), *argv, "--data-dir", str(self.data), stdin=stdin)

    def request(self, method: str, path: str, *, token: str | None = None,
                cookie: str | None = None, body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = cookie
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def login_cookie(self, user: str, password: str) -> str:
        """A session cookie as the login page gets it (POST /login with JSON)."""
        req = urllib.request.Request(
            self.base + "/login", method="POST",
            data=json.dumps({"username": user, "password": password}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            assert r.status == 204, r.status
            return str(r.headers["Set-Cookie"]).split(";")[0]

    def close(self) -> None:
        stop(self.proc)


def sim_gateway_yaml(gw_id: str, state: Path, broker: str, *, rule: bool = True,
                     metrics_port: int | None = None, enroll_broker: str | None = None) -> str:
    """A gateway with one simulated device (a fast sine) and a rule raising an alert on it."""
    text = f"""\
gateway:
  id: {gw_id}
  state_dir: {state}
metrics:
  enabled: {"true" if metrics_port else "false"}
  listen: 127.0.0.1:{metrics_port or 9}
batch:
  max_age: 200ms
uplink:
  enabled: true
  broker: {broker}
  enroll_broker: {enroll_broker or broker}
  backoff_max: 2s
devices:
  - id: boiler1
    driver: sim
    poll: 200ms
    options:
      points:
        - {{name: temperature, signal: sine, offset: 50, amplitude: 10, period: 6}}
        - {{name: pressure, signal: walk}}
"""
    if rule:
        text += """\
rules:
  - name: boiler-hot
    device: boiler1
    when: temperature > 55
    clear: temperature < 45
    severity: critical
    message: "boiler1 temperature {temperature:.1f} above 55"
    actions:
      - {type: alert}
"""
    return text


def start_gateway(cloud: CloudProc, gw_id: str, workdir: Path, **kw: Any
                  ) -> tuple[subprocess.Popen[Any], Path]:
    """Token + enroll + ``edgegw run`` (until stopped); returns (process, state dir)."""
    token = cloud.cli("token", "create", gw_id, "--ttl", "10m").strip()
    state = workdir / gw_id / "state"
    cfg = workdir / gw_id / "gateway.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(sim_gateway_yaml(gw_id, state, cloud.broker,
                                    enroll_broker=cloud.enroll_broker, **kw))
    run(str(BIN / "edgegw"), "enroll", "-c", str(cfg), f"--token={token}", "--bootstrap-dir",
        str(cloud.data / "pki"))
    log = open(workdir / gw_id / "run.log", "w")  # noqa: SIM115 - closed by the caller's stop()
    proc = subprocess.Popen([str(BIN / "edgegw"), "run", "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()  # the child keeps its own descriptor
    return proc, state


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL (dropped afterwards); yields its URL."""
    import secrets

    import psycopg

    name = f"edgegw_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
