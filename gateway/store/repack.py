"""Re-packing the backlog: many small stored batches -> one bigger, cheaper batch.

A backlog (after a cut, or on a link slower than the data) is made of the small batches that
were sealed for a fast link. Re-packing opens the oldest waiting telemetry batches, merges
their readings per series (longer runs: constant steps and delta-of-delta pay off) and stores
them as ONE codec batch (version 3) that names the ORIGINAL seqs as its parts, each with the
first 8 bytes of the SHA-256 of its original plaintext (the cloud's sequence-conflict check).

The alert lane is re-packed too (``lane=Lane.ALERT``): each alert is sealed at once into a
batch of its own (the latency budget), so a cut leaves one small batch per alert, and after
the reconnect each costs an envelope, an MQTT publish, a TLS record, an ingest commit slot and
an ack: a hundred of them took 4-5 s on a 64 kbit/s link, ahead of any alert raised after the
reconnect (issue 15 goal 2). Waiting alert batches (at least ``ALERT_MIN_BATCHES``) are
merged into one; an earlier re-packed alert batch is merged again (its parts carried over
with their digests), so a long cut ends as one alert batch, not one per pass.

Rules (durability and exactly-once unchanged):
- ``Outbox.replace`` deletes the originals and stores the re-packed batch in ONE transaction:
  a crash leaves either the originals or the re-packed batch, never both, never neither.
- Only telemetry batches that the uplink does not hold (in flight, being settled, held back)
  are taken; batches already re-packed (with parts) and undecodable ones are left alone.
- The cloud splits a re-packed batch back into its parts and stores each under its ORIGINAL
  seq (the store's (gateway, seq) primary key deduplicates): a part already stored (an
  original that reached the cloud before its ack was lost, or that was sent while it was being
  re-packed) is skipped. It then acks the re-packed batch's own seq, which deletes it here.
- A re-packed batch carries the dictionary definitions it needs (``SeriesDictionary`` rule), so
  it decodes whatever happened to the originals' definitions.
- Size: the re-packed batch aims at ``target_bytes`` (the uplink passes ~0.5 s of the measured
  link rate, so an alert never waits long behind it); at most ``MAX_READINGS`` readings.
- Threads: ``collect`` (SQL reads) and ``commit`` (``Outbox.replace``) run in the outbox
  thread; ``merge`` (open, decode, merge, encode: ~0.1 s of CPU for 20k readings, seconds on a
  loaded machine) runs in another thread, so the outbox thread keeps sealing alerts and
  feeding the uplink meanwhile (issue 15 goal 2: an alert sealed behind a re-pack waited up to
  4.5 s on a loaded 2-core machine). An original sent or acked while it was being merged is
  either still there (``replace`` deletes it; the cloud's per-part dedup covers a copy already
  sent) or gone (``replace`` changes nothing and the merge is dropped).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from edgegw.model import Alert, Lane, Sample
from edgegw.protocol.codec import CodecError
from edgegw.protocol.codec_v2 import DIGEST_BYTES, DecodedV2, decode_any
from edgegw.protocol.envelope import EnvelopeError
from edgegw.store.outbox import Outbox
from edgegw.store.series_dict import SeriesDictionary

log = logging.getLogger("edgegw.store")

MAX_READINGS = 20_000  # ~0.1 s of CPU: the outbox thread also seals alerts
MAX_BATCHES = 256
MIN_BATCHES = 4
ALERT_MIN_BATCHES = 2
MAX_ALERTS = 2_000


_Encoded = tuple[bytes, list[int], int, int, int]  # plaintext, ids defined, count, first, last
T = TypeVar("T")


def _fit(chosen: list[T], least: int, target_bytes: int,
         encode: Callable[[list[T]], _Encoded | None]) -> tuple[list[T], _Encoded] | None:
    """Encode ``chosen``; while the result exceeds ``target_bytes``, drop the newest third
    (never below ``least``). None when fewer than ``least`` or the encoding failed."""
    while len(chosen) >= least:
        result = encode(chosen)
        if result is None:
            return None
        if len(result[0]) > target_bytes and len(chosen) > least:
            chosen = chosen[: max(least, len(chosen) * 2 // 3)]
            continue
        return chosen, result
    return None


def _bytes_of(rows: list[tuple[int, bytes]], seqs: list[int]) -> int:
    sizes = {s: len(e) for s, e in rows}
    return sum(sizes[s] for s in seqs)


def part_digest(plaintext: bytes) -> bytes:
    """The digest prefix a re-packed part carries for its original batch: the first
    ``DIGEST_BYTES`` of the SHA-256 the cloud keeps for every stored batch."""
    return hashlib.sha256(plaintext).digest()[:DIGEST_BYTES]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A merged batch ready to replace ``seqs`` (the output of ``Repacker.merge``)."""

    seqs: list[int]
    plaintext: bytes
    defined: list[int]
    count: int
    first: int
    last: int
    bytes_in: int
    lane: Lane = Lane.TELEMETRY


