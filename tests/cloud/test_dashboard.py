"""The dashboard in a real browser (Debian's Chromium driven by Playwright), against a real
``edgegw-cloud serve --http`` and a real ``edgegw run`` gateway delivering simulated readings
with a rule that raises an alert. Plus the API's authentication and roles over HTTPS.

Chromium does not know our CA (it would need an NSS database), so the browser context ignores
certificate errors; the API checks in this file verify TLS against ``pki/ca.crt``.
Screenshots are kept as test artefacts in a temp dir whose path is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegw_cloud.devstore import DevStore

from .helpers import BIN, CloudProc, start_gateway, stop, wait_until

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="edgegw-dash-"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cloud(workdir: Path) -> Iterator[CloudProc]:
    """One cloud for this module's tests (a serve start is the slow part)."""
    c = CloudProc(workdir / "cloud")
    try:
        c.cli("user", "add", "alice", "--role", "admin", "--password-stdin", stdin="alice-pw-1\n")
        c.cli("user", "add", "bob", "--role", "read-only", "--password-stdin",
              stdin="bob-pw-12\n")
        yield c
    finally:
        c.close()


def test_api_refuses_anonymous_and_read_only_writes(cloud: CloudProc) -> None:
    assert cloud.request("GET", "/api/v1/gateways")[0] == 401
    assert cloud.request("GET", "/api/openapi.json")[0] == 401
    assert cloud.request("GET", "/api/v1/gateways", token="egw_not-a-token")[0] == 401
    ro = cloud.cli("api-token", "create", "grafana").strip()
    admin = cloud.cli("api-token", "create", "ops", "--role", "admin").strip()
    assert ro not in (cloud.data / "operators.db").read_bytes().decode("latin-1")
    status, body = cloud.request("GET", "/api/v1/me", token=ro)
    assert status == 200 and body["role"] == "read-only"
    status, body = cloud.request("POST", "/api/v1/enrollment-tokens", token=ro,
                                 body={"gateway_id": "gw-x"})
    assert status == 403 and "read-only" in body["detail"]
    # a read-only dashboard user (session cookie) is refused a write too
    bob = cloud.login_cookie("bob", "bob-pw-12")
    assert cloud.request("GET", "/api/v1/me", cookie=bob)[1]["name"] == "bob"
    assert cloud.request("POST", "/api/v1/gateways/gw-x/revoke", cookie=bob)[0] == 403
    # the admin may, and the API documents itself
    status, body = cloud.request("POST", "/api/v1/enrollment-tokens", token=admin,
                                 body={"gateway_id": "gw-x", "ttl": "5m"})
    assert status == 200 and len(body["token"]) >= 40
    status, spec = cloud.request("GET", "/api/openapi.json", token=ro)
    assert status == 200 and "/api/v1/gateways" in spec["paths"]
    assert "/api/v1/gateways/{gateway}/live" in spec["paths"]
    # commands and their results (device management's store), read-only users may read them
    assert cloud.request("GET", "/api/v1/commands", token=ro)[1] == []
    ds = DevStore(cloud.data / "devices.db")
    try:
        ds.command_create("c1", "gw-x", "boiler1", "write", {"point": "sp", "value": 5},
                          deadline_ms=2**40)
        ds.command_create("c2", "gw-x", "boiler1", "read", {"point": "sp"}, deadline_ms=2**40)
        ds.command_finish("c1", "refused", reason="point sp is not writable")
        ds.set_desired("gw-x", "boiler1", {"sp": 5}, None)
        version = ds.config_push("gw-x", "gateway: {id: gw-x}\n")
    finally:
        ds.close()
    status, shadows = cloud.request("GET", "/api/v1/gateways/gw-x/shadows", token=ro)
    assert status == 200 and shadows[0]["desired"] == {"sp": 5} and shadows[0]["delta"]
    status, configs = cloud.request("GET", "/api/v1/gateways/gw-x/configs", token=ro)
    assert status == 200 and configs[0]["version"] == version and "yaml" not in configs[0]
    status, cmds = cloud.request("GET", "/api/v1/commands?gateway=gw-x", token=ro)
    assert status == 200
    # (serve's device manager may settle c2 meanwhile: it is pending or already final)
    assert {c["id"]: c["status"] for c in cmds}["c1"] == "refused" and len(cmds) == 2
    assert [c["id"] for c in cloud.request("GET", "/api/v1/commands?status=refused",
                                           token=ro)[1]] == ["c1"]
    # a revoked API token is refused at once
    cloud.cli("api-token", "revoke", "grafana")
    assert cloud.request("GET", "/api/v1/me", token=ro)[0] == 401


