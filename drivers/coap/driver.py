"""CoAP push driver: an aiocoap server where constrained devices POST readings to ``/d/{id}``.

One ``coap`` device of the gateway serves many constrained devices; each sample carries the
constrained device's id as ``Sample.device``.

Invariants:
- ``2.04 Changed`` is sent only after ``await emit(samples, durable=True)`` returned, i.e. the
  samples are committed to the outbox: an acknowledged reading survives a crash. If emit
  fails the device gets ``5.03`` (with Max-Age) and retries; nothing is half-stored.
- Checks run in this order, each answered with its own code and counted with ``ctx.count``:
  no valid credentials (4.01 ``unauthenticated``; also for paths of unknown devices, so ids
  do not leak to unauthenticated peers), unknown device (4.04 ``unknown_device``),
  credentials of another device (4.03 ``forbidden``), content format (4.15
  ``unsupported_format``), payload size (4.13 ``too_large``), token bucket (4.29
  ``rate_limited``, Max-Age = seconds to wait), payload (4.00 ``malformed``, diagnostic text
  in the payload).
- Block-wise uploads (Block1) are checked BEFORE aiocoap's reassembly, on every block: a block
  from a peer that is not authenticated for the device is answered 4.01 and not kept, and an
  upload whose next block (or announced Size1) would pass ``max_payload`` is answered 4.13
  (with Size1 = the limit). At most ``MAX_ASSEMBLIES`` uploads are reassembled at once (5.03
  beyond). So unauthenticated peers cannot make the gateway buffer anything.
- Authentication is OSCORE (per-device keys, replay protection; aiocoap's
  ``OscoreSiteWrapper``); requests without it are refused unless the device is configured
  ``insecure_no_auth``. Only the udp6 transport is started (no TCP/TLS/WS servers).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from edgegw import (
    DeviceContext,
    DriverOptions,
    Emit,
    PermanentError,
    PushDriver,
    Sample,
    TransientError,
    now_ms,
)

from . import payload as pl
from .options import CoapOptions, ConstrainedDevice
from .security import close_contexts, label, load_contexts

TEXT_PLAIN = 0
#: block-wise uploads being reassembled at once (each at most ``max_payload`` bytes)
MAX_ASSEMBLIES = 64


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per accepted request."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def _reply(code: Code, text: str = "", max_age: int | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, payload=text.encode())
    if text:
        msg.opt.content_format = TEXT_PLAIN
    if max_age is not None:
        msg.opt.max_age = max_age
    return msg


def pending_uploads(spool: Any) -> int:
    """Block-wise uploads aiocoap's ``Block1Spool`` is reassembling (its TimeoutDict's items;
    aiocoap 0.4 has no public accessor, hence the guarded attribute walk)."""
    items = getattr(getattr(spool, "_assemblies", None), "_items", None)
    return len(items) if isinstance(items, dict) else 0


class DeviceEndpoint(resource.Resource, resource.PathCapable):
    """The site root; serves ``/d/{device_id}``: authenticate, rate-limit, decode, emit
    durably, then acknowledge."""

    def __init__(self, driver: CoapDriver) -> None:
        super().__init__()
        self.driver = driver

    async def render_to_pipe(self, pipe: Any) -> None:
        """Refuse a Block1 block before aiocoap appends it to a reassembly buffer."""
        refusal = self.driver.check_block(pipe.request, self._block1)
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        await super().render_to_pipe(pipe)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.driver.handle(request)


class CoapDriver(PushDriver):
    """CoAP server for constrained devices (see drivers/coap/README.md)."""

    Options: ClassVar[type[DriverOptions]] = CoapOptions

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        # The server itself only reports its health; readings carry the constrained device's id.
        return ("_status",)

    @classmethod
    def sub_devices(cls, options: DriverOptions) -> Mapping[str, Sequence[str]]:
        """Every configured constrained device (the metrics come with each request)."""
        assert isinstance(options, CoapOptions)
        return {d.id: () for d in options.devices}

    def __init__(self, options: DriverOptions) -> None:
        if not isinstance(options, CoapOptions):
            options = CoapOptions.model_validate(options.model_dump())
        super().__init__(options)
        self.opts: CoapOptions = options
        self.devices: dict[str, ConstrainedDevice] = {d.id: d for d in options.devices}
        self._by_label = {label(d.id): d.id for d in options.devices if d.oscore}
        self._buckets = {d.id: TokenBucket(d.rate, d.burst) for d in options.devices}
        self._creds: Any = None
        self._server: aiocoap.Context | None = None
        self._emit: Emit | None = None
        self.ready = asyncio.Event()
        self.responses: dict[str, int] = {}

    @classmethod
    def bus_key(cls, options: DriverOptions) -> str | None:
        return None

    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)
        try:
            self._creds = await ctx.run_blocking(load_contexts, ctx.state_dir, self.opts.devices)
        except Exception as exc:  # lock held by another process, unreadable state dir...
            raise PermanentError(
                f"cannot load OSCORE contexts under {ctx.state_dir / 'oscore'}: "
                f"{type(exc).__name__}: {exc} (is another gateway using this state dir?)"
            ) from exc
        for dev in self.opts.devices:
            if dev.insecure_no_auth:
                ctx.log.warning("CoAP device %s accepts UNAUTHENTICATED requests", dev.id)

    async def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()
        if self._creds is not None:
            creds, self._creds = self._creds, None
            close_contexts(creds)
        self.ready.clear()

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        # The endpoint is the whole site (it parses the path itself): aiocoap's Site would
        # deep-copy every request to strip the path prefix, ~15% of the per-request CPU.
        site = self.endpoint = DeviceEndpoint(self)
        host, port = self.opts.bind()
        try:
            self._server = await aiocoap.Context.create_server_context(
                OscoreSiteWrapper(site, self._creds),
                bind=(host, port),
                transports=["udp6"],
                server_credentials=self._creds,
            )
        except OSError as exc:
            raise TransientError(f"cannot listen on {self.opts.listen} (udp): {exc}") from exc
        self.ctx.log.info("CoAP server listening on %s for %d devices", self.opts.listen,
                          len(self.devices))
        self.ready.set()
        try:
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            self.ready.clear()
            server, self._server = self._server, None
            if server is not None:
                await server.shutdown()

    # ------------------------------------------------------------------ one request
    def _refuse(self, event: str, code: Code, text: str, max_age: int | None = None
                ) -> aiocoap.Message:
        self.ctx.count(event)
        self.ctx.log.debug("CoAP request refused: %s %s: %s", code, event, text)
        return self._answer(_reply(code, text, max_age))

    def _answer(self, msg: aiocoap.Message) -> aiocoap.Message:
        key = msg.code.dotted
        self.responses[key] = self.responses.get(key, 0) + 1
        return msg

    def _identify(self, request: aiocoap.Message
                  ) -> tuple[ConstrainedDevice | None, aiocoap.Message | None]:
        """(device, None) for a request its sender may make, else (None, refusal)."""
        path = request.opt.uri_path
        device_id = path[1] if len(path) == 2 and path[0] == "d" else None
        dev = self.devices.get(device_id) if device_id is not None else None
        claims = [c for c in request.remote.authenticated_claims if c in self._by_label]
        authenticated = self._by_label[claims[0]] if claims else None

        if authenticated is None and not (dev is not None and dev.insecure_no_auth):
            return None, self._refuse("unauthenticated", Code.UNAUTHORIZED,
                                      "OSCORE-protected request required")
        if dev is None:
            return None, self._refuse("unknown_device", Code.NOT_FOUND, "no such device")
        if authenticated is not None and authenticated != dev.id:
            return None, self._refuse("forbidden", Code.FORBIDDEN,
                                      "credentials belong to another device")
        return dev, None

    def check_block(self, request: aiocoap.Message, spool: Any) -> aiocoap.Message | None:
        """A refusal for a Block1 block that must not be buffered, else None (pass it on)."""
        block1 = request.opt.block1
        if block1 is None:
            return None
        _dev, refusal = self._identify(request)
        if refusal is not None:
            return refusal
        limit = self.opts.max_payload
        size1 = request.opt.size1
        if block1.start + len(request.payload) > limit or (size1 is not None and size1 > limit):
            msg = self._refuse("too_large", Code.REQUEST_ENTITY_TOO_LARGE,
                               f"payload over {limit} bytes")
            msg.opt.size1 = limit
            return msg
        if block1.block_number == 0 and pending_uploads(spool) >= MAX_ASSEMBLIES:
            return self._refuse("busy", Code.SERVICE_UNAVAILABLE,
                                "too many block-wise uploads in progress", max_age=5)
        return None

    async def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        dev, refusal = self._identify(request)
        if refusal is not None or dev is None:
            assert refusal is not None
            return refusal
        cf = request.opt.content_format
        cf_number = None if cf is None else int(cf)
        if cf_number is not None and cf_number not in pl.SUPPORTED:
            return self._refuse("unsupported_format", Code.UNSUPPORTED_CONTENT_FORMAT,
                                "use content-format 50 (JSON) or 60 (CBOR)")
        if len(request.payload) > self.opts.max_payload:
            return self._refuse("too_large", Code.REQUEST_ENTITY_TOO_LARGE,
                                f"payload over {self.opts.max_payload} bytes")
        wait = self._buckets[dev.id].take()
        if wait > 0:
            return self._refuse("rate_limited", Code.TOO_MANY_REQUESTS, "slow down",
                                max_age=max(1, math.ceil(wait)))
        try:
            doc = pl.decode(request.payload, cf_number)
            samples = pl.to_samples(
                doc, dev.id, now_ms(),
                max_samples=self.opts.max_samples,
                max_skew_ms=int(self.opts.max_clock_skew * 1000),
            )
        except pl.Malformed as exc:
            return self._refuse("malformed", Code.BAD_REQUEST, str(exc))
        return await self._store(samples)

    async def _store(self, samples: list[Sample]) -> aiocoap.Message:
        emit = self._emit
        if emit is None:
            return self._refuse("not_ready", Code.SERVICE_UNAVAILABLE, "starting", max_age=1)
        try:
            await emit(samples, durable=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.ctx.log.info("CoAP: storing %d samples failed: %s", len(samples), exc)
            return self._refuse("emit_failed", Code.SERVICE_UNAVAILABLE, "try again", max_age=5)
        self.ctx.count("accepted")
        self.ctx.count("samples", len(samples))
        return self._answer(_reply(Code.CHANGED))

    def stats(self) -> dict[str, int | float | dict[str, int]]:
        return {"responses": dict(self.responses)}
