"""Open data out: the ingest forwards newly stored readings to sinks.

- JSON per metric topic on a PLAIN Mosquitto (our own, on a free port, anonymous, no TLS: the
  kind of broker a plant already runs), read by a plain paho subscriber;
- InfluxDB line protocol to a file, every line parsed back with ``line-protocol-parser``
  (a maintained parser of the line protocol), including awkward strings that need escaping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from line_protocol_parser import parse_line
from paho.mqtt.enums import CallbackAPIVersion

from edgegw_cloud.sinks import Forwarder, Reading, SinkError, open_sink
from edgegw_cloud.sinks.influx import to_line

from .conftest import Cloud, GatewaySide, await_until, free_port, wait_until


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "plain.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(conf, 0o644)
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([mosq, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import socket

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(up, 10, "the plain mosquitto")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_forwarded_json_reading_arrives_at_a_plain_mqtt_subscriber(
    cloud: Cloud, tmp_path: Path, plain_broker: int
) -> None:
    got: list[tuple[str, dict[str, object]]] = []
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain-sub")
    subscribed = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("plant/#", qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((msg.topic, json.loads(msg.payload)))

    sub.on_message = on_message
    sub.connect("127.0.0.1", plain_broker)
    sub.loop_start()
    lines = tmp_path / "lines.txt"
    ingest = None
    gw = None
    try:
        assert subscribed.wait(10)
        ingest = cloud.ingest(forward=[f"mqtt://127.0.0.1:{plain_broker}/plant",
                                       f"influx+file://{lines}"])
        gw = GatewaySide(cloud.gateway("gw-fwd", tmp_path / "id"), tmp_path / "st", cloud.url)
        gw.start()
        await gw.append(6)
        await gw.append(6)
        await gw.drained(30)
        await await_until(lambda: len(got) >= 12, 15, "12 forwarded readings")
        assert ingest.forwarder is not None and ingest.forwarder.flush(10)
        with lock:
            topics = sorted(t for t, _ in got)
            first = next(p for t, p in got if t == "plant/gw-fwd/dev/m1")
        assert len(got) == 12
        assert set(topics) == {"plant/gw-fwd/dev/m1", "plant/gw-fwd/dev/m2"}
        assert first["gateway"] == "gw-fwd" and first["device"] == "dev"
        assert first["metric"] == "m1" and first["value"] == 0.0 and first["quality"] == 0
        assert str(first["time"]).endswith("Z") and isinstance(first["ts_ms"], int)
        # the same readings as line protocol, parsed by a real parser
        parsed = [parse_line(ln) for ln in lines.read_text().splitlines()]
        assert len(parsed) == 12
        assert {p["measurement"] for p in parsed} == {"edgegw"}
        assert {p["tags"]["gateway"] for p in parsed} == {"gw-fwd"}
        assert sorted(p["fields"]["m1"] for p in parsed if "m1" in p["fields"]) == [
            float(i) for i in range(6)]
        stats = ingest.stats()["forward"]
        assert isinstance(stats, dict) and stats["queue_dropped"] == 0
        assert all(s["written"] == 12 and s["dropped"] == 0 for s in stats["sinks"].values())
    finally:
        if gw is not None:
            await gw.close()
        if ingest is not None:
            ingest.stop()
        sub.loop_stop()
        sub.disconnect()


def test_line_protocol_escaping_and_types_parse_back() -> None:
    r = [
        Reading("gw 1,a", "dev=x", "temp c", 1_714_564_800_123, 21.5, 0),
        Reading("gw", "d", "state", 1, 'said "hi" \\ there, ok', 1),
        Reading("gw", "d", "count", 2, 42, 0),
        Reading("gw", "d", "on", 3, True, 0),
        Reading("gw", "d", "missing", 4, None, 2),
    ]
    parsed = [parse_line(to_line(x)) for x in r]  # type: ignore[arg-type]
    assert parsed[0]["tags"] == {"gateway": "gw 1,a", "device": "dev=x"}
    assert parsed[0]["fields"] == {"temp c": 21.5, "quality": 0}
    assert parsed[0]["time"] == 1_714_564_800_123_000_000
    assert parsed[1]["fields"]["state"] == 'said "hi" \\ there, ok'
    assert parsed[2]["fields"]["count"] == 42 and isinstance(parsed[2]["fields"]["count"], int)
    assert parsed[3]["fields"]["on"] is True
    assert parsed[4]["fields"] == {"quality": 2}
    assert to_line(Reading("gw", "cam", "frame", 5, b"\xff\xd8", 0)) is None


def test_a_failing_sink_is_counted_not_fatal(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="known schemes"):
        open_sink("kafka://x")
    port = free_port()  # nothing listens: every TCP write fails
    fwd = Forwarder([open_sink(f"influx+tcp://127.0.0.1:{port}"),
                     open_sink(f"influx+file://{tmp_path / 'ok.txt'}")])
    try:
        for i in range(3):
            fwd.offer([Reading("gw", "d", "m", i, float(i), 0)])
        assert fwd.flush(10)
        sinks = fwd.stats()["sinks"]
        assert sinks[f"influx+tcp://127.0.0.1:{port}"] == {"written": 0, "dropped": 3}
        assert sinks[f"influx+file://{tmp_path / 'ok.txt'}"] == {"written": 3, "dropped": 0}
    finally:
        fwd.close()
