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
    # quota: 1000 readings/s, burst raised to the decode limit (100k): two 50k batches fit
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
        # burst 100k + 1000/s refill: 2 batches, a 3rd only if the run took > 50 s
        assert delivered[:2] == [1, 2]
        assert len(delivered) <= 2 + int(elapsed * 1000 // 50_000)
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


def test_store_groups_are_round_robin_over_gateways() -> None:
    pending: OrderedDict[str, deque[_Opened]] = OrderedDict()
    pending["flood"] = deque(_opened("flood", s, 1000) for s in range(1, 101))
    pending["quiet"] = deque([_opened("quiet", 1, 10)])
    pending["other"] = deque([_opened("other", 7, 10), _opened("other", 8, 10)])
    first = fair_group(pending, max_group=64, max_readings=10**9)
    # every gateway's first batch is in the first group, each gateway's order is kept
    assert [(o.gw, o.seq) for o in first[:3]] == [("flood", 1), ("quiet", 1), ("other", 7)]
    assert [o.seq for o in first if o.gw == "other"] == [7, 8]
    assert "quiet" not in pending and "other" not in pending
    flood_seqs = [o.seq for o in first if o.gw == "flood"]
    assert flood_seqs == list(range(1, len(flood_seqs) + 1)) and len(first) == 64
    # the readings cap ends a group (but a group always holds at least one batch)
    pending["quiet"] = deque([_opened("quiet", 2, 10)])
    second = fair_group(pending, max_group=64, max_readings=2500)
    assert [(o.gw, o.seq) for o in second] == [("flood", 62), ("quiet", 2), ("flood", 63),
                                               ("flood", 64)]
    assert len(fair_group(pending, max_group=64, max_readings=1)) == 1


def test_token_bucket() -> None:
    b = TokenBuckets(rate=10.0, burst=100.0)
    assert b.take("a", 100, now=0.0)
    assert not b.take("a", 1, now=0.0)  # empty
    assert b.take("b", 50, now=0.0)  # buckets are per gateway
    assert not b.take("a", 20, now=1.0)  # refilled 10 only; a refusal spends nothing
    assert b.take("a", 20, now=2.0)
    assert not b.take("a", 101, now=1000.0)  # never more than the burst
