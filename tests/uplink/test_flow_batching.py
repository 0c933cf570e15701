"""Byte-based flow control, adaptive batch age and the link emulator, as units.

``LinkEstimate`` and ``AdaptiveAge`` are pure logic driven by an explicit clock here (their
inputs are PUBACK times and byte counters, nothing to mock). The link emulator test runs a real
echo server behind it and checks bytes and counters, not timing.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from linkemu import LinkEmulator  # tests/ is on sys.path (rootdir)

from edgegw.runtime.batching import AdaptiveAge
from edgegw.uplink.flow import INITIAL_CWND, MIN_CWND, LinkEstimate


def feed_link(est: LinkEstimate, rate: float, rtt: float, sizes: list[int], t: float = 0.0
              ) -> float:
    """Send flights one by one into an idle pipe of ``rate`` bytes/s and ``rtt`` seconds."""
    for mid, size in enumerate(sizes):
        est.on_send(mid, size, t)
        t += rtt + size / rate
        est.on_puback(mid, t)
        t += 0.01
    return t


def test_estimate_converges_to_the_link_and_sizes_the_window() -> None:
    est = LinkEstimate()
    assert est.cwnd(0.0) == INITIAL_CWND
    t = feed_link(est, 8000.0, 0.3, [100, 4000, 120, 6000, 3000])
    rate, rtt = est.rate(t), est.base_rtt(t)
    assert rtt is not None and abs(rtt - (0.3 + 100 / 8000)) < 1e-9  # a small message's RTT
    assert rate is not None and 7000 < rate < 9000
    assert MIN_CWND <= est.cwnd(t) <= 2 * 9000 * 0.32
    # a busy pipe: flights behind others are measured by the ack clock
    busy = LinkEstimate()
    busy.on_send(0, 100, 0.0)
    busy.on_puback(0, 0.3)
    for mid in range(1, 6):
        busy.on_send(mid, 4000, 1.0)
    for mid in range(1, 6):
        busy.on_puback(mid, 1.0 + 0.3 + mid * 4000 / 8000)
    r = busy.rate(4.0)
    assert r is not None and 7000 < r < 9000


def test_window_admits_one_flight_and_alerts_get_headroom() -> None:
    est = LinkEstimate()
    feed_link(est, 8000.0, 0.3, [100, 4000, 4000])
    now = 10.0
    assert est.may_send(50_000, now)  # an empty pipe always takes one flight
    est.on_send(100, 50_000, now)
    assert not est.may_send(1000, now)  # telemetry waits for PUBACKs
    assert est.may_send(300, now, alert=True)  # an alert may go now
    est.on_puback(100, now + 6.5)
    assert est.in_pipe == 0
    est.on_send(101, 900, now + 7)
    est.reset()  # a new connection starts with an empty pipe, estimates kept
    assert est.in_pipe == 0 and est.rate(now + 7) is not None


class FakeLink:
    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self.in_pipe = 0

    def rate(self, now: float) -> float | None:
        return self._rate

    def cwnd(self, now: float) -> int:
        return 10_000


def run_policy(link: FakeLink, bytes_per_s: dict[float, float], seconds: int) -> list[float]:
    """Drive AdaptiveAge with sealed bytes that shrink as batches grow (bytes(age))."""
    clock = [0.0]
    sealed = [0.0]
    policy = AdaptiveAge(lambda: int(sealed[0]), link, min_age=0.25, max_age_slow=3.0,
                         clock=lambda: clock[0])
    ages = []
    for _ in range(seconds):
        age = policy()
        ages.append(age)
        sealed[0] += bytes_per_s[min(bytes_per_s, key=lambda a: abs(a - age))]
        clock[0] += 1.0
    return ages


W1_BYTES = {0.25: 3100.0, 0.5: 3100.0, 1.0: 3100.0, 2.0: 2100.0, 3.0: 1400.0}


def test_age_grows_on_a_slow_link_and_stays_small_on_a_fast_one() -> None:
    slow = run_policy(FakeLink(8000.0), W1_BYTES, 40)
    assert slow[-1] == 3.0 and slow[-10:] == [3.0] * 10  # settles, no oscillation
    fast = run_policy(FakeLink(1_250_000.0), W1_BYTES, 40)
    assert set(fast) == {0.25}
    unknown = run_policy(FakeLink(None), W1_BYTES, 10)  # no estimate yet: latency first
    assert set(unknown) == {0.25}
    saturated = FakeLink(None)
    saturated.in_pipe = 9_000
    assert run_policy(saturated, W1_BYTES, 10)[-1] == 3.0


def test_link_emulator_forwards_every_byte_and_counts_them() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    payload = bytes(range(256)) * 200  # 51200 bytes
    with LinkEmulator(port, rate=1_000_000, delay=0.01, buffer=8192) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as c:
            c.sendall(payload)
            got = bytearray()
            c.settimeout(30)
            while len(got) < len(payload):
                chunk = c.recv(65536)
                assert chunk, "connection closed early"
                got += chunk
        assert bytes(got) == payload  # no loss, no reordering, through a small modem buffer
        counters = emu.counters()
        assert counters["up_bytes"] == counters["down_bytes"] == len(payload)
        assert counters["connections"] == 1
        emu.cut()
        with socket.create_connection(("127.0.0.1", emu.port)) as c:
            c.settimeout(10)
            with contextlib.suppress(ConnectionResetError):  # a cut link drops new connections
                assert c.recv(10) == b""
    srv.close()