def test_dashboard_in_chromium_fleet_live_chart_and_alert(cloud: CloudProc,
                                                          workdir: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = Path(tempfile.mkdtemp(prefix="edgegw-dashboard-screenshots-"))
    print(f"\ndashboard screenshots in {shots}")
    gw, _state = start_gateway(cloud, "plant1-gw1", workdir)
    try:
        token = cloud.cli("api-token", "create", "t").strip()
        wait_until(lambda: any(g["online"] and g["readings"] > 0 for g in
                               cloud.request("GET", "/api/v1/gateways", token=token)[1]),
                   30, "the gateway online with readings")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_context(ignore_https_errors=True,
                                           viewport={"width": 1280, "height": 900}).new_page()
                # anonymous: the dashboard sends the browser to the login page
                page.goto(cloud.base + "/")
                assert page.url.endswith("/login")
                page.fill("input[name=username]", "alice")
                page.fill("input[name=password]", "wrong-password")
                page.click("button[type=submit]")
                page.locator(".error").wait_for(state="visible", timeout=10_000)  # a 401
                page.fill("input[name=username]", "alice")
                page.fill("input[name=password]", "alice-pw-1")
                page.click("button[type=submit]")
                page.wait_for_url(cloud.base + "/")
                row = page.locator("#fleet tr", has_text="plant1-gw1")
                row.locator(".online").wait_for(timeout=15_000)
                assert "alice (admin)" in page.locator("header").inner_text()
                page.screenshot(path=str(shots / "1-fleet.png"), full_page=True)
                # the device page: one chart per metric, growing while readings arrive
                row.locator("a").click()
                page.wait_for_url("**/gateways/plant1-gw1")
                chart = page.locator('.chart[data-series="boiler1/temperature"]')
                chart.wait_for(timeout=15_000)
                assert chart.locator("canvas").count() == 1
                before = page.evaluate("egw.points")
                page.wait_for_function(f"egw.points > {before} + 2", timeout=20_000)
                page.wait_for_function(  # device management sections answered
                    "!document.getElementById('configs').textContent.includes('loading')")
                page.screenshot(path=str(shots / "2-gateway-live.png"), full_page=True)
                # the alert raised by the gateway's rule
                page.click("header >> text=Alerts")
                page.wait_for_url("**/alerts")
                alert = page.locator("#states tr", has_text="boiler-hot")
                alert.wait_for(timeout=30_000)
                assert "boiler1" in alert.inner_text()
                page.wait_for_selector("#events tr >> text=ACTIVE", timeout=30_000)
                page.screenshot(path=str(shots / "3-alerts.png"), full_page=True)
                page.click("header >> text=Gaps")
                page.wait_for_url("**/gaps")
                page.wait_for_selector("#gaps >> text=nothing was dropped")
                page.screenshot(path=str(shots / "4-gaps.png"), full_page=True)
                page.click("header >> text=Commands")
                page.wait_for_url("**/commands")
                page.wait_for_function(  # the table, or "no commands sent yet"
                    "!document.getElementById('commands').textContent.includes('loading')")
            finally:
                browser.close()
        for name in ("1-fleet", "2-gateway-live", "3-alerts", "4-gaps"):
            assert (shots / f"{name}.png").stat().st_size > 5_000
        status, states = cloud.request("GET", "/api/v1/alerts?gateway=plant1-gw1", token=token)
        assert status == 200 and {s["rule"] for s in states} == {"boiler-hot"}
        # the CLI on another machine goes through the same API (TLS checked against the CA)
        ca = str(cloud.data / "pki" / "ca.crt")
        env = {**os.environ, "EDGEGW_API_TOKEN": token}
        api = ["--api", cloud.base, "--ca", ca]
        fleet = subprocess.run([str(BIN / "edgegw-cloud"), "gateways", *api], env=env,
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert next(ln for ln in fleet.splitlines() if ln.startswith("plant1-gw1")).split()[1] in (
            "online", "offline")
        lines = subprocess.run(
            [str(BIN / "edgegw-cloud"), "query", *api, "--gateway", "plant1-gw1", "--since",
             "-10m", "--format", "jsonl"], env=env, capture_output=True, text=True, timeout=60,
            check=True).stdout.splitlines()
        assert lines and json.loads(lines[0])["gateway"] == "plant1-gw1"
        alerts = subprocess.run(
            [str(BIN / "edgegw-cloud"), "query", *api, "--what", "alerts", "--format", "csv"],
            env=env, capture_output=True, text=True, timeout=60, check=True).stdout
        assert "boiler-hot" in alerts and "active" in alerts
        refused = subprocess.run(
            [str(BIN / "edgegw-cloud"), "gateways", *api], capture_output=True, text=True,
            timeout=60, check=False, env={**os.environ, "EDGEGW_API_TOKEN": "egw_wrong"})
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    finally:
        stop(gw)
