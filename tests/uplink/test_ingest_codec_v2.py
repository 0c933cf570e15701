"""Codec v2 at the real ingest (real broker, real store): the dictionary survives an ingest
restart, unknown ids are answered RETRY (never REJECTED: that would delete the batch on the
gateway), and a re-packed batch is stored per original seq, exactly once."""

from __future__ import annotations

from pathlib import Path

from edgegw.model import Sample
from edgegw.protocol.ack import AckStatus
from edgegw.protocol.codec_v2 import encode_batch_v2
from edgegw.store.series_dict import SeriesDictionary

from .conftest import Cloud, wait_until
from .test_uplink_ingest import RawGateway


def poll(k: int) -> list[Sample]:
    return [Sample("plc", f"hr{r}", 1_700_000_000_000 + 1000 * k, 100 * r + k) for r in range(10)]


def test_dictionary_across_ingest_restart_unknown_ids_and_repacks(cloud: Cloud,
                                                                  tmp_path: Path) -> None:
    ident = cloud.gateway("gw-v2", tmp_path / "id")
    sealer = ident.sealer()
    d = SeriesDictionary(tmp_path / "series-dict.db")
    ingest = cloud.ingest()
    gw = RawGateway(cloud, ident)
    try:
        first, defined = d.encode(poll(0))
        assert len(defined) == 10
        d.sealed(1, defined)
        gw.publish(sealer.seal(1, first))
        wait_until(lambda: (1, AckStatus.DELIVERED) in gw.acks, 15, "ack of the defining batch")
        d.delivered([1])
        ingest.stop()  # the cloud restarts: only its store remembers the definitions
        ingest = cloud.ingest()
        ids_only, defined = d.encode(poll(1))
        assert defined == [] and len(ids_only) < len(first)
        gw.publish(sealer.seal(2, ids_only))
        wait_until(lambda: (2, AckStatus.DELIVERED) in gw.acks, 15, "ack of an ids-only batch")

        # an id this cloud never stored: the batch is fine, the cloud lacks state -> RETRY
        stranger, _ = encode_batch_v2(poll(2), ids=lambda key: (999, False), epoch=d.epoch)
        gw.publish(sealer.seal(3, stranger))
        wait_until(lambda: (3, AckStatus.RETRY) in gw.acks, 15, "retry for an unknown id")
        assert (3, AckStatus.REJECTED) not in gw.acks

        # a re-packed batch naming seqs 2 (already stored) and 10, 11 (new)
        samples = poll(1) + poll(10) + poll(11)
        part_of = [0] * 10 + [1] * 10 + [2] * 10
        order = sorted(range(30), key=lambda i: (samples[i].metric, part_of[i]))
        repacked, _ = d.encode([samples[i] for i in order], parts=[2, 10, 11],
                               part_of=[part_of[i] for i in order])
        gw.publish(sealer.seal(20, repacked))
        wait_until(lambda: (20, AckStatus.DELIVERED) in gw.acks, 15, "ack of the re-packed batch")
        store = cloud.store()
        try:
            assert store.batch_seqs("gw-v2") == [1, 2, 10, 11]  # 20 itself is not a batch row
            assert store.count_readings("gw-v2") == 40  # seq 2's readings stored once
            got = sorted((r.metric, r.ts_ms, r.value) for r in store.readings(gateway="gw-v2"))
            want = sorted((s.metric, s.ts_ms, s.value)
                          for k in (0, 1, 10, 11) for s in poll(k))
            assert got == want  # names resolved through the stored dictionary, values exact
        finally:
            store.close()
        assert ingest.stats()["unknown_series"] == 1
    finally:
        gw.close()
        ingest.stop()
        d.close()
