"""When the uplink connects again after a failed or lost connection: backoff, probe, spread.

Invariants (docs/delivery.md, "Reconnecting"):
- Backoff: exponential with full jitter, ``delay = uniform(0, min(max, min * 2**n))``; ``n``
  grows with every wait and is reset by the session only after a connection stayed up
  ``stable_after``. A broker that accepts connections and then drops them, refuses the
  certificate (TLS alert, CONNACK >= 0x80) or lets a handshake time out is retried on this
  backoff alone: no probe, so such a failure can never speed reconnects up.
- Prompt return: when the last attempt failed at TCP level (``TcpConnectError``: refused,
  unreachable, timed out; nothing accepted it), the wait also probes the broker with a bare TCP
  connect every ``probe_interval x U(1, 2)``. The first probe that connects ends the wait after a
  random spread ``U(0, spread)``. So the full (TLS + MQTT) connect starts at most
  ``2 x probe_interval + spread`` after the broker listens again (3 s at defaults), whatever the
  backoff had grown to; and a fleet's connects arrive spread over about
  ``probe_interval + spread`` (probe phase and spread drawn independently by each gateway), not
  in one instant.
- A probe is a TCP handshake closed at once: no TLS, no MQTT, nothing the broker has to
  authenticate, bounded by ``min(probe_interval, 2 s)``. The wait never ends later than the
  backoff delay: probing can only shorten it.
- Only the event loop's monotonic clock is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field


@dataclass
class ReconnectPolicy:
    backoff_min: float = 0.5
    backoff_max: float = 10.0
    probe_interval: float = 1.0  # 0 disables probing
    spread: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0  # backoff exponent
    delay: float = 0.0  # the backoff delay of the current/last wait (seconds)
    probes: int = 0
    probe_hits: int = 0
    #: loop time of the last probe that connected (None: none yet)
    last_probe_ok: float | None = None

    def reset(self) -> None:
        """The last connection was stable: start the backoff from ``backoff_min`` again."""
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.backoff_max, self.backoff_min * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        self.delay = self.rng.uniform(0, cap)
        return self.delay

    async def wait(self, host: str, port: int, *, probe: bool) -> str:
        """Wait before the next connect attempt; returns ``"backoff"`` or ``"probe"`` (a probe
        found the broker listening and ended the wait early)."""
        delay = self.next_delay()
        loop = asyncio.get_running_loop()
        if not probe or self.probe_interval <= 0:
            await asyncio.sleep(delay)  # the backoff delay itself, not synchronisation
            return "backoff"
        deadline = loop.time() + delay
        while True:
            now = loop.time()
            at = now + self.probe_interval * self.rng.uniform(1.0, 2.0)
            if at >= deadline:
                await asyncio.sleep(max(0.0, deadline - now))  # backoff ends first
                return "backoff"
            await asyncio.sleep(at - now)  # the probe period, not synchronisation
            if await self.probe(host, port):
                self.probe_hits += 1
                self.last_probe_ok = loop.time()
                spread = self.rng.uniform(0, self.spread)
                await asyncio.sleep(min(spread, max(0.0, deadline - loop.time())))
                return "probe"

    async def probe(self, host: str, port: int) -> bool:
        """True if something accepts a TCP connection on ``host:port`` (closed at once)."""
        self.probes += 1
        try:
            async with asyncio.timeout(min(self.probe_interval, 2.0)):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        return True
