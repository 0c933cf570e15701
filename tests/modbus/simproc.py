"""Test helpers: run modbus_sim.py (a real pymodbus server) and socat pty pairs as subprocesses."""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgegw import DeviceContext
from edgegw.drivers.modbus import ModbusDriver, ModbusOptions

SIM = Path(__file__).with_name("modbus_sim.py")


class SimServer:
    """A modbus_sim.py subprocess and its JSON-lines control channel."""

    def __init__(self, *args: str, log_dir: Path) -> None:
        self._stderr = (log_dir / f"sim-{time.monotonic_ns()}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(SIM), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        self.port = int(self._readline(15.0)["port"])

    def _readline(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"modbus_sim did not answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"modbus_sim exited (rc={self.proc.poll()}), see {self._stderr.name}"
            )
        return json.loads(line)  # type: ignore[no-any-return]

    def cmd(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._readline(10.0)

    def counts(self, unit: int) -> dict[int, int]:
        """Requests the server received from ``unit``, by function code."""
        raw = self.cmd(op="counts")["counts"].get(str(unit), {})
        return {int(fc): n for fc, n in raw.items()}

    def mode(self, mode: str, unit: int | None = None) -> None:
        self.cmd(op="mode", unit=unit, mode=mode)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


@contextmanager
def pty_pair(directory: Path) -> Iterator[tuple[Path, Path]]:
    """A socat pty pair (a virtual null-modem cable): (server end, client end)."""
    a, b = directory / "ttyA", directory / "ttyB"
    log = (directory / "socat.log").open("w")
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"socat did not create the pty pair, see {log.name}")
            time.sleep(0.02)  # poll-until-deadline for the links to appear
        yield a, b
    finally:
        proc.terminate()
        proc.wait(5)
        log.close()


class Devices:
    """Opens ModbusDriver instances the way the runtime does (one shared-resource table)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._shared: dict[str, Any] = {}
        self._refs: dict[str, int] = {}
        self.opened: list[ModbusDriver] = []

    async def open(self, device_id: str, **options: Any) -> ModbusDriver:
        driver = ModbusDriver(ModbusOptions.model_validate(options))
        ctx = DeviceContext(
            device_id, "modbus", self.state_dir, logging.getLogger(f"test.{device_id}"),
            _shared=self._shared, _shared_refs=self._refs,
        )
        await driver.open(ctx)
        self.opened.append(driver)
        return driver

    async def close(self) -> None:
        for driver in reversed(self.opened):
            await driver.close()
        self.opened.clear()

    @property
    def shared_count(self) -> int:
        return len(self._shared)
