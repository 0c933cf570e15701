"""Cloud ingest: MQTT batches -> authenticate + decode -> durable store -> end-to-end ack.

Invariants:
- Subscribes ``$share/<group>/gw/+/up/batch`` (MQTT v5 shared subscription) with the ingest
  identity, so several workers (threads here, or processes/machines) share the load.
- Per message: the gateway id comes from the topic, the data key from ECDH(ingest key-agreement
  key of the header's key id, the gateway's certificate key from the registry), and the envelope
  is opened with the gateway id as associated data. Only then is anything in it trusted.
- The ack for a sequence is published only AFTER the transaction holding that batch committed
  (WAL, synchronous=FULL). Duplicates (already stored) are acked ``delivered`` again: the ack is
  idempotent, the store holds each (gateway, seq) once. A duplicate is recognised by the
  SHA-256 of its plaintext: a DIFFERENT authentic batch under an already stored (gateway, seq)
  (a reused or forged-ahead sequence) is a conflict: WARNING, counted, recorded in the store's
  ``seq_conflicts``, and NOT acked (the gateway re-sequences it; see docs/delivery.md).
- What a forged or damaged message can cause: a count and a WARNING, nothing else. Malformed
  headers, unknown key ids, unknown gateways and envelopes that fail authentication are NEVER
  acked: their sequence number is unauthenticated, and an ack (delivered or rejected) makes the
  gateway delete that batch. ``rejected`` is sent only for an AUTHENTIC envelope whose plaintext
  does not decode (the gateway quarantines it; retrying cannot help).
- A store failure (disk full...) acks ``retry`` for the authentic batches of that transaction;
  nothing is half-stored (one transaction).
- Group commit: messages waiting in the queue are committed together (up to ``max_group``
  batches and ``max_group_readings`` readings), then acked per gateway in one message. A
  process crash before the ack only causes a resend.
- Fair between gateways (issue 9 #5): the opener takes raw messages round-robin over the
  gateways that have some waiting, and the writer forms store groups round-robin too (each
  gateway's own order kept, at most ``max_group_readings`` per transaction), so one gateway's
  backlog or flood delays another's batch by about one decode and one group, not by the whole
  backlog.
- Per-gateway quota: a token bucket of ``gateway_rate`` readings/s with ``gateway_burst``
  capacity (per ingest process), checked after authentication and BEFORE decoding. An
  authentic batch over it is acked ``retry`` (the gateway keeps it and resends after its
  hold-back): slowed down, never lost, counted ``rate_limited``. A batch decoding to more
  than ``codec.MAX_SAMPLES`` readings is refused by the decoder (acked ``rejected``): no
  gateway config can produce one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import queue
import secrets
import signal
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.protocol import envelope, topics
from edgegw.protocol.ack import AckStatus, encode_acks
from edgegw.protocol.broker_url import parse_broker_url
from edgegw.protocol.codec import MAX_SAMPLES, CodecError, DecodedBatch
from edgegw.protocol.codec_v2 import DecodedV2, UnknownSeries, decode_any
from edgegw.protocol.keys import derive_data_key
from edgegw.protocol.logthrottle import install as throttle_repeated_logs
from edgegw.protocol.model import Lane
from edgegw.transport.mqtt_client import Client
from edgegw_cloud.pki_setup import INGEST_CN, CloudPaths
from edgegw_cloud.registry import Registry
from edgegw_cloud.sinks import Forwarder, Reading
from edgegw_cloud.store import CONFLICT, NEW, BatchRecord
from edgegw_cloud.store_pg import is_postgres_url
from edgegw_cloud.stores import open_store

log = logging.getLogger("edgegw.cloud.ingest")

ACK_DELIVERED, ACK_RETRY, ACK_REJECTED = AckStatus.DELIVERED, AckStatus.RETRY, AckStatus.REJECTED
#: per-gateway quota defaults: the drain goal's rate (one process drains a gateway's backlog at
#: 210-420k readings/s on the dev machine), and a burst that lets a backlog of a few million
#: readings drain at full speed (docs/performance.md "Drain (goal 6)")
GATEWAY_RATE = 200_000.0
GATEWAY_BURST = 2_000_000.0
MAX_GROUP_READINGS = 50_000  # one transaction ~0.2 s at the store's ~300k rows/s
KEY_REFRESH_S = 5.0  # at most one registry lookup per gateway per this, whatever arrives
TOUCH_EVERY_S = 5.0
RAW_LOOKAHEAD = 2000  # messages the opener pulls ahead to choose round-robin between gateways
#: the collector's first threshold in a process that runs the ingest (``tune_gc``)
GC_GEN0_THRESHOLD = 20_000


@dataclass(frozen=True, slots=True)
class _Msg:
    client: mqtt.Client
    topic: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class _Opened:
    """An authentic envelope; ``decoded`` None = its plaintext did not decode (reject it, or
    ask for a retry when ``retry``: a codec v2 id the cloud's dictionary does not hold)."""

    client: mqtt.Client
    gw: str
    seq: int
    received_ms: int
    decoded: DecodedBatch | None
    retry: bool = False  # over the gateway's quota, or unknown series ids: ack retry
    digest: bytes | None = None  # SHA-256 of the plaintext (sequence-conflict check)

    @property
    def readings(self) -> int:
        return self.decoded.readings if self.decoded is not None else 0


class TokenBuckets:
    """Per-key token buckets (readings per second, burst capacity) that may go into debt: a
    batch is admitted while the bucket holds anything (``admit``, checked BEFORE the batch is
    decoded, so a flood over its quota costs an AES open and no decode), then its readings are
    spent (``spend``, possibly below zero). One thread uses it."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst = float(rate), float(burst)
        self._level: dict[str, tuple[float, float]] = {}

    def _refill(self, key: str, now: float) -> float:
        level, at = self._level.get(key, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        self._level[key] = (level, now)
        return level

    def admit(self, key: str, now: float) -> bool:
        """True while ``key``'s bucket is above zero."""
        return self._refill(key, now) > 0

    def spend(self, key: str, n: float, now: float) -> None:
        self._level[key] = (self._refill(key, now) - n, now)


def fair_group(
    pending: OrderedDict[str, deque[_Opened]], max_group: int, max_readings: int
) -> list[_Opened]:
    """The next store group, shared between the gateways in ``pending`` (mutated: taken items
    removed, served gateways moved to the back, emptied ones dropped).

    Each gateway with batches waiting gets a turn per group: at least one batch, then more
    while it stays within its share, ``max_readings / n`` readings and ``max_group / n``
    batches. A gateway of small batches is drained at the pace it sends them; a flood of big
    ones moves one batch per group. Each gateway's own order is kept.
    """
    group: list[_Opened] = []
    n = max(1, len(pending))
    share, count_share = max(1, max_readings // n), max(1, max_group // n)
    for gw in list(pending):
        q = pending[gw]
        taken = took = 0
        while q and len(group) < max_group and (
            took == 0 or (took < count_share and taken + q[0].readings <= share)
        ):
            o = q.popleft()
            group.append(o)
            taken += o.readings
            took += 1
        if q:
            pending.move_to_end(gw)
        else:
            del pending[gw]
        if len(group) >= max_group:
            break
    return group


class _Keys:
    """Data keys per (gateway, key id); derived on demand, cached, refreshed rate-limited."""

    def __init__(self, paths: CloudPaths, registry: Any) -> None:
        self.paths = paths
        self.registry = registry
        self._own: dict[int, Any] = {}
        self._candidates: dict[tuple[str, int], list[bytes]] = {}
        self._loaded_at: dict[tuple[str, int], float] = {}

    def _own_key(self, key_id: int) -> Any | None:
        if key_id not in self._own:
            path = self.paths.ingest_ka_key(key_id)
            if not path.exists():
                return None
            self._own[key_id] = pki.load_private_key(path)
        return self._own[key_id]

    def candidates(self, gw: str, key_id: int, *, refresh: bool = False) -> list[bytes] | None:
        """Candidate data keys (newest gateway key first); None = unknown key id."""
        own = self._own_key(key_id)
        if own is None:
            return None
        k = (gw, key_id)
        now = time.monotonic()
        stale = refresh and now - self._loaded_at.get(k, 0.0) >= KEY_REFRESH_S
        if k not in self._candidates or stale:
            self._loaded_at[k] = now
            pubs = self.registry.public_keys(gw) if self.registry is not None else []
            self._candidates[k] = [derive_data_key(own, pub, key_id, gw) for pub in pubs]
        return self._candidates[k]

    def confirm(self, gw: str, key_id: int, key: bytes) -> None:
        """Move the key that opened an envelope to the front (usually the only one)."""
        lst = self._candidates.get((gw, key_id))
        if lst and lst[0] != key and key in lst:
            lst.remove(key)
            lst.insert(0, key)


class Ingest:
    """Ingest workers (paho clients) + one writer thread owning the store. start()/stop()."""

    def __init__(
        self,
        paths: CloudPaths,
        broker_url: str,
        *,
        workers: int = 1,
        share_group: str = "ingest",
        max_group: int = 64,
        max_group_readings: int = MAX_GROUP_READINGS,
        gateway_rate: float = GATEWAY_RATE,
        gateway_burst: float = GATEWAY_BURST,
        store_path: Path | str | None = None,
        forward: Sequence[str] = (),
    ) -> None:
        self.paths = paths
        url = parse_broker_url(broker_url)
        self.host, self.port = url.host, url.port
        self.workers = max(1, workers)
        self.share_group = share_group
        self.max_group = max_group
        self.max_group_readings = max_group_readings
        self._quota = TokenBuckets(gateway_rate, max(gateway_burst, float(MAX_SAMPLES)))
        self.store_path = store_path or paths.store_db
        self._queue: queue.Queue[_Msg] = queue.Queue(maxsize=10_000)
        self._opened: queue.Queue[_Opened] = queue.Queue(maxsize=1_000)
        self._opener: threading.Thread | None = None
        self._stop = threading.Event()
        self._clients: list[mqtt.Client] = []
        self._writer: threading.Thread | None = None
        self._ready = threading.Event()
        self._subscribed: set[int] = set()
        self._warned: dict[tuple[str, str], int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self._store_stats: dict[str, Any] = {}
        self._store_error: BaseException | None = None
        self._names = _Dictionaries(self.store_path)  # the opener thread's
        self.forward = list(forward)
        self.forwarder: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> Ingest:
        """Start the writer and the workers; returns once every worker is subscribed."""
        if self.forward:
            self.forwarder = Forwarder.from_urls(self.forward)
        self._opener = threading.Thread(target=self._open_loop, name="ingest-opener", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._opener.start()
        self._writer.start()
        for i in range(self.workers):
            self._clients.append(self._start_worker(i))
        if not self._ready.wait(timeout):
            log.warning(
                "ingest: not all workers subscribed within %.0f s (broker down?); "
                "they keep retrying",
                timeout,
            )
        return self

    def wait_subscribed(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        for c in self._clients:
            c.disconnect()
            c.loop_stop()
        self._clients.clear()
        for t in (self._opener, self._writer):
            if t is not None:
                t.join(timeout=30)
        if self.forwarder is not None:
            self.forwarder.close()

    def __enter__(self) -> Ingest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int | float | dict[str, Any]]:
        out: dict[str, int | float | dict[str, Any]] = dict(self.counts)
        out["queue"] = self._queue.qsize()
        out["queue_opened"] = self._opened.qsize()
        out["store"] = dict(self._store_stats)
        if self.forwarder is not None:
            out["forward"] = self.forwarder.stats()
        return out

    # ------------------------------------------------------------------ workers
    def _start_worker(self, i: int) -> mqtt.Client:
        p = self.paths
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=pki.client_id(f"{INGEST_CN}-{i}-{secrets.token_hex(4)}"),
            protocol=mqtt.MQTTv5,
        )
        client.tls_set_context(pki.make_tls_context(p.ca_crt, p.ingest_crt, p.ingest_key))
        # a few ingest workers, not thousands of gateways: a short cap is no reconnect storm
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.max_inflight_messages_set(200)
        sub = topics.ingest_subscription(self.share_group)

        def on_connect(
            c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None = None
        ) -> None:
            if rc.is_failure:
                log.error("ingest worker %d: broker refused the connection (%s)", i, rc)
                self.counts["connect_refused"] += 1
                return
            self.counts["connects"] += 1
            c.subscribe(sub, qos=1)

        def on_subscribe(
            c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Properties | None = None
        ) -> None:
            if any(r.is_failure for r in rcs):
                log.error(
                    "ingest worker %d: subscription to %s refused (%s); check the ACL", i, sub, rcs
                )
                self.counts["subscribe_refused"] += 1
                return
            self._subscribed.add(i)
            if len(self._subscribed) >= self.workers:
                self._ready.set()

        def on_disconnect(
            c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None = None
        ) -> None:
            if not self._stop.is_set():
                self.counts["disconnects"] += 1
                log.info("ingest worker %d disconnected (%s); reconnecting", i, rc)

        def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            # paho's thread: hand over and return (the writer does the work)
            self.counts["received"] += 1
            self._put(
                self._queue, _Msg(c, msg.topic, bytes(msg.payload), time.time_ns() // 1_000_000)
            )

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.connect_async(self.host, self.port, keepalive=30, clean_start=True)
        client.loop_start()  # retries the first connection too (broker may still be starting)
        return client

    # ------------------------------------------------------------------ opener + writer
    # Two threads form a pipeline: the opener authenticates and decodes (CPU) while the writer
    # commits the previous group (SQLite, mostly outside the GIL). Each owns its connections.
    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        """Blocking put (backpressure towards the broker) that still notices stop()."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _next_raw(self, waiting: OrderedDict[str, deque[_Msg]]) -> _Msg | None:
        """The next message to open, round-robin over the gateways with messages waiting (so a
        gateway's flood does not queue another's batch behind all of it)."""
        n = sum(len(q) for q in waiting.values())
        block = n == 0
        while n < RAW_LOOKAHEAD:
            try:
                m = self._queue.get(timeout=0.2) if block else self._queue.get_nowait()
            except queue.Empty:
                break
            block = False
            waiting.setdefault(topics.gateway_of(m.topic) or "", deque()).append(m)
            n += 1
        for gw in list(waiting):
            q = waiting[gw]
            m = q.popleft()
            if q:
                waiting.move_to_end(gw)
            else:
                del waiting[gw]
            return m
        return None

    def _open_loop(self) -> None:
        registry = Registry(self.paths.registry_db)  # one instance per thread (its contract)
        keys = _Keys(self.paths, registry)
        last_touch: dict[str, float] = {}
        waiting: OrderedDict[str, deque[_Msg]] = OrderedDict()
        try:
            while not self._stop.is_set():
                m = self._next_raw(waiting)
                if m is None:
                    continue
                try:
                    opened = self._open(m, keys)
                except Exception:  # never let one message stop the ingest
                    self.counts["errors"] += 1
                    log.exception("ingest: unexpected error on a message from %s", m.topic)
                    continue
                if opened is None:
                    continue
                gw, header, decoded, retry, digest = opened
                # last seen before the hand-over: once a batch is stored (and acked), its
                # gateway's last-seen time is recorded (a reader of both never sees one alone)
                now = time.monotonic()
                if now - last_touch.get(gw, 0.0) >= TOUCH_EVERY_S:
                    last_touch[gw] = now
                    try:
                        registry.touch(gw)
                    except Exception as exc:  # last-seen is informational only
                        log.debug("registry touch failed: %s", exc)
                self._put(
                    self._opened,
                    _Opened(m.client, gw, header.seq, m.received_ms, decoded, retry=retry,
                            digest=digest),
                )
        finally:
            registry.close()
            self._names.close()

    def _write_loop(self) -> None:
        store = open_store(self.store_path)  # SQLite path or postgresql:// URL
        pending: OrderedDict[str, deque[_Opened]] = OrderedDict()
        buffered = 0
        max_buffered = 4 * self.max_group
        try:
            while not self._stop.is_set():
                if not pending:
                    try:
                        first = self._opened.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    pending.setdefault(first.gw, deque()).append(first)
                    buffered = 1
                while buffered < max_buffered:
                    try:
                        o = self._opened.get_nowait()
                    except queue.Empty:
                        break
                    pending.setdefault(o.gw, deque()).append(o)
                    buffered += 1
                group = fair_group(pending, self.max_group, self.max_group_readings)
                buffered -= len(group)
                self._commit(group, store)
                self._store_stats = store.stats()
        finally:
            store.close()

    def _warn(self, kind: str, gw: str, message: str, *args: Any) -> None:
        """Count and log a misbehaving peer: first, 10th, 100th... occurrence per kind."""
        self.counts[kind] += 1
        n = self._warned[(kind, gw)] = self._warned[(kind, gw)] + 1
        if n & (n - 1) == 0 or n % 1000 == 0:
            log.warning(message + " [%s #%d]", *args, kind, n)

    def _open(
        self, m: _Msg, keys: _Keys
    ) -> tuple[str, Any, DecodedBatch | None, bool, bytes] | None:
        """(gateway, header, decoded or None, retry, plaintext digest) for an AUTHENTIC
        envelope. ``retry``: ack retry, store nothing (the gateway's quota is spent, checked
        before decoding; or a codec v2 id the dictionary does not hold); decoded None without
        retry: acked rejected."""
        gw = topics.gateway_of(m.topic) or ""
        if not gw or m.topic != topics.up_batch(gw):
            self._warn("bad_topic", "?", "message on unexpected topic %r ignored", m.topic)
            return None
        try:
            header = envelope.parse_header(m.payload)
        except Exception as exc:
            self._warn(
                "malformed",
                gw,
                "gateway %s: malformed envelope (%d bytes): %s",
                gw,
                len(m.payload),
                exc,
            )
            return None
        candidates = keys.candidates(gw, header.key_id)
        if candidates is None:
            self._warn(
                "unknown_key_id",
                gw,
                "gateway %s: batch %d sealed with unknown key id %d",
                gw,
                header.seq,
                header.key_id,
            )
            return None
        plaintext = self._try_open(gw, m.payload, candidates, keys, header.key_id)
        if plaintext is None:
            # the gateway may have re-enrolled with a new key since we cached its keys
            fresh = keys.candidates(gw, header.key_id, refresh=True) or []
            if fresh != candidates:
                plaintext = self._try_open(gw, m.payload, fresh, keys, header.key_id)
        if plaintext is None:
            if not keys.candidates(gw, header.key_id):
                self._warn(
                    "unknown_gateway",
                    gw,
                    "batch for gateway %s, which has no certificate in the registry: ignored",
                    gw,
                )
            else:
                self._warn(
                    "unauthentic",
                    gw,
                    "gateway %s: envelope (seq %d in its unauthenticated"
                    " header) fails authentication: tampered, forged or wrong key; "
                    "ignored, not acked",
                    gw,
                    header.seq,
                )
            return None
        now = time.monotonic()
        if not self._quota.admit(gw, now):
            self._warn(
                "rate_limited",
                gw,
                "gateway %s: batch %d over its quota of %.0f readings/s; acked retry",
                gw,
                header.seq,
                self._quota.rate,
            )
            return gw, header, None, True, b""
        try:
            decoded = decode_any(plaintext, self._names.resolver(gw))
        except UnknownSeries as exc:
            # the batch is fine; this cloud lacks the definitions (lost store?): never reject
            self._warn(
                "unknown_series",
                gw,
                "gateway %s: batch %d names series the dictionary does not hold (%s); "
                "acked retry",
                gw,
                header.seq,
                exc,
            )
            return gw, header, None, True, b""
        except CodecError as exc:
            self._warn(
                "undecodable",
                gw,
                "gateway %s: authentic batch %d does not decode (%s); acked as rejected",
                gw,
                header.seq,
                exc,
            )
            return gw, header, None, False, b""
        self._quota.spend(gw, decoded.readings, now)
        if isinstance(decoded, DecodedV2) and decoded.definitions:
            self._names.learn(gw, decoded.epoch, decoded.definitions)
        return gw, header, decoded, False, hashlib.sha256(plaintext).digest()

    @staticmethod
    def _try_open(
        gw: str, blob: bytes, candidates: list[bytes], keys: _Keys, key_id: int
    ) -> bytes | None:
        for key in candidates:
            try:
                _, plaintext = envelope.open_sealed(key, gw, blob)
            except envelope.EnvelopeError:
                continue
            keys.confirm(gw, key_id, key)
            return bytes(plaintext)
        return None

    def _commit_one_by_one(
        self, records: list[BatchRecord], store: Any, exc: Exception
    ) -> list[str | None]:
        """A group commit failed: retry each batch in its own transaction, so one batch that
        cannot be stored does not make every other gateway's batch of the group wait (None =
        not stored, acked retry)."""
        out: list[str | None] = [None] * len(records)
        errors: list[tuple[BatchRecord, Exception]] = []
        if len(records) == 1:
            errors.append((records[0], exc))
        else:
            log.info("ingest: a group of %d batches failed (%s); storing them one by one",
                     len(records), exc)
            for i, rec in enumerate(records):
                try:
                    out[i] = store.commit_statuses([rec])[0]
                except Exception as one:
                    errors.append((rec, one))
        for rec, err in errors:
            self.counts["store_errors"] += 1
            log.error("ingest: storing batch %d of %s failed (%s: %s); acked retry, nothing of "
                      "it stored", rec.seq, rec.gateway, type(err).__name__, err)
        return out

    def _commit(self, group: list[_Opened], store: Any) -> None:
        """Store a group in one transaction, THEN ack every batch of it (per gateway)."""
        acks: dict[tuple[int, str], tuple[mqtt.Client, list[tuple[int, int]]]] = {}

        def ack(o: _Opened, status: int) -> None:
            acks.setdefault((id(o.client), o.gw), (o.client, []))[1].append((o.seq, status))

        storable = [o for o in group if o.decoded is not None]
        for o in group:
            if o.decoded is None:
                ack(o, ACK_RETRY if o.retry else ACK_REJECTED)
        records: list[BatchRecord] = []
        owners: list[_Opened] = []
        for o in storable:
            assert o.decoded is not None
            for rec in _records(o):
                records.append(rec)
                owners.append(o)
        if records:
            try:
                statuses: list[str | None] = list(store.commit_statuses(records))
            except Exception as exc:
                statuses = self._commit_one_by_one(records, store, exc)
            failed: set[int] = set()  # owners with a part that could not be stored: retry
            conflicted: set[int] = set()  # owners with a part in a sequence conflict: no ack
            for o, rec, status in zip(owners, records, statuses, strict=True):
                if status is None:
                    failed.add(id(o))
                elif status == CONFLICT:
                    conflicted.add(id(o))
                    self._warn(
                        "seq_conflicts",
                        o.gw,
                        "gateway %s: authentic batch %d differs from the batch already "
                        "stored under that sequence (reused or forged-ahead sequence); "
                        "not acked, recorded in seq_conflicts",
                        o.gw,
                        rec.seq,
                    )
                elif status == NEW:
                    self.counts["batches_stored"] += 1
                    self.counts["readings_stored"] += rec.readings
                    if self.forwarder is not None:  # after the commit, first time only
                        self.forwarder.offer(_sink_readings(rec))
                else:
                    self.counts["duplicates"] += 1
                    log.debug(
                        "gateway %s: batch %d already stored (re-sent); acked again",
                        rec.gateway,
                        rec.seq,
                    )
            for o in storable:  # a re-packed batch: acked once all its parts are stored
                if id(o) not in conflicted:
                    ack(o, ACK_RETRY if id(o) in failed else ACK_DELIVERED)
        for (_, gw), (client, items) in acks.items():
            client.publish(topics.down_ack(gw), encode_acks(items), qos=1)
            self.counts["acks_sent"] += len(items)


def _sink_readings(rec: BatchRecord) -> list[Any]:
    """A stored batch's readings as the sinks take them (after the commit, first time only)."""
    out = [Reading(rec.gateway, s.device, s.metric, s.ts_ms, s.value, int(s.quality))
           for s in rec.samples]
    for col in rec.series:
        out.extend(Reading(rec.gateway, col.device, col.metric, ts, v, q)
                   for ts, v, q in zip(col.ts, col.values, col.qualities, strict=True))
    return out


def _records(o: _Opened) -> list[BatchRecord]:
    """Store records of an opened batch: one, or one per ORIGINAL seq of a re-packed batch
    (so the store deduplicates per original batch: a part already stored is skipped)."""
    d = o.decoded
    assert d is not None
    defs = (d.epoch, d.definitions) if isinstance(d, DecodedV2) and d.definitions else None
    if isinstance(d, DecodedV2) and d.parts:
        # each part carries the digest prefix of its original batch (version 3), so a part
        # whose seq is stored with another digest is a sequence conflict; a version 2
        # re-pack (no digests: an older gateway) is deduplicated by sequence only
        if d.alert_part_counts:
            return [
                BatchRecord(o.gw, seq, int(Lane.ALERT), o.received_ms, alerts=alerts,
                            definitions=defs if i == 0 else None, digest=d.part_digest(i))
                for i, (seq, alerts) in enumerate(d.split_alert_parts())
            ]
        return [
            BatchRecord(o.gw, seq, int(Lane.TELEMETRY), o.received_ms, series=series,
                        definitions=defs if i == 0 else None, digest=d.part_digest(i))
            for i, (seq, series) in enumerate(d.split_parts())
        ]
    return [
        BatchRecord(o.gw, o.seq, _lane_of(d), o.received_ms, alerts=d.alerts, gaps=d.gaps,
                    series=d.series, definitions=defs, digest=o.digest)
    ]


class _Dictionaries:
    """Codec v2 series names per (gateway, epoch) for the opener thread: learnt from batches
    as they are decoded, else read from the store (another process, or before a restart)."""

    def __init__(self, store_path: Path | str) -> None:
        self.store_path = store_path
        self._known: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}
        self._store: Any = None

    def learn(self, gw: str, epoch: int, defs: dict[int, tuple[str, str]]) -> None:
        self._known.setdefault((gw, epoch), {}).update(defs)

    def resolver(self, gw: str) -> Callable[[int, Any], dict[int, tuple[str, str]]]:
        def resolve(epoch: int, ids: Any) -> dict[int, tuple[str, str]]:
            known = self._known.setdefault((gw, epoch), {})
            missing = [i for i in ids if i not in known]
            if missing:
                if self._store is None and (
                    is_postgres_url(self.store_path) or Path(self.store_path).exists()
                ):
                    self._store = open_store(self.store_path, readonly=True)
                if self._store is not None:
                    known.update(self._store.series_names(gw, epoch, missing))
            return {i: known[i] for i in ids if i in known}

        return resolve

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _lane_of(decoded: DecodedBatch) -> int:
    """The batch's lane: alerts and gap records travel in the alert lane, blobs in bulk."""
    if decoded.alerts or decoded.gaps:
        return int(Lane.ALERT)
    if (
        decoded.series
        and decoded.series[0].values
        and isinstance(decoded.series[0].values[0], bytes)
    ):
        return int(Lane.BULK)
    return int(Lane.TELEMETRY)


def run_ingest(
    paths: CloudPaths,
    broker_url: str,
    stop_event: threading.Event,
    *,
    workers: int = 1,
    share_group: str = "ingest",
    on_ready: Callable[[Ingest], None] | None = None,
    store: str | Path | None = None,
    forward: Sequence[str] = (),
) -> dict[str, int | float | dict[str, Any]]:
    """Run the ingest until ``stop_event`` (a ``threading.Event``) is set; returns its stats.

    Blocking: call it from a thread (or ``asyncio.to_thread``) in ``edgegw-cloud serve``.
    """
    ingest = Ingest(paths, broker_url, workers=workers, share_group=share_group,
                    store_path=store, forward=forward)
    ingest.start()
    if on_ready is not None:
        on_ready(ingest)
    try:
        while not stop_event.wait(1.0):
            pass
    finally:
        ingest.stop()
    return ingest.stats()


def tune_gc() -> None:
    """Garbage-collector settings for a process whose main work is the ingest (an ingest
    process; ``edgegw-cloud serve``), called once its start-up is done.

    Decoding a batch makes a few container objects per series (a ``Series`` and its lists)
    that live until the batch is stored, i.e. across several young-generation collections at
    CPython's default threshold (700 allocations): they are traversed, promoted and, once
    enough have been promoted, every object of the process is traversed by a full collection.
    That cost more CPU than the decoding itself (a 1000-series batch: ~2.5 ms instead of
    ~0.76 ms beside a 200k-object heap; docs/performance.md "Drain"). So: the objects made
    at start-up (modules, configuration) are frozen out of the collections, and the
    young-generation threshold is raised to ``GC_GEN0_THRESHOLD``. Garbage without cycles is
    freed by reference counting as before; only cyclic garbage waits a little longer.
    """
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


# --------------------------------------------------------------------------- worker processes
def _ingest_process(
    data_dir: Path, url: str, stop: Any, ready: Any, stats_file: Path | None,
    store: str | Path | None = None,
    forward: Sequence[str] = (),
) -> None:
    """One ingest worker process (the broker spreads the shared subscription over them)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    repeats = throttle_repeated_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ``stop``
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_gc()  # this process only ingests
    try:
        stats = run_ingest(
            CloudPaths.for_dir(data_dir), url, stop, on_ready=lambda _ingest: ready.set(),
            store=store, forward=forward,
        )
    finally:
        repeats.close()
    if stats_file is not None:
        stats_file.write_text(json.dumps(stats, default=str))


class IngestProcesses:
    """N ingest processes on the shared subscription, each with its own GIL (decode and store
    use a core each); the store's SQLite write lock serialises their commits."""

    def __init__(
        self, paths: CloudPaths, url: str, n: int, stats_dir: Path | None = None,
        store: str | Path | None = None,
        forward: Sequence[str] = (),
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = [ctx.Event() for _ in range(n)]
        self._procs = [
            ctx.Process(
                target=_ingest_process,
                args=(
                    paths.data_dir,
                    url,
                    self._stop,
                    self._ready[i],
                    stats_dir / f"ingest-{i}.json" if stats_dir is not None else None,
                    store,
                    tuple(forward),
                ),
                name=f"ingest-{i}",
                daemon=True,
            )
            for i in range(n)
        ]
        for p in self._procs:
            p.start()

    @property
    def pids(self) -> list[int]:
        """The ingest processes' ids (for CPU accounting in benches)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def wait_ready(self, timeout: float) -> bool:
        """True once every process has subscribed."""
        deadline = time.monotonic() + timeout
        return all(ev.wait(max(0.0, deadline - time.monotonic())) for ev in self._ready)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
