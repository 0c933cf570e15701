"""One shared pymodbus client per physical bus (TCP endpoint or serial line).

Invariants:
- All unit ids on one bus share one ``ModbusBus`` (through ``DeviceContext.shared``); its lock
  guarantees one frame on the wire at a time, and RTU buses wait the inter-frame gap
  (>= 3.5 character times) between the end of one transaction and the next request.
- Every request runs with the calling device's own timeout and retry count.
- Failures leave as SDK errors only: ``TransientError`` (no connection, no answer),
  ``BadDataError`` (garbage, undecodable or short frames, exception responses via
  ``ExceptionResponseError``). Nothing else escapes ``request``.

Depends on two details of the pinned pymodbus 3.16.1: the transaction manager ``client.ctx``
reads ``comm_params.timeout_connect`` and ``retries`` per request, and a frame the decoder
cannot parse raises from ``ctx.callback_data`` (which would close the connection and leave the
request to time out). ``_guard_decoder`` turns that into an immediate, counted ``BadDataError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from edgegw import BadDataError, PermanentError, TransientError
from edgegw.drivers.modbus.options import ModbusOptions

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ExceptionResponseError(BadDataError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(
            f"{what}: exception response {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        )


class MalformedFrameError(BadDataError):
    """A frame arrived that pymodbus could not decode."""


class ModbusBus:
    """A pymodbus client plus the bus discipline (lock, inter-frame gap, error mapping)."""

    def __init__(self, options: ModbusOptions) -> None:
        self.endpoint = options.bus_endpoint()
        self.settings = _bus_settings(options)
        self.frame_gap = options.frame_gap()
        self._lock = asyncio.Lock()
        self._ready_at = 0.0
        self._rx_bytes = 0
        self.client = self._make_client(options)
        self._guard_decoder()
        self.counters: dict[str, int] = {}

    def _make_client(self, o: ModbusOptions) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        common: dict[str, Any] = {
            "timeout": o.timeout, "retries": o.retries, "trace_packet": self._trace_packet,
        }
        if o.transport == "rtu":
            assert o.serial_port is not None
            return AsyncModbusSerialClient(
                o.serial_port, framer=FramerType.RTU, baudrate=o.baudrate, parity=o.parity,
                stopbits=o.stopbits, bytesize=o.bytesize, **common,
            )
        assert o.host is not None
        framer = FramerType.RTU if o.transport == "rtu_over_tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(o.host, port=o.port, framer=framer, **common)

    def check_compatible(self, options: ModbusOptions) -> None:
        """Devices sharing a bus must agree on the line settings."""
        mine, theirs = self.settings, _bus_settings(options)
        diff = [f"{k} ({mine[k]} vs {theirs[k]})" for k in mine if mine[k] != theirs[k]]
        if diff:
            raise PermanentError(
                f"devices on {self.endpoint} disagree on {', '.join(diff)}; "
                "use the same line settings for every unit id on one bus"
            )

    # ----------------------------------------------------------------- pymodbus hooks
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx_bytes += len(data)
        return data

    def _guard_decoder(self) -> None:
        ctx = self.client.ctx
        original = ctx.callback_data

        def guarded(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
            try:
                return original(data, addr)
            except ModbusIOException as exc:
                future = ctx.response_future
                if not future.done():
                    future.set_exception(MalformedFrameError(f"{self.endpoint}: {exc}"))
                return len(data)

        ctx.callback_data = guarded  # type: ignore[method-assign]

    def _count(self, event: str) -> None:
        self.counters[event] = self.counters.get(event, 0) + 1

    # ----------------------------------------------------------------- requests
    async def request(
        self,
        call: Callable[..., Awaitable[ModbusPDU]],
        what: str,
        *,
        timeout_s: float,
        retries: int,
        **kwargs: Any,
    ) -> ModbusPDU:
        """Run one request (``call`` is a bound client method) under the bus discipline."""
        lock = self._lock
        await lock.acquire()  # (what ``async with lock`` does, without its two coroutine calls)
        gap = self.frame_gap  # 0 on TCP: no clock read per request
        try:
            if not self.client.connected:
                await self._connect(timeout_s)
            if gap and (wait := self._ready_at - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # the RTU inter-frame gap: protocol timing
            ctx = self.client.ctx
            ctx.comm_params.timeout_connect = timeout_s
            ctx.retries = retries
            rx_before = self._rx_bytes
            try:
                response = await call(**kwargs)
            except MalformedFrameError:
                self._count("malformed_frame")
                raise
            except ModbusIOException as exc:
                if self._rx_bytes != rx_before:
                    self._count("garbage")
                    raise BadDataError(f"{what}: unreadable answer from {self.endpoint}"
                                       ) from exc
                self._count("timeout")
                raise TransientError(f"{what}: no answer within {timeout_s:g}s") from exc
            except ConnectionException as exc:
                self._count("connection_lost")
                raise TransientError(f"{what}: connection to {self.endpoint} lost: {exc}"
                                     ) from exc
            except (ModbusException, OSError) as exc:
                self._count("io_error")
                raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
        finally:
            if gap:
                self._ready_at = time.monotonic() + gap
            lock.release()
        if response.isError():
            self._count("exception_response")
            raise ExceptionResponseError(int(getattr(response, "exception_code", 0)), what)
        return response

    async def _connect(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s + 1.0):  # not wait_for: see scheduler.run
                ok = await self.client.connect()
        except (TimeoutError, OSError):
            ok = False
        if not ok:
            self._count("connect_failed")
            raise TransientError(f"cannot connect to {self.endpoint}")

    def close(self) -> None:
        self.client.close()


def _bus_settings(o: ModbusOptions) -> dict[str, Any]:
    if o.transport == "tcp":
        return {"transport": o.transport}
    return {
        "transport": o.transport, "baudrate": o.baudrate, "parity": o.parity,
        "stopbits": o.stopbits, "bytesize": o.bytesize,
    }
