"""Tests against real hardware; each is skipped unless an EDGEGW_HW_* variable names the device."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from edgegw.sdk import DeviceContext, discover_drivers

RTU = os.environ.get("EDGEGW_HW_MODBUS_RTU")
SERIAL = os.environ.get("EDGEGW_HW_SERIAL")
USB_SERIAL = os.environ.get("EDGEGW_HW_USB_SERIAL_LOOPBACK")
CAMERA = os.environ.get("EDGEGW_HW_CAMERA")
OTA_PI = os.environ.get("EDGEGW_HW_OTA_PI")


def _ctx(tmp_path: Path, name: str) -> DeviceContext:
    return DeviceContext(name, name, tmp_path, logging.getLogger(name))


@pytest.mark.skipif(not RTU, reason="set EDGEGW_HW_MODBUS_RTU=port:baud:unit to run")
def test_modbus_rtu_real_device(tmp_path: Path) -> None:
    port, baud, unit = (RTU or "::").rsplit(":", 2)
    cls = discover_drivers()["modbus"].cls
    assert cls is not None
    opts = cls.Options.model_validate(
        {
            "transport": "rtu",
            "port": port,
            "baudrate": int(baud),
            "unit_id": int(unit),
            "points": [
                {"name": f"hr{i}", "kind": "holding", "address": i, "type": "uint16"}
                for i in range(10)
            ],
        }
    )
    drv = cls(opts)

    async def go() -> dict[str, object]:
        await drv.open(_ctx(tmp_path, "rtu"))
        try:
            return dict(await drv.read())  # type: ignore[attr-defined]
        finally:
            await drv.close()

    values = asyncio.run(go())
    assert set(values) == {f"hr{i}" for i in range(10)}


@pytest.mark.skipif(not SERIAL, reason="set EDGEGW_HW_SERIAL=port:baud to run")
def test_serial_port_opens(tmp_path: Path) -> None:
    import serial

    port, baud = (SERIAL or ":").rsplit(":", 1)
    with serial.Serial(port, int(baud), timeout=2) as s:
        line = s.readline()
    assert line.endswith(b"\n"), f"no complete line within 2 s from {port}: {line!r}"


@pytest.mark.skipif(
    not USB_SERIAL, reason="set EDGEGW_HW_USB_SERIAL_LOOPBACK=port:baud (TX wired to RX) to run"
)
def test_usb_serial_adapter_loopback() -> None:
    """A real USB-serial adapter with TX wired to RX: 64 KiB out and back unchanged at speed."""
    import serial

    port, baud = (USB_SERIAL or ":").rsplit(":", 1)
    data = bytes(range(256)) * 256
    with serial.Serial(port, int(baud), timeout=5) as s:
        s.reset_input_buffer()
        got = bytearray()
        for i in range(0, len(data), 1024):
            s.write(data[i : i + 1024])
            got += s.read(1024)
    assert bytes(got) == data, f"{len(got)} of {len(data)} bytes came back intact"


@pytest.mark.skipif(not CAMERA, reason="set EDGEGW_HW_CAMERA=rtsp://user:pass@host/path to run")
def test_real_camera_snapshot(tmp_path: Path) -> None:
    """A real RTSP camera: the driver opens it and yields a JPEG snapshot and readings."""
    cls = discover_drivers()["rtsp"].cls
    assert cls is not None, "install the camera extra: pip install 'edgegw[camera]'"
    drv = cls(cls.Options.model_validate({"url": CAMERA, "snapshot_every": "1s"}))
    emitted: list[object] = []

    async def emit(samples, **kw):  # type: ignore[no-untyped-def]
        emitted.extend(samples)

    async def go() -> None:
        await drv.open(_ctx(tmp_path, "cam"))
        task = asyncio.create_task(drv.run(emit))  # type: ignore[attr-defined]
        try:
            for _ in range(300):
                if any(getattr(s, "metric", "") == "snapshot" for s in emitted):
                    return
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await drv.close()

    asyncio.run(go())
    metrics = {getattr(s, "metric", "") for s in emitted}
    assert "snapshot" in metrics, f"no snapshot within 30 s; got {sorted(metrics)}"


@pytest.mark.skipif(
    not OTA_PI, reason="set EDGEGW_HW_OTA_PI=user@host (a Pi installed with install.py) to run"
)
def test_ota_round_trip_on_a_raspberry_pi(tmp_path: Path) -> None:
    """Build a version-bumped aarch64 bundle here, publish it, install it on the Pi from disk
    (``edgegw ota install``), restart, and wait until the Pi committed it after its health gate.
    Needs ssh access with sudo on the Pi and a cloud data dir in EDGEGW_HW_CLOUD_DIR."""
    import json
    import subprocess

    from edgegw_cloud.ota import ReleaseStore, build_bundle, publish_bundle
    from tests.ota.helpers import REPO, build_wheel

    cloud = Path(os.environ["EDGEGW_HW_CLOUD_DIR"])
    host = OTA_PI or ""
    ssh = ["ssh", host]
    status = json.loads(
        subprocess.run(
            [
                *ssh,
                "sudo /opt/edgegw/slots/current/bin/edgegw ota status --slots /opt/edgegw/slots",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    old = status["committed"]
    new = ".".join([*old.split(".")[:-1], str(int(old.split(".")[-1]) + 1)])
    wheel = build_wheel(tmp_path, new)
    bundle = tmp_path / "bundle"
    build_bundle(
        wheel.parent.parent / f"src-{new}",
        bundle,
        platform="manylinux2014_aarch64",
        python_version="3.11",
    )
    with ReleaseStore(cloud) as store:
        row = publish_bundle(store, bundle)
    subprocess.run(["scp", "-r", str(row.path), f"{host}:/tmp/edgegw-release"], check=True)
    subprocess.run(
        [
            *ssh,
            "sudo -u edgegw /opt/edgegw/slots/current/bin/edgegw ota install "
            "/tmp/edgegw-release -c /etc/edgegw/gateway.yaml --slots /opt/edgegw/slots "
            "&& sudo systemctl restart edgegw",
        ],
        check=True,
    )
    for _ in range(120):
        doc = json.loads(
            subprocess.run(
                [*ssh, "cat /opt/edgegw/slots/boot.json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        result = doc.get("last_result") or {}
        if result.get("version") == new and result.get("state") in ("committed", "rolled_back"):
            break
        import time

        time.sleep(5)
    assert result.get("state") == "committed", result
    assert REPO.exists()