class Repacker:
    """Merges waiting telemetry batches of ``outbox`` (codec v2 via ``dictionary``)."""

    def __init__(self, outbox: Outbox, dictionary: SeriesDictionary) -> None:
        self.outbox = outbox
        self.dictionary = dictionary
        self.repacks = 0
        self.batches_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.alert_repacks = 0
        self.alert_batches_in = 0

    def _waiting(self, exclude: Container[int], lane: Lane) -> list[tuple[int, int, int]]:
        """(seq, envelope length, count) of ``lane`` batches the uplink does not hold."""
        rows = self.outbox._conn.execute(
            "SELECT seq, length(envelope), count FROM batches WHERE lane=? ORDER BY seq "
            "LIMIT ?", (int(lane), MAX_BATCHES * 4)).fetchall()
        return [(s, n, c) for s, n, c in rows if s not in exclude]

    def repack(self, exclude: Container[int], target_bytes: int,
               lane: Lane = Lane.TELEMETRY) -> int | None:
        """Re-pack the oldest waiting batches once; returns the new seq or None (all three
        phases in the calling thread; the daemon runs ``merge`` outside the outbox thread)."""
        rows = self.collect(exclude, target_bytes, lane)
        plan = self.merge(rows, target_bytes, lane) if rows else None
        return self.commit(plan) if plan is not None else None

    def collect(self, exclude: Container[int], target_bytes: int,
                lane: Lane = Lane.TELEMETRY) -> list[tuple[int, bytes]]:
        """Phase 1 (outbox thread, SQL only): the sealed envelopes of the oldest waiting
        ``lane`` batches worth re-packing, oldest first; [] when fewer than MIN_BATCHES
        (ALERT_MIN_BATCHES for alerts)."""
        least = ALERT_MIN_BATCHES if lane is Lane.ALERT else MIN_BATCHES
        cap = MAX_ALERTS if lane is Lane.ALERT else MAX_READINGS
        waiting = self._waiting(exclude, lane)
        if len(waiting) < least:
            return []
        rows: list[tuple[int, bytes]] = []
        readings = size_in = 0
        for seq, size, count in waiting[:MAX_BATCHES]:
            if readings + count > cap or (rows and size_in >= 4 * target_bytes):
                break
            row = self.outbox._conn.execute("SELECT envelope FROM batches WHERE seq=?",
                                            (seq,)).fetchone()
            if row is None:
                break
            rows.append((seq, bytes(row[0])))
            readings += count
            size_in += size
        return rows if len(rows) >= least else []

    def merge(self, rows: list[tuple[int, bytes]], target_bytes: int,
              lane: Lane = Lane.TELEMETRY) -> _Plan | None:
        """Phase 2 (any thread: the CPU-heavy part, kept out of the outbox thread so an alert
        is never sealed behind it): open, decode, merge per series, encode. Touches only the
        sealer and the (locked) dictionary, never the outbox's database."""
        if lane is Lane.ALERT:
            return self._merge_alerts(rows, target_bytes)
        chosen: list[tuple[int, bytes, list[Sample]]] = []
        for seq, plaintext, decoded in self._opened(rows):
            if (isinstance(decoded, DecodedV2) and decoded.parts) or decoded.alerts or decoded.gaps:
                break  # already re-packed (or not plain telemetry): keep order, stop here
            chosen.append((seq, part_digest(plaintext), decoded.samples))
        fitted = _fit(chosen, MIN_BATCHES, target_bytes, self._encode)
        if fitted is None:
            return None
        chosen, (plaintext, defined, count, first, last) = fitted
        seqs = [s for s, _, _ in chosen]
        return _Plan(seqs, plaintext, defined, count, first, last, _bytes_of(rows, seqs))

    def _merge_alerts(self, rows: list[tuple[int, bytes]], target_bytes: int) -> _Plan | None:
        """Merge waiting alert batches (and earlier re-packed alert batches, flattened) into
        one version 3 batch whose parts are the ORIGINAL alert batches."""
        chosen: list[tuple[int, list[tuple[int, bytes, list[Alert]]]]] = []
        for seq, plaintext, decoded in self._opened(rows):
            if decoded.gaps or decoded.series or not decoded.alerts:
                break  # a gap record (or anything but alerts): keep order, stop here
            if isinstance(decoded, DecodedV2) and decoded.parts:
                if not decoded.part_digests:
                    break
                parts = [(p, decoded.part_digests[i], alerts) for i, (p, alerts)
                         in enumerate(decoded.split_alert_parts())]
            else:
                parts = [(seq, part_digest(plaintext), list(decoded.alerts))]
            chosen.append((seq, parts))
        fitted = _fit(chosen, ALERT_MIN_BATCHES, target_bytes, self._encode_alerts)
        if fitted is None:
            return None
        chosen, (plaintext, defined, count, first, last) = fitted
        seqs = [s for s, _ in chosen]
        return _Plan(seqs, plaintext, defined, count, first, last, _bytes_of(rows, seqs),
                     Lane.ALERT)

    def _opened(self, rows: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes, Any]]:
        """(seq, plaintext, decoded) of ``rows`` in order, up to the first that does not open
        or decode (logged; a re-pack keeps the lane's order, so it stops there)."""
        for seq, envelope in rows:
            try:
                plaintext = self.outbox.sealer.open(envelope)[1]
                decoded = decode_any(plaintext, self.dictionary.resolve)
            except (EnvelopeError, CodecError) as exc:
                log.debug("re-pack stops at batch %d: %s", seq, exc)
                return
            yield seq, plaintext, decoded

    def _encode_alerts(self, chosen: list[tuple[int, list[tuple[int, bytes, list[Alert]]]]]
                       ) -> tuple[bytes, list[int], int, int, int] | None:
        flat = [part for _, parts in chosen for part in parts]
        alerts = [a for _, _, lst in flat for a in lst]
        try:
            plaintext, defined = self.dictionary.encode(
                alerts=alerts, parts=[p for p, _, _ in flat],
                part_digests=[d for _, d, _ in flat],
                alert_part_of=[i for i, (_, _, lst) in enumerate(flat) for _ in lst])
        except CodecError as exc:
            log.warning("alert re-pack skipped: %s", exc)
            return None
        stamps = [a.ts_ms for a in alerts]
        return plaintext, defined, len(alerts), min(stamps), max(stamps)

    def commit(self, plan: _Plan) -> int | None:
        """Phase 3 (outbox thread): ``Outbox.replace`` in one transaction; None (nothing
        changed) if any original is gone meanwhile (acked, or re-packed by another pass)."""
        new = self.outbox.replace(plan.seqs, plan.plaintext, count=plan.count,
                                  first_ts_ms=plan.first, last_ts_ms=plan.last, lane=plan.lane)
        if new is None:
            return None
        self.dictionary.sealed(new, plan.defined)
        self.dictionary.forget(plan.seqs)
        if plan.lane is Lane.ALERT:
            self.alert_repacks += 1
            self.alert_batches_in += len(plan.seqs)
            log.debug("re-packed %d alert batches (%d alerts) into batch %d",
                      len(plan.seqs), plan.count, new)
            return new
        self.repacks += 1
        self.batches_in += len(plan.seqs)
        self.bytes_in += plan.bytes_in
        self.bytes_out += len(plan.plaintext)
        log.debug("re-packed %d batches (%d readings, %d -> %d bytes) into batch %d",
                  len(plan.seqs), plan.count, plan.bytes_in, len(plan.plaintext), new)
        return new

    def _encode(self, chosen: list[tuple[int, bytes, list[Sample]]]) -> _Encoded | None:
        samples: list[Sample] = []
        part_of: list[int] = []
        for p, (_, _, lst) in enumerate(chosen):
            samples.extend(lst)
            part_of.extend([p] * len(lst))
        if not samples:
            return None
        # per series in part order: a stable sort by series keeps each part's order
        order: dict[tuple[str, str], int] = {}
        for s in samples:
            order.setdefault((s.device, s.metric), len(order))
        idx = sorted(range(len(samples)),
                     key=lambda i: (order[(samples[i].device, samples[i].metric)], part_of[i]))
        merged = [samples[i] for i in idx]
        parts_idx = [part_of[i] for i in idx]
        try:
            plaintext, defined = self.dictionary.encode(
                merged, parts=[s for s, _, _ in chosen], part_of=parts_idx,
                part_digests=[d for _, d, _ in chosen])
        except CodecError as exc:
            log.warning("re-pack skipped: %s", exc)
            return None
        stamps = [s.ts_ms for s in samples]
        return plaintext, defined, len(samples), min(stamps), max(stamps)

    def stats(self) -> dict[str, Any]:
        return {"repacks": self.repacks, "repacked_batches": self.batches_in,
                "repacked_bytes_in": self.bytes_in, "repacked_bytes_out": self.bytes_out,
                "alert_repacks": self.alert_repacks,
                "repacked_alert_batches": self.alert_batches_in}
