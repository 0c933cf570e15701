"""Flow control by bytes: how much may be in the pipe, from the measured link (BBR-like).

Why: a window of N batches is seconds of telemetry on a 64 kbit/s link; everything published
sits in the TLS stream (paho's buffer, the socket, the modem) ahead of any alert published
later, and a TCP stream cannot be overtaken. So the uplink keeps at most ``cwnd`` bytes
*in the pipe* (published, PUBACK not yet received), sized to the measured bandwidth-delay
product, and lets the alert lane skip the telemetry queue in the outbox. An alert then waits
behind at most ``cwnd`` bytes (about two round trips), not behind the whole window.

Estimates (per connection, from PUBACK timing; the broker answers as soon as the PUBLISH
arrived, so the ingest's commit time is not in them):
- ``base_rtt``: the smallest PUBACK round trip of a small message (< ``SMALL`` bytes), a
  windowed minimum (``RTT_WINDOW``); a small message waits behind nothing of its own size.
- ``rate`` (bytes/s): windowed maximum (``RATE_WINDOW``) of delivery-rate samples of flights of
  at least ``MIN_SAMPLE`` bytes: a flight sent into an idle pipe gives
  ``size / (rtt - base_rtt)`` (its serialisation time); a flight sent behind others gives
  ``size / (puback - previous puback)`` (the ack clock of a busy pipe).
- ``cwnd = max(GAIN x rate x base_rtt, MIN_CWND)``; before any estimate, ``INITIAL_CWND``
  . One flight always fits an empty pipe. The alert lane may
  exceed cwnd by ``ALERT_HEADROOM`` (alerts are small).
Nothing here blocks or sleeps; the uplink calls ``on_send``/``on_puback`` on its event loop.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

SMALL = 512
MIN_SAMPLE = 1024
RTT_WINDOW = 120.0
RATE_WINDOW = 30.0
GAIN = 2.0
MIN_CWND = 4 * 1024
INITIAL_CWND = 16 * 1024
ALERT_HEADROOM = 64 * 1024


@dataclass(slots=True)
class _Sent:
    size: int
    at: float
    behind: bool  # other flights were in the pipe when this one was published


class _WindowedExtreme:
    """Max (or min) of (time, value) samples over a sliding time window."""

    def __init__(self, window: float, maximum: bool) -> None:
        self.window = window
        self.maximum = maximum
        self._q: collections.deque[tuple[float, float]] = collections.deque()

    def add(self, now: float, v: float) -> None:
        q = self._q
        better = (lambda a, b: a >= b) if self.maximum else (lambda a, b: a <= b)
        while q and better(v, q[-1][1]):
            q.pop()
        q.append((now, v))
        self.expire(now)

    def expire(self, now: float) -> None:
        q = self._q
        while len(q) > 1 and q[0][0] < now - self.window:
            q.popleft()

    def get(self, now: float) -> float | None:
        self.expire(now)
        return self._q[0][1] if self._q else None


class LinkEstimate:
    """Bandwidth and round trip of the current connection, and the byte window they allow."""

    def __init__(self) -> None:
        self._rtt = _WindowedExtreme(RTT_WINDOW, maximum=False)
        self._rate = _WindowedExtreme(RATE_WINDOW, maximum=True)
        self._sent: dict[int, _Sent] = {}
        self._last_puback = 0.0
        self.in_pipe = 0  # bytes published, PUBACK not received
        self.largest = 0
        self.samples = 0

    def reset(self) -> None:
        """A new connection: the pipe is empty (estimates of the link are kept)."""
        self._sent.clear()
        self.in_pipe = 0

    def on_send(self, key: int, size: int, now: float) -> None:
        self._sent[key] = _Sent(size, now, bool(self._sent))
        self.in_pipe += size
        self.largest = max(self.largest, size)

    def on_puback(self, key: int, now: float) -> None:
        s = self._sent.pop(key, None)
        if s is None:
            return
        self.in_pipe -= s.size
        rtt = now - s.at
        if s.size < SMALL:
            self._rtt.add(now, rtt)
        base = self._rtt.get(now)
        if s.size >= MIN_SAMPLE:
            if s.behind and self._last_puback > s.at:
                dt = now - self._last_puback
            elif base is not None:
                dt = rtt - base
            else:
                dt = 0.0
            if dt > 0.001:
                self._rate.add(now, s.size / dt)
                self.samples += 1
        self._last_puback = now

    def forget(self, key: int) -> None:
        s = self._sent.pop(key, None)
        if s is not None:
            self.in_pipe -= s.size

    def base_rtt(self, now: float) -> float | None:
        return self._rtt.get(now)

    def rate(self, now: float) -> float | None:
        return self._rate.get(now)

    def cwnd(self, now: float) -> int:
        rate, rtt = self._rate.get(now), self._rtt.get(now)
        if rate is None or rtt is None:
            return INITIAL_CWND
        return int(max(GAIN * rate * rtt, MIN_CWND))

    def may_send(self, size: int, now: float, *, alert: bool = False) -> bool:
        """True if a flight of ``size`` bytes fits the window (one flight always fits)."""
        if self.in_pipe == 0:
            return True
        limit = self.cwnd(now) + (ALERT_HEADROOM if alert else 0)
        return self.in_pipe + size <= limit

    def stats(self, now: float) -> dict[str, int | float]:
        rate, rtt = self._rate.get(now), self._rtt.get(now)
        return {"link_rate_bps": round(8 * rate) if rate else 0,
                "link_base_rtt_ms": round(1000 * rtt, 1) if rtt else 0,
                "cwnd_bytes": self.cwnd(now), "pipe_bytes": self.in_pipe}
