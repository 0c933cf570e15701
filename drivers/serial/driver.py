"""Serial sensor driver: free-running ``stream`` sensors (push), ``request``/reply sensors (polled).

``SerialDriver(options)`` returns a ``SerialStreamDriver`` (a ``PushDriver``) for
``mode: stream`` and a ``SerialRequestDriver`` (a ``PolledDriver``) for ``mode: request``, so
one entry point serves both and the runtime dispatches on the instance as for any driver.

Invariants:
- Decoding is done by ``framing`` (no I/O); every decoder error is passed to ``ctx.count``.
- Stream mode never ends on a port failure: it closes the port, emits ``_status`` COMM_ERROR
  once per outage, and reopens with backoff until the port is back (no runtime restart).
  Every ``status_interval`` it emits ``_status``: value = bad frames in the interval, quality
  GOOD, BAD_DATA (bad frames seen) or COMM_ERROR (port down / silent past ``silence_timeout``).
- Request mode: one exchange per ``read()`` under the port's lock; stale input is discarded
  before the request. No reply within ``reply_timeout`` -> ``TransientError`` (comm_error);
  only malformed bytes -> ``BadDataError`` (bad_data); port missing -> ``TransientError`` and
  the next poll reopens it (after the backoff).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from edgegw import (
    BadDataError,
    DeviceContext,
    Driver,
    DriverOptions,
    Emit,
    FirmwareImage,
    FirmwareProgress,
    PermanentError,
    PolledDriver,
    PushDriver,
    Quality,
    ReadResult,
    Sample,
    TransientError,
    Value,
    now_ms,
)

from .framing import make_decoder
from .options import SerialOptions
from .port import PortLost, PortSettings, SerialLink, SharedPort
from .ymodem import YmodemError, YmodemSender

STATUS = "_status"


def _shared_key(opts: SerialOptions) -> str:
    return f"serial:{opts.port}"


class SerialDriver(Driver):
    """Serial sensors on a local port (USB adapter, UART, RS-232/485); see the README."""

    Options: ClassVar[type[DriverOptions]] = SerialOptions

    def __new__(cls, options: DriverOptions) -> SerialDriver:
        if cls is SerialDriver:
            mode = getattr(options, "mode", "stream")
            cls = SerialRequestDriver if mode == "request" else SerialStreamDriver
        return super().__new__(cls)

    def __init__(self, options: DriverOptions) -> None:
        if not isinstance(options, SerialOptions):
            options = SerialOptions.model_validate(options.model_dump())
        super().__init__(options)
        self.opts: SerialOptions = options
        self.decoder = make_decoder(options)
        self.frames = 0
        self.errors: Counter[str] = Counter()

    @classmethod
    def bus_key(cls, options: DriverOptions) -> str | None:
        # Request-mode devices on one port share the bus (one exchange at a time).
        if isinstance(options, SerialOptions) and options.mode == "request":
            return _shared_key(options)
        return None

    @classmethod
    def writable_points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, SerialOptions)
        return list(options.commands)

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        return options.metric_names() if isinstance(options, SerialOptions) else ()

    def _count(self, errors: Counter[str]) -> int:
        """Pass decoder errors to the context; returns the number of bad frames among them."""
        bad = 0
        for name, n in errors.items():
            if n:
                self.ctx.count(name, n)
                self.errors[name] += n
                if name != "garbage_bytes":
                    bad += n
        return bad

    def stats(self) -> dict[str, int | float | dict[str, int]]:
        return {"frames": self.frames, "errors": dict(self.errors)}


class SerialStreamDriver(SerialDriver, PushDriver):
    """A free-running sensor: every decoded frame becomes samples as it arrives."""

    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)
        self.link = SerialLink(PortSettings.of(self.opts))
        self._bad_in_interval = 0
        self._down = False
        self._silent = False

    async def close(self) -> None:
        link: SerialLink | None = getattr(self, "link", None)
        if link is not None:
            link.close()

    async def run(self, emit: Emit) -> None:
        status = asyncio.create_task(
            self._status_loop(emit), name=f"serial-status:{self.ctx.device_id}"
        )
        try:
            while True:
                await self._connect(emit)
                try:
                    await self._pump(emit)
                except PortLost as exc:
                    self.ctx.count("port_lost")
                    await self._set_down(emit, f"lost: {exc}")
        finally:
            status.cancel()
            self.link.close()

    async def _connect(self, emit: Emit) -> None:
        """Open the port, retrying with backoff; reports COMM_ERROR once per outage."""
        while True:
            wait = self.link.backoff_remaining()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                self.link.open()
            except PortLost as exc:
                self.ctx.count("open_failed")
                await self._set_down(emit, str(exc))
                continue
            self.link.start_reading()
            self.decoder.reset()
            if self._down:
                self._down = False
                self.ctx.log.info("serial port %s is back", self.opts.port)
                await emit([Sample(self.ctx.device_id, STATUS, now_ms(), 0, Quality.GOOD)])
            return

    async def _set_down(self, emit: Emit, why: str) -> None:
        if not self._down:
            self._down = True
            self.ctx.log.info("serial port %s unavailable: %s", self.opts.port, why)
            await emit([Sample(self.ctx.device_id, STATUS, now_ms(), None, Quality.COMM_ERROR)])

    async def _pump(self, emit: Emit) -> None:
        device = self.ctx.device_id
        silence = self.opts.silence_timeout
        while True:
            try:
                chunk = await self.link.read(silence)
            except TimeoutError:
                if not self._silent:
                    self._silent = True
                    self.ctx.count("silence")
                    self.ctx.log.info("serial sensor %s silent for %.1fs", device, silence)
                    await emit([Sample(device, STATUS, now_ms(), None, Quality.COMM_ERROR)])
                continue
            result = self.decoder.feed(chunk)
            self._bad_in_interval += self._count(result.errors)
            if result.records:
                ts = now_ms()
                self.frames += len(result.records)
                samples = [
                    Sample(device, name, ts, value)
                    for record in result.records
                    for name, value in record.items()
                ]
                if self._silent:
                    self._silent = False
                    samples.append(Sample(device, STATUS, ts, 0, Quality.GOOD))
                await emit(samples)

    async def _status_loop(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        period = self.opts.status_interval
        deadline = loop.time()
        while True:
            deadline += period
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            bad, self._bad_in_interval = self._bad_in_interval, 0
            if self._down or self._silent:
                sample = Sample(self.ctx.device_id, STATUS, now_ms(), bad, Quality.COMM_ERROR)
            else:
                quality = Quality.BAD_DATA if bad else Quality.GOOD
                sample = Sample(self.ctx.device_id, STATUS, now_ms(), bad, quality)
            await emit([sample])

    def stats(self) -> dict[str, int | float | dict[str, int]]:
        link: SerialLink | None = getattr(self, "link", None)
        extra = {"opens": link.opens, "losses": link.losses} if link else {}
        return super().stats() | extra


class SerialRequestDriver(SerialDriver, PolledDriver):
    """A query/response sensor: each poll writes ``request`` and decodes one reply frame."""

    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)
        self._key = _shared_key(self.opts)
        settings = PortSettings.of(self.opts)
        self.port: SharedPort = ctx.shared(self._key, lambda: SharedPort(settings))
        if self.port.link.settings != settings:
            ctx.release(self._key)
            raise PermanentError(
                f"port {self.opts.port} is shared with devices using other settings "
                f"({self.port.link.settings}); give every device on one port the same "
                "baudrate/bytesize/parity/stopbits/exclusive/reopen_*"
            )
        self._request = self.opts.request_bytes()
        self._opened = True

    async def close(self) -> None:
        if getattr(self, "_opened", False):
            self._opened = False
            port: Any = self.ctx.release(self._key)
            if port is not None:
                port.link.close()

    async def read(self) -> ReadResult:
        async with self.port.lock:
            try:
                return await self._exchange()
            except PortLost as exc:
                self.ctx.count("port_unavailable")
                raise TransientError(str(exc)) from exc

    async def write(self, point: str, value: Value) -> None:
        """Send the command configured for ``point``; with ``ack``, await the device's reply."""
        cmd = self.opts.commands.get(point)
        if cmd is None:
            raise PermanentError(
                f"no command for point {point!r} (configure options.commands.{point})"
            )
        encoding = self.opts.line.encoding if self.opts.line is not None else "latin-1"
        try:
            data = cmd.send.format(value=value).encode(encoding)
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise PermanentError(f"cannot format {value!r} for {point!r}: {exc}") from exc
        async with self.port.lock:
            try:
                await self._command(data, cmd.ack, point)
            except PortLost as exc:
                self.ctx.count("port_unavailable")
                raise TransientError(str(exc)) from exc

    async def update_firmware(self, image: FirmwareImage, progress: FirmwareProgress) -> None:
        """YMODEM the image to the device's bootloader (options.bootloader), holding the port."""
        boot = self.opts.bootloader
        if boot is None:
            raise PermanentError(
                f"device on {self.opts.port} has no `bootloader:` options; firmware updates "
                "need them (see drivers/serial/README.md)"
            )
        encoding = self.opts.line.encoding if self.opts.line is not None else "latin-1"
        async with self.port.lock:
            try:
                link = self.port.ensure_open()
                if boot.enter:
                    # stale replies out; a bootloader already waiting keeps its 'C' queued
                    link.discard_input()
                link.start_reading()
                try:
                    if boot.enter:
                        link.write(boot.enter.encode(encoding))
                    sender = YmodemSender(
                        link,
                        start_timeout=boot.start_timeout,
                        block_timeout=boot.block_timeout,
                        retries=boot.retries,
                    )
                    await sender.send(image.name, image.data, progress)
                    self.ctx.count("firmware_updates")
                finally:
                    link.stop_reading()
            except (PortLost, YmodemError) as exc:
                self.ctx.count("firmware_failures")
                # the link may be half-way through a block: start the next exchange clean
                self.port.link.close()
                why = f"firmware transfer to {self.opts.port} failed: {exc}"
                raise TransientError(why) from exc

    async def _command(self, data: bytes, ack: str | None, point: str) -> None:
        link = self.port.ensure_open()
        if ack is None:
            link.write(data)
            self.ctx.count("commands")
            return
        pattern = re.compile(ack)
        link.discard_input()
        link.start_reading()
        try:
            link.write(data)
            deadline = time.monotonic() + self.opts.reply_timeout
            buf = b""
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    buf += await link.read(remaining)
                except TimeoutError:
                    self.ctx.count("command_timeout")
                    raise TransientError(
                        f"no reply to the {point!r} command within {self.opts.reply_timeout:g}s"
                    ) from None
                if b"\n" in buf:
                    line = buf.split(b"\n", 1)[0].decode("latin-1").strip()
                    if pattern.search(line):
                        self.ctx.count("commands")
                        return
                    self.ctx.count("command_refused")
                    raise BadDataError(f"device refused the {point!r} command: {line!r}")
        finally:
            link.stop_reading()

    async def _exchange(self) -> ReadResult:
        link = self.port.ensure_open()
        self.decoder.reset()
        link.discard_input()
        link.start_reading()
        try:
            link.write(self._request)
            deadline = time.monotonic() + self.opts.reply_timeout
            seen: Counter[str] = Counter()
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    chunk = await link.read(remaining)
                except TimeoutError:
                    if seen:
                        raise BadDataError(
                            f"no valid reply within {self.opts.reply_timeout:g}s, "
                            f"only malformed data: {dict(seen)}"
                        ) from None
                    self.ctx.count("timeout")
                    raise TransientError(
                        f"no reply from {self.opts.port} within {self.opts.reply_timeout:g}s"
                    ) from None
                result = self.decoder.feed(chunk)
                self._count(result.errors)
                seen.update({k: v for k, v in result.errors.items() if k != "garbage_bytes"})
                if result.records:
                    self.frames += 1
                    if len(result.records) > 1:
                        self.ctx.count("extra_frames", len(result.records) - 1)
                    return result.records[0]
                if any(k != "garbage" for k in seen):
                    raise BadDataError(f"malformed reply from {self.opts.port}: {dict(seen)}")
        finally:
            link.stop_reading()
