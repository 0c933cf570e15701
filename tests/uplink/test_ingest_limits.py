"""Issue 9 #5: one gateway cannot stall the store. The decoder refuses a tiny envelope that
expands to a million readings, each gateway has a readings quota (over it: acked `retry`, kept
by the gateway, never lost), and store groups are formed round-robin over the gateways.
Real broker, real ingest, raw paho clients holding real gateway identities."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from pathlib import Path

import pytest

from edgegw.model import Sample
from edgegw.protocol import codec
from edgegw.protocol.ack import AckStatus
from edgegw.protocol.codec import decode_batch, encode_batch
from edgegw_cloud.ingest import TokenBuckets, _Opened, fair_group

from .conftest import Cloud, wait_until
from .test_uplink_ingest import RawGateway


def _batch(n: int, t0: int = 1_700_000_000_000) -> bytes:
    return encode_batch([Sample("dev", "m", t0 + i, 1.0) for i in range(n)])


def test_tiny_envelope_of_a_million_readings_is_refused(
    cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an encoder without the limit (a modified gateway holding a stolen key) builds the bomb
    monkeypatch.setattr(codec, "MAX_SAMPLES", 2_000_000)
    bomb = _batch(1_000_000)
    monkeypatch.setattr(codec, "MAX_SAMPLES", 100_000)
    assert len(bomb) < 100 * 1024  # 94 KB here, 47 KB in the probe (timestamps all equal)
    with pytest.raises(codec.CodecError, match="samples"):
        decode_batch(bomb)

    ident = cloud.gateway("gw-bomb", tmp_path / "id")
    ingest = cloud.ingest()
    gw = RawGateway(cloud, ident)
    try:
        gw.publish(ident.sealer().seal(1, bomb))
        gw.publish(ident.sealer().seal(2, _batch(10)))
        wait_until(lambda: len(gw.acks) == 2, 15, "two acks")
        assert sorted(gw.acks) == [(1, AckStatus.REJECTED), (2, AckStatus.DELIVERED)]
        store = cloud.store()
        assert store.count_readings(ident.gateway_id) == 10
        store.close()
    finally:
        gw.close()
        ingest.stop()


def test_a_flooding_gateway_is_held_to_its_quota_and_others_are_not(
    cloud: Cloud, tmp_path: Path
) -> None:
    flood_id = cloud.gateway("gw-flood", tmp_path / "f")
    quiet_id = cloud.gateway("gw-quiet", tmp_path / "q")
    # quota: 1000 readings/s, burst raised to the decode limit (100k)
    ingest = cloud.ingest(gateway_rate=1000.0, gateway_burst=1.0)
    flood, quiet = RawGateway(cloud, flood_id), RawGateway(cloud, quiet_id)
    sf, sq = flood_id.sealer(), quiet_id.sealer()
    big = _batch(50_000)
    t0 = time.monotonic()
    try:
        for i in range(1, 11):
            flood.publish(sf.seal(i, big))
            if i % 2 == 0:
                quiet.publish(sq.seal(i // 2, _batch(100, i * 1000)))
        wait_until(lambda: len(flood.acks) == 10, 30, "flood acks")
        wait_until(lambda: len(quiet.acks) == 5, 30, "quiet acks")
        elapsed = time.monotonic() - t0
        delivered = [s for s, st in flood.acks if st is AckStatus.DELIVERED]
        retried = [s for s, st in flood.acks if st is AckStatus.RETRY]
        # burst 100k: batches 1 and 2 spend it, 3 is admitted on the refill of a few ms and
        # overdraws it by ~50k; the next one only after ~50 s at 1000/s
        assert delivered[:3] == [1, 2, 3]
        assert len(delivered) <= 3 + int(elapsed * 1000 // 50_000)
        assert len(retried) == 10 - len(delivered) and retried
        assert ingest.counts["rate_limited"] == len(retried)
        assert sorted(quiet.acks) == [(i, AckStatus.DELIVERED) for i in range(1, 6)]
        store = cloud.store()
        assert store.batch_seqs(flood_id.gateway_id) == delivered
        assert store.count_readings(quiet_id.gateway_id) == 500
        store.close()
    finally:
        flood.close()
        quiet.close()
        ingest.stop()


def _opened(gw: str, seq: int, readings: int) -> _Opened:
    decoded = decode_batch(_batch(readings)) if readings else None
    return _Opened(None, gw, seq, 0, decoded)  # type: ignore[arg-type]


def test_store_groups_are_shared_between_gateways() -> None:
    pending: OrderedDict[str, deque[_Opened]] = OrderedDict()
    pending["flood"] = deque(_opened("flood", s, 1000) for s in range(1, 101))
    pending["quiet"] = deque([_opened("quiet", 1, 10)])
    pending["other"] = deque([_opened("other", 7, 10), _opened("other", 8, 10)])
    first = fair_group(pending, max_group=64, max_readings=10**9)
    # every gateway with batches waiting is in the group (the flood takes its 64/3 share of
    # the batch count), each gateway's order kept
    assert [o.seq for o in first if o.gw == "flood"] == list(range(1, 22))
    assert [(o.gw, o.seq) for o in first[21:]] == [("quiet", 1), ("other", 7), ("other", 8)]
    assert list(pending) == ["flood"]
    # a readings share: a flood of big batches moves one per group, small batches all go
    pending["quiet"] = deque(_opened("quiet", s, 10) for s in range(2, 40))
    second = fair_group(pending, max_group=64, max_readings=2500)
    assert [o.seq for o in second if o.gw == "flood"] == [22]
    assert [o.seq for o in second if o.gw == "quiet"] == list(range(2, 34))  # 32 = count share
    assert list(pending) == ["flood", "quiet"]  # both served, both moved to the back in turn
    third = fair_group(pending, max_group=64, max_readings=1)  # each still gets one batch
    assert [(o.gw, o.seq) for o in third] == [("flood", 23), ("quiet", 34)]


def test_token_bucket() -> None:
    b = TokenBuckets(rate=10.0, burst=100.0)
    assert b.admit("a", now=0.0)
    b.spend("a", 150, now=0.0)  # a batch admitted on credit may overdraw: debt of 50
    assert not b.admit("a", now=0.0)
    assert b.admit("b", now=0.0)  # buckets are per gateway
    assert not b.admit("a", now=5.0)  # refilled 50: back to 0, still nothing to spend
    assert b.admit("a", now=5.1)
    b.spend("a", 1, now=5.1)
    assert b.admit("a", now=1000.0)
    b.spend("a", 100, now=1000.0)  # the burst caps the refill: 100 - 100 = 0
    assert not b.admit("a", now=1000.0)


def test_opener_takes_raw_messages_round_robin(cloud: Cloud) -> None:
    from edgegw.protocol import topics
    from edgegw_cloud.ingest import Ingest, _Msg

    ing = Ingest(cloud.paths, cloud.broker.service_url)  # not started: the opener's picking only
    for seq in range(1, 101):
        ing._queue.put(_Msg(None, topics.up_batch("gw-flood"), bytes([seq]), 0))  # type: ignore[arg-type]
    ing._queue.put(_Msg(None, topics.up_batch("gw-quiet"), b"q", 0))  # type: ignore[arg-type]
    waiting: OrderedDict[str, deque[_Msg]] = OrderedDict()
    order = [ing._next_raw(waiting) for _ in range(4)]
    # the quiet gateway's message, queued after 100 of the flood's, is opened second
    assert [(topics.gateway_of(m.topic), m.payload) for m in order if m is not None] == [
        ("gw-flood", b"\x01"), ("gw-quiet", b"q"), ("gw-flood", b"\x02"), ("gw-flood", b"\x03")]
