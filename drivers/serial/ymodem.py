"""YMODEM (batch, CRC-16, 1 KiB blocks) sender for device bootloaders, asyncio, no I/O of its own.

Why our own and not a PyPI library: ``xmodem`` (0.5.0) implements XMODEM/XMODEM-1k only (its
docs say YMODEM is pending); ``ymodem`` (1.5.3) sends files from paths with blocking reads and
its own sleeps, and has no way to cancel a transfer from the outside. A bootloader update on the
gateway's event loop needs an async sender that works on an in-memory image, reports progress
and aborts cleanly (CAN CAN) when its task is cancelled. The protocol is small (Chuck Forsberg's
ymodem.txt, section 7.4); tested against lrzsz's ``rb`` as the receiver.

Transfer: receiver sends 'C' -> block 0 (SOH, "name\\0size\\0"; resent on 'C' or NAK within
``start_timeout``) -> ACK, 'C' -> data blocks
(STX, 1024 bytes, last padded with 0x1A; receiver truncates to size) each ACKed, NAK = resend
(up to ``retries``) -> EOT, NAK, EOT, ACK -> 'C' -> empty block 0 (end of batch) -> ACK (the
last exchange best effort: receivers often exit without that ACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

SOH, STX, EOT, ACK, NAK, CAN, CRC = 0x01, 0x02, 0x04, 0x06, 0x15, 0x18, 0x43
BLOCK = 1024
PAD = 0x1A


class YmodemError(Exception):
    """The transfer failed (timeout, too many NAKs, receiver cancelled, link lost)."""


class Link(Protocol):
    async def read(self, within: float | None) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def write_all(self, data: bytes, within: float) -> None: ...


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def block(seq: int, payload: bytes, size: int) -> bytes:
    data = payload.ljust(size, bytes([PAD]) if size == BLOCK else b"\0")
    head = bytes([STX if size == BLOCK else SOH, seq & 0xFF, 0xFF - (seq & 0xFF)])
    return head + data + crc16(data).to_bytes(2, "big")


class YmodemSender:
    def __init__(
        self,
        link: Link,
        *,
        start_timeout: float = 30.0,
        block_timeout: float = 10.0,
        retries: int = 10,
    ) -> None:
        self.link = link
        self.start_timeout = start_timeout
        self.block_timeout = block_timeout
        self.retries = retries
        self._buf = bytearray()
        self.resends = 0

    async def _byte(self, within: float) -> int:
        deadline = time.monotonic() + within
        while not self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._buf += await self.link.read(remaining)
        b = self._buf[0]
        del self._buf[0]
        return b

    async def _expect(self, wanted: set[int], within: float, what: str) -> int:
        deadline = time.monotonic() + within
        cans = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                b = await self._byte(max(0.0, remaining))
            except TimeoutError:
                raise YmodemError(f"no {what} from the receiver within {within:g}s") from None
            if b == CAN:
                cans += 1
                if cans >= 2:
                    raise YmodemError("the receiver cancelled the transfer (CAN CAN)")
                continue
            cans = 0
            if b in wanted:
                return b

    async def _send_block(self, data: bytes, what: str, *, first: bool = False) -> None:
        """``first``: the first data block, which a receiver still asks for with 'C' (like the
        header) when it did not get it; a 'C' then means resend, like a NAK."""
        wanted = {ACK, NAK, CRC} if first else {ACK, NAK}
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
            await self.link.write_all(data, self.block_timeout)
            b = await self._expect(wanted, self.block_timeout, f"ACK for {what}")
            if b == ACK:
                return
        raise YmodemError(f"{what}: {self.retries} NAKs in a row")

    async def _send_header(self, data: bytes) -> None:
        """Block 0 until ACKed, within ``start_timeout``; a 'C' (or NAK) instead of the ACK means
        the receiver did not get it: send it again. Bootloaders, lrzsz's rb among them, flush
        their input right after sending 'C', so a header that arrives at once can be dropped
        (the more likely the busier the receiver's CPU); the receiver then asks again with 'C'
        after its own timeout (rb: 10 s), which may exceed ``block_timeout``."""
        deadline = time.monotonic() + self.start_timeout
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
            await self.link.write_all(data, self.block_timeout)
            remaining = max(0.0, deadline - time.monotonic())
            what = f"ACK for the header block (start_timeout {self.start_timeout:g}s)"
            b = await self._expect({ACK, NAK, CRC}, remaining, what)
            if b == ACK:
                return
        raise YmodemError(f"the header block: {self.retries} refusals in a row")

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.link.write(bytes([CAN] * 5) + b"\b" * 5)

    async def send(
        self, name: str, data: bytes, progress: Callable[[int, int], None] | None = None
    ) -> None:
        try:
            await self._send(name, data, progress)
        except asyncio.CancelledError:
            self.abort()
            raise
        except YmodemError:
            self.abort()
            raise

    async def _send(
        self, name: str, data: bytes, progress: Callable[[int, int], None] | None
    ) -> None:
        total = len(data)
        await self._expect({CRC}, self.start_timeout, "'C' (receiver ready)")
        # name NUL size NUL: no mtime/mode (lrzsz rb 0.12 double-frees when an mtime comes
        # with a last partial block)
        header = name.encode()[:100] + b"\0" + str(total).encode() + b"\0"
        await self._send_header(block(0, header, 128))
        await self._expect({CRC}, self.block_timeout, "'C' after the header")
        sent = 0
        seq = 1
        while sent < total:
            chunk = data[sent : sent + BLOCK]
            await self._send_block(block(seq, chunk, BLOCK), f"block {seq}", first=seq == 1)
            sent += len(chunk)
            seq += 1
            if progress is not None:
                progress(sent, total)
        for attempt in range(self.retries + 1):
            await self.link.write_all(bytes([EOT]), self.block_timeout)
            b = await self._expect({ACK, NAK}, self.block_timeout, "ACK for EOT")
            if b == ACK:
                break
            if attempt == self.retries:
                raise YmodemError("EOT never acknowledged")
        # The file is complete at the receiver once EOT is ACKed. The end-of-batch block is
        # best effort: lrzsz's rb, like many bootloaders, exits without acknowledging it.
        quick = min(self.block_timeout, 1.0)
        try:
            await self._expect({CRC}, quick, "'C' before the end-of-batch block")
            await self.link.write_all(block(0, b"", 128), quick)
            await self._expect({ACK}, quick, "ACK for the end-of-batch block")
        except YmodemError:
            pass
        if progress is not None and total == 0:
            progress(0, 0)
