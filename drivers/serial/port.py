"""A pyserial port on the asyncio loop: non-blocking open/read/write, loss detection, reopen gate.

Invariants:
- The loop never blocks on the port: ``Serial(timeout=0, write_timeout=0)`` and
  ``loop.add_reader(fd)``; a read happens only when the fd is readable.
- Any read/write failure (SerialException, EOF, EIO, ENODEV: adapter unplugged, pty closed)
  closes the port and surfaces as ``PortLost``; the next ``ensure_open`` reopens it, no sooner
  than the exponential backoff (``reopen_min`` doubling up to ``reopen_max``) allows.
- ``SharedPort`` is one physical port shared by every device on it (RS-485 multi-drop): one
  ``lock`` so exactly one request/reply exchange is on the wire at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import termios
import time
from collections import deque
from dataclasses import dataclass

import serial

from .options import SerialOptions

_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}


#: what pyserial and termios raise when a port fails or vanishes
PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class PortLost(Exception):
    """The port failed (unplugged, closed by the peer, I/O error); it has been closed."""


@dataclass(frozen=True)
class PortSettings:
    port: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: float
    exclusive: bool
    reopen_min: float
    reopen_max: float

    @classmethod
    def of(cls, o: SerialOptions) -> PortSettings:
        return cls(
            o.port,
            o.baudrate,
            o.bytesize,
            o.parity,
            float(o.stopbits),
            o.exclusive,
            o.reopen_min,
            o.reopen_max,
        )


class SerialLink:
    """One serial port: open/close, a chunk queue fed by ``add_reader``, non-blocking writes."""

    def __init__(self, settings: PortSettings) -> None:
        self.settings = settings
        self._ser: serial.Serial | None = None
        self._chunks: deque[bytes] = deque()
        self._failure: BaseException | None = None
        self._wakeup: asyncio.Event | None = None
        self._reading = False
        self._failures = 0  # consecutive failed opens, for the backoff
        self._next_open = 0.0  # monotonic time before which no reopen is attempted
        self.opens = 0
        self.losses = 0
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def backoff_remaining(self) -> float:
        return max(0.0, self._next_open - time.monotonic())

    def open(self) -> None:
        """Open the port now; raises ``PortLost`` (and arms the backoff) when it cannot."""
        if self._ser is not None:
            return
        s = self.settings
        try:
            self._ser = serial.Serial(
                s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=_PARITY[s.parity],
                stopbits=s.stopbits,
                timeout=0,
                write_timeout=0,
                exclusive=s.exclusive,
            )
        except (*PORT_ERRORS, ValueError) as exc:
            self._failures += 1
            delay = min(s.reopen_max, s.reopen_min * 2 ** (self._failures - 1))
            self._next_open = time.monotonic() + delay
            self.last_error = f"cannot open {s.port}: {exc}"
            raise PortLost(self.last_error) from exc
        self._failures = 0
        self._next_open = 0.0
        self._failure = None
        self._chunks.clear()
        self.opens += 1

    def close(self) -> None:
        self.stop_reading()
        ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(*PORT_ERRORS):
                ser.close()

    def _lost(self, exc: BaseException) -> None:
        self.losses += 1
        self.last_error = f"{self.settings.port}: {exc}"
        self._failure = exc
        self.close()
        # First reopen attempt waits reopen_min: a vanished device node needs a moment.
        self._failures = max(self._failures, 1)
        self._next_open = time.monotonic() + self.settings.reopen_min
        if self._wakeup is not None:
            self._wakeup.set()

    # ------------------------------------------------------------------ reading
    def start_reading(self) -> None:
        if self._ser is None or self._reading:
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(self._ser.fileno(), self._on_readable)
        self._reading = True

    def stop_reading(self) -> None:
        if self._reading and self._ser is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._ser.fileno())
        self._reading = False

    def _on_readable(self) -> None:
        ser = self._ser
        if ser is None:
            return
        try:
            data = ser.read(65536)
        except PORT_ERRORS as exc:
            self._lost(exc)
            return
        if data:
            self._chunks.append(data)
            if self._wakeup is not None:
                self._wakeup.set()

    async def read(self, within: float | None) -> bytes:
        """Everything received so far (at least one byte); ``TimeoutError`` after ``within`` s."""
        while not self._chunks:
            if self._failure is not None:
                exc, self._failure = self._failure, None
                raise PortLost(str(exc)) from exc
            if self._ser is None:
                raise PortLost(f"{self.settings.port} is closed")
            self._wakeup = asyncio.Event()
            try:
                if within is None:
                    await self._wakeup.wait()
                else:
                    async with asyncio.timeout(within):
                        await self._wakeup.wait()
            finally:
                self._wakeup = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def discard_input(self) -> None:
        """Drop everything received but not read yet (stale bytes before a request)."""
        self._chunks.clear()
        if self._ser is not None:
            try:
                self._ser.reset_input_buffer()
            except PORT_ERRORS as exc:
                self._lost(exc)
                raise PortLost(self.last_error) from exc

    def write(self, data: bytes) -> None:
        ser = self._ser
        if ser is None:
            raise PortLost(f"{self.settings.port} is closed")
        try:
            n = ser.write(data)
        except PORT_ERRORS as exc:
            self._lost(exc)
            raise PortLost(self.last_error) from exc
        if n is not None and n < len(data):
            raise PortLost(f"{self.settings.port}: output buffer full ({n}/{len(data)} bytes sent)")

    async def write_all(self, data: bytes, within: float) -> None:
        """Write every byte, waiting for the port to drain when its buffer is full (bulk
        transfers such as a firmware image); ``PortLost`` if it does not drain in ``within`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        view = memoryview(data)
        while view:
            ser = self._ser
            if ser is None:
                raise PortLost(f"{self.settings.port} is closed")
            try:
                n = ser.write(view) or 0
            except PORT_ERRORS as exc:
                self._lost(exc)
                raise PortLost(self.last_error) from exc
            view = view[n:]
            if view:
                if loop.time() > deadline:
                    raise PortLost(f"{self.settings.port}: output did not drain in {within:g}s")
                ready: asyncio.Future[None] = loop.create_future()
                fd = ser.fileno()
                loop.add_writer(fd, _resolve, ready)
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await ready
                except TimeoutError:
                    raise PortLost(f"{self.settings.port}: output did not drain") from None
                finally:
                    loop.remove_writer(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SharedPort:
    """A ``SerialLink`` shared by the devices on one port, with one exchange at a time."""

    def __init__(self, settings: PortSettings) -> None:
        self.link = SerialLink(settings)
        self.lock = asyncio.Lock()

    def ensure_open(self) -> SerialLink:
        """The open link; ``PortLost`` while the port is missing or its backoff runs."""
        link = self.link
        if not link.is_open:
            wait = link.backoff_remaining()
            if wait > 0:
                raise PortLost(f"{link.last_error or link.settings.port}; retry in {wait:.1f}s")
            link.open()
        return link
