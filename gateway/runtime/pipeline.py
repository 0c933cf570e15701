"""The data path inside the gateway: driver samples -> edge stages -> batcher -> sealed outbox.

Invariants:
- Stages run on the event loop and must be fast and non-blocking; they see samples in arrival order.
- The batcher seals a lane's pending items when ``max_readings`` is reached or when the oldest
  pending item is ``max_age`` old, so a crash loses at most ``max_age`` of unsealed readings.
- Round seal (telemetry, docs/delivery.md "When a batch is sealed"): once no reading has arrived
  for ``quiet`` (a poll round's readings are in) and the last telemetry seal is at least
  ``min_interval`` old, the lane is sealed at once instead of waiting for ``max_age``; at most
  one round seal per ``min_interval``. Skipped while the link is slow (the adaptive age is above
  ``max_age``) or a seal is still waiting for the outbox thread: then batches grow by age/size.
- Encoding, sealing and the SQLite transaction run in the ONE outbox thread (``OutboxThread``),
  never on the event loop. A caller of ``submit(..., durable=True)`` resumes only after the
  transaction holding its samples has committed.
- Held samples (``edgegw.edge.stage``): a durable submit whose samples a stage holds (an open
  aggregation window) completes when the output that releases the hold (the aggregate) is
  sealed. ``flush()`` releases every hold and seals everything: after it returns, every sample
  that reached ``submit`` is in the outbox, raw or inside an aggregate.
- Backpressure: at most ``max_pending_seals`` batches wait for the outbox thread; beyond that,
  ``submit`` waits, so memory stays bounded when the disk is slow.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol, TypeVar

from edgegw.edge.stage import HoldKey, Stage, StageOutput, WriteRequest
from edgegw.model import Alert, Lane, Quality, Sample, now_ms
from edgegw.protocol.codec import CodecError, encode_batch
from edgegw.protocol.envelope import HEADER_SIZE, TAG_SIZE
from edgegw.protocol.model import SampleBlock

log = logging.getLogger("edgegw.pipeline")

T = TypeVar("T")


class OutboxThread:
    """The one thread that owns the SQLite outbox; everything touching it goes through here."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class OutboxLike(Protocol):
    def append(
        self, lane: Lane, plaintext: bytes, *, count: int, first_ts_ms: int, last_ts_ms: int
    ) -> int: ...


class _AllDropped(CodecError):
    """Every reading of a batch was unstorable (dropped and counted): nothing to append."""


def _fail(waiters: Sequence[asyncio.Future[int]], exc: BaseException) -> None:
    for w in waiters:
        if not w.done():
            w.set_exception(exc)


_VARLEN = frozenset((str, bytes))
_VALUE = attrgetter("value")


def _var_bytes(samples: Sequence[Sample]) -> int:
    """Bytes of the str and bytes values among ``samples`` (characters for a str): a C-level
    pass over the value types first, so a poll of numbers costs one type look-up per value."""
    values = samples.values if type(samples) is SampleBlock else list(map(_VALUE, samples))
    if _VARLEN.isdisjoint(map(type, values)):
        return 0
    return sum(len(v) for v in values if isinstance(v, str | bytes))


@dataclass
class _Pending:
    samples: list[Sample] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    since: float = 0.0  # monotonic time of the oldest pending item
    waiters: list[asyncio.Future[int]] = field(default_factory=list)
    #: polls' SampleBlocks, kept as columns while ``samples`` is empty (arrival order: once a
    #: plain sample arrives, the blocks become samples first)
    blocks: list[SampleBlock] = field(default_factory=list)
    in_blocks: int = 0  # readings in ``blocks``
    #: bytes of the str and bytes values pending (telemetry: ``batch.max_bytes``; bulk:
    #: ``max_bulk_bytes``)
    var_bytes: int = 0

    def __len__(self) -> int:
        return len(self.samples) + self.in_blocks + len(self.alerts)

    @property
    def readings(self) -> int:
        return len(self.samples) + self.in_blocks

    def add_samples(self, samples: Sequence[Sample]) -> None:
        if type(samples) is SampleBlock and not self.samples:
            self.blocks.append(samples)
            self.in_blocks += len(samples)
            return
        if self.blocks:
            for b in self.blocks:
                self.samples.extend(b)
            self.blocks, self.in_blocks = [], 0
        self.samples.extend(samples)


class Batcher:
    """Groups items per lane and seals them into the outbox by size or age."""

    def __init__(
        self,
        outbox: OutboxLike,
        outbox_thread: OutboxThread,
        *,
        max_readings: int = 5000,
        max_age: float = 0.25,
        max_bulk_bytes: int = 4 * 1024 * 1024,
        max_bytes: int = 256 * 1024,
        max_pending_seals: int = 16,
        encode: Callable[..., bytes | tuple[bytes, list[int]]] | None = None,
        quiet: float = 0.0,
        min_interval: float = 0.05,
    ) -> None:
        self._encode: Callable[..., bytes | tuple[bytes, list[int]]] = encode or encode_batch
        self._outbox = outbox
        self._thread = outbox_thread
        self.max_readings = max_readings
        self.max_age = max_age
        self.max_bulk_bytes = max_bulk_bytes
        #: ``batch.max_bytes``: a telemetry batch is sealed once the str and bytes values
        #: pending reach this many bytes (numbers, a few bytes each once encoded, are bounded
        #: by ``max_readings``)
        self.max_bytes = max_bytes
        self._pending: dict[Lane, _Pending] = {lane: _Pending() for lane in Lane}
        self._seal_slots = asyncio.Semaphore(max_pending_seals)
        self._inflight: set[asyncio.Task[None]] = set()
        self.readings_in = 0
        self.alerts_in = 0
        self.batches_sealed = 0
        self.readings_sealed = 0
        #: called on the event loop after each committed batch (the uplink's wake-up), with
        #: the stored batch when the outbox says what it stored (``Outbox.last_appended``)
        #: or None (then the uplink reads the outbox)
        self.on_sealed: Callable[[Lane, Any], None] | None = None
        self.seal_errors = 0
        self.batches_refused = 0
        self.readings_refused = 0
        #: readings whose value the encoder refused (a driver returned e.g. a numpy integer or
        #: an int over 64 bits): stored as BAD_DATA with no value instead of failing the batch
        self.bad_values = 0
        #: readings the encoder refuses even without their value (a push driver's Sample with
        #: a float ts_ms or a non-str metric): dropped alone, the rest of the batch is stored
        self.bad_readings = 0
        self._bad_series: set[tuple[Any, Any]] = set()  # those already logged
        self._refusing = False
        self.bytes_sealed = 0  # envelope bytes (header + ciphertext + tag), what goes on the wire
        self.last_seal_ms = 0
        #: telemetry max_age chosen by the link (``edgegw.runtime.batching``); None = max_age
        self.age_policy: Callable[[], float] | None = None
        #: called in the outbox thread after each append with (seq, series ids it defined)
        self.on_appended: Callable[[int, list[int]], None] | None = None
        # round seals (module doc): 0 turns them off
        self.quiet = quiet
        self.min_interval = min_interval
        self._last_in = 0.0  # monotonic time of the last telemetry reading in
        self._last_tele_seal = -min_interval
        self._round_timer: asyncio.TimerHandle | None = None
        self._round_tasks: set[asyncio.Task[None]] = set()
        self.round_seals = 0
        # age timers (set by ``Pipeline.run``): one loop timer at the earliest age bound of the
        # pending lanes, instead of a 50 ms clock checking them
        self.timed_ages = False
        self._age_timer: asyncio.TimerHandle | None = None
        self._age_at = math.inf

    def add(self, lane: Lane, samples: Sequence[Sample], alerts: Sequence[Alert] = ()) -> _Pending:
        p = self._pending[lane]
        now = time.monotonic()
        if not len(p):
            p.since = now
            if self.timed_ages and (samples or alerts):
                self._arm_age(lane, now)
        if lane is Lane.TELEMETRY and self.quiet > 0 and samples:
            self._last_in = now
            if self._round_timer is None:
                self._arm_round(now)
        if lane is Lane.TELEMETRY:
            p.add_samples(samples)
        else:
            p.samples.extend(samples)
        if lane is not Lane.ALERT and samples:
            p.var_bytes += _var_bytes(samples)
        p.alerts.extend(alerts)
        self.readings_in += len(samples)
        self.alerts_in += len(alerts)
        return p

    def _lane_age(self, lane: Lane) -> float:
        if lane is Lane.TELEMETRY and self.age_policy is not None:
            return self.age_policy()
        return 0.0 if lane is Lane.ALERT else self.max_age

    def _arm_age(self, lane: Lane, now: float) -> None:
        """Have ``_age_check`` run when ``lane``'s oldest pending item reaches its age bound
        (one timer for all lanes: the earliest bound)."""
        at = self._pending[lane].since + self._lane_age(lane)
        if self._age_timer is not None:
            if self._age_at <= at:
                return
            self._age_timer.cancel()
        loop = asyncio.get_running_loop()
        self._age_at = at
        self._age_timer = loop.call_at(loop.time() + max(0.0, at - now), self._age_check)

    def _age_check(self) -> None:
        """Timer callback: seal the lanes that are due; re-arm for those still pending."""
        self._age_timer, self._age_at = None, math.inf
        now = time.monotonic()
        lanes = self.due(now)
        if lanes:
            task = asyncio.get_running_loop().create_task(self._seal_all(lanes))
            self._round_tasks.add(task)
            task.add_done_callback(self._round_tasks.discard)
        for lane, p in self._pending.items():
            if len(p) and lane not in lanes:
                self._arm_age(lane, now)

    async def _seal_all(self, lanes: list[Lane]) -> None:
        for lane in lanes:
            await self.seal(lane)

    def _arm_round(self, now: float) -> None:
        at = max(self._last_in + self.quiet, self._last_tele_seal + self.min_interval)
        loop = asyncio.get_running_loop()
        self._round_timer = loop.call_at(loop.time() + max(0.0, at - now), self._round_check)

    def _round_check(self) -> None:
        """Timer callback: seal the telemetry lane if its round is in (see the module doc)."""
        self._round_timer = None
        p = self._pending[Lane.TELEMETRY]
        if not len(p):
            return
        if self.age_policy is not None and self.age_policy() > self.max_age:
            return  # a slow link: bigger batches (sealed by age or size)
        if self._inflight:
            return  # the disk is behind: the batch grows until that commit is done (re-arms)
        now = time.monotonic()
        if now < max(self._last_in + self.quiet, self._last_tele_seal + self.min_interval):
            self._arm_round(now)  # more readings came in meanwhile
            return
        self.round_seals += 1
        task = asyncio.get_running_loop().create_task(self.seal(Lane.TELEMETRY))
        self._round_tasks.add(task)
        task.add_done_callback(self._round_tasks.discard)

    def due(self, now: float) -> list[Lane]:
        """Lanes that must be sealed now (full, or oldest item older than max_age)."""
        out = []
        tele_age = self.age_policy() if self.age_policy is not None else self.max_age
        # a slow link's longer batches may hold proportionally more readings (at most 10x)
        tele_cap = min(10 * self.max_readings,
                       max(self.max_readings, int(self.max_readings * tele_age / self.max_age)))
        for lane, p in self._pending.items():
            n = len(p)
            if not n:
                continue
            if (
                n >= (tele_cap if lane is Lane.TELEMETRY else self.max_readings)
                or now - p.since >= (tele_age if lane is Lane.TELEMETRY else self.max_age)
                or p.var_bytes >= (self.max_bytes if lane is Lane.TELEMETRY
                                   else self.max_bulk_bytes)
                or lane is Lane.ALERT  # alerts are sealed at once: latency budget 100 ms
            ):
                out.append(lane)
        return out

    async def seal(self, lane: Lane) -> None:
        """Hand the lane's pending items to the outbox thread (waits if too many are queued)."""
        p = self._pending[lane]
        if not len(p):
            return
        self._pending[lane] = _Pending()
        if lane is Lane.TELEMETRY:
            self._last_tele_seal = time.monotonic()
        await self._seal_slots.acquire()
        task = asyncio.get_running_loop().create_task(self._commit(lane, p))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _commit(self, lane: Lane, p: _Pending) -> None:
        try:
            seq, stored, dropped = await self._thread.call(self._encode_append, lane,
                                                           p.samples, p.alerts, p.blocks)
        except _AllDropped as exc:  # counted in bad_readings and logged once per series
            _fail(p.waiters, exc)
        except Exception as exc:
            self.seal_errors += 1
            if type(exc).__name__ == "OutboxFull":
                # expected trouble under the outbox's stated policy (full, disk space low): the
                # outbox counts it and names it in its next gap record; say so once per episode
                self.batches_refused += 1
                self.readings_refused += p.readings
                if not self._refusing:
                    log.warning("outbox refused a %s batch of %d items: %s (further refusals "
                                "are counted, and named by gap records)", lane.name.lower(),
                                len(p), exc)
                self._refusing = True
            else:
                log.error("sealing a %s batch of %d items failed: %s", lane.name.lower(), len(p),
                          exc)
            _fail(p.waiters, exc)
        else:
            if self._refusing:
                log.info("outbox accepts batches again (%d refused meanwhile)",
                         self.batches_refused)
                self._refusing = False
            self.batches_sealed += 1
            self.readings_sealed += p.readings - dropped
            self.last_seal_ms = now_ms()
            for w in p.waiters:
                if not w.done():
                    w.set_result(seq)
            if self.on_sealed is not None:
                self.on_sealed(lane, stored)
        finally:
            self._seal_slots.release()
            if (self.quiet > 0 and self._round_timer is None and not self._inflight - {
                    asyncio.current_task()} and len(self._pending[Lane.TELEMETRY])):
                self._arm_round(time.monotonic())

    def _encode_append(self, lane: Lane, samples: list[Sample], alerts: list[Alert],
                       blocks: Sequence[SampleBlock] = ()) -> tuple[int, Any, int]:
        """Encode and append one batch: (outbox seq, the outbox's last append, readings
        dropped as unstorable). Runs in the outbox thread."""
        dropped = 0
        if blocks and not getattr(self._encode, "takes_blocks", False):
            samples = [s for b in blocks for s in b] + samples
            blocks = ()
        try:
            plaintext = (self._encode(samples=samples, alerts=alerts, blocks=blocks) if blocks
                         else self._encode(samples=samples, alerts=alerts))
        except CodecError:
            # One bad value must not lose the batch (every device's readings in it): find the
            # readings the encoder refuses, store them as BAD_DATA without a value, encode
            # again. Raises on if no reading is at fault (then the batch fails as before).
            fixed = self._without_bad_values(samples, blocks)
            if fixed is None:
                raise
            dropped = len(samples) + sum(map(len, blocks)) - len(fixed)
            if not fixed and not alerts:
                raise _AllDropped(f"all {dropped} readings of the batch were dropped as "
                                  "unstorable (see the warnings and bad_readings)") from None
            samples, blocks = fixed, ()
            plaintext = self._encode(samples=samples, alerts=alerts)
        defined: list[int] = []
        if isinstance(plaintext, tuple):  # a dictionary encoder: (bytes, ids defined in it)
            plaintext, defined = plaintext
        self.bytes_sealed += HEADER_SIZE + len(plaintext) + TAG_SIZE
        stamps = ([s.ts_ms for s in samples] + [a.ts_ms for a in alerts]
                  + [b.ts_ms for b in blocks])
        seq = self._outbox.append(
            lane,
            plaintext,
            count=len(samples) + len(alerts) + sum(map(len, blocks)),
            first_ts_ms=min(stamps),
            last_ts_ms=max(stamps),
        )
        if self.on_appended is not None:
            self.on_appended(seq, defined)
        return seq, getattr(self._outbox, "last_appended", None), dropped

    def _without_bad_values(self, samples: list[Sample],
                            blocks: Sequence[SampleBlock]) -> list[Sample] | None:
        """The batch's readings with every value the encoder refuses replaced by None and
        BAD_DATA, and without the readings it refuses even so (a push driver's own Sample with
        a float timestamp or a metric that is not a str: nothing of them can be stored, they
        are dropped and counted in ``bad_readings``); None when no reading is at fault."""
        out: list[Sample] = []
        bad = dropped = 0
        for s in [*(s for b in blocks for s in b), *samples]:
            try:
                encode_batch(samples=(s,))
            except CodecError as exc:
                key = (s.device, s.metric)
                s = Sample(s.device, s.metric, s.ts_ms, None, Quality.BAD_DATA)
                try:
                    encode_batch(samples=(s,))
                except CodecError:
                    dropped += 1
                    self._warn_once(key, f"{exc}; reading dropped: it cannot be stored even "
                                         "without its value (further ones of this series are "
                                         "counted in the pipeline's bad_readings)")
                    continue
                bad += 1
                self._warn_once(key, f"{exc}; stored as bad_data with no value (further ones "
                                     "of this series are counted in the pipeline's bad_values)")
            out.append(s)
        if not bad and not dropped:
            return None
        self.bad_values += bad
        self.bad_readings += dropped
        return out

    def _warn_once(self, key: tuple[Any, Any], message: str) -> None:
        try:
            if key in self._bad_series or len(self._bad_series) >= 10_000:
                return
            self._bad_series.add(key)
        except TypeError:  # an unhashable device or metric: say it every time it happens
            pass
        log.warning("%s", message)

    async def drain(self) -> None:
        """Seal everything pending and wait until the outbox thread has committed it."""
        if self._round_tasks:
            await asyncio.gather(*list(self._round_tasks), return_exceptions=True)
        for lane in Lane:
            await self.seal(lane)
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {
            "readings_in": self.readings_in,
            "alerts_in": self.alerts_in,
            "batches_sealed": self.batches_sealed,
            "readings_sealed": self.readings_sealed,
            "bytes_sealed": self.bytes_sealed,
            "seal_errors": self.seal_errors,
            "batches_refused": self.batches_refused,
            "readings_refused": self.readings_refused,
            "bad_values": self.bad_values,
            "bad_readings": self.bad_readings,
            "pending": {lane.name.lower(): len(p) for lane, p in self._pending.items()},
            "seals_in_flight": len(self._inflight),
            "round_seals": self.round_seals,
        }


@dataclass
class _Round:
    """Hold bookkeeping of one pass through the stages."""

    durable: bool
    wait_for: list[asyncio.Future[int]] = field(default_factory=list)
    released: list[asyncio.Future[int]] = field(default_factory=list)


class Pipeline:
    """Runs the edge stages and feeds the batcher; ``run()`` is its clock: it ticks every
    ``TICK`` (50 ms) while edge stages are configured (their windows and timers), else every
    ``IDLE_TICK`` (1 s: the watchdog's heartbeat and a backstop), the batcher's age bounds then
    being kept by its own timers (``Batcher.timed_ages``)."""

    TICK = 0.05
    IDLE_TICK = 1.0

    def __init__(
        self,
        batcher: Batcher,
        stages: Sequence[Stage] = (),
        *,
        on_writes: Callable[[list[WriteRequest]], None] | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.batcher = batcher
        self.stages = list(stages)
        self._on_writes = on_writes
        self._clock_ms = clock_ms
        self.ticks = 0
        self.stage_errors: dict[str, int] = {}
        self._stage_error_logged: dict[str, float] = {}  # stage -> when its traceback was logged
        self._last_tick_ms = 0
        #: durable submitters waiting for a hold to be released: (stage index, key) -> futures
        self._hold_waiters: dict[tuple[int, HoldKey], list[asyncio.Future[int]]] = {}

    def _run_stages(
        self, samples: list[Sample], start: int, now: int, rnd: _Round
    ) -> tuple[list[Sample], list[Alert]]:
        """Run ``samples`` through stages[start:]; tick outputs enter at their stage's successor."""
        alerts: list[Alert] = []
        writes: list[WriteRequest] = []
        for i in range(start, len(self.stages)):
            if not samples:
                break
            stage = self.stages[i]
            try:
                samples, a, w = stage.process(samples, now)
            except Exception:
                # A broken stage must not lose data: pass its input through unchanged.
                self._stage_failed(stage, "process; passing samples through")
                continue
            self._holds(i, stage, rnd)
            alerts.extend(a)
            writes.extend(w)
        if writes and self._on_writes is not None:
            self._on_writes(writes)
        return samples, alerts

    def _stage_failed(self, stage: Stage, where: str) -> None:
        """Count a stage's failure; the traceback is logged for the first one of each stage and
        then at most once a minute (a stage failing on every poll must not flood the log)."""
        n = self.stage_errors[stage.name] = self.stage_errors.get(stage.name, 0) + 1
        now = time.monotonic()
        last = self._stage_error_logged.get(stage.name)
        if last is not None and now - last < 60.0:
            return
        self._stage_error_logged[stage.name] = now
        log.exception("edge stage %s failed in %s (%d failures so far, counted in "
                      "stage_errors)", stage.name, where, n)

    def _holds(self, i: int, stage: Stage, rnd: _Round) -> None:
        """Record the holds the last call of ``stage`` made and released (see the module doc)."""
        holds = stage.take_holds()
        if holds and rnd.durable:
            loop = asyncio.get_running_loop()
            for key in holds:
                fut: asyncio.Future[int] = loop.create_future()
                self._hold_waiters.setdefault((i, key), []).append(fut)
                rnd.wait_for.append(fut)
        released = stage.take_released()
        if released and self._hold_waiters:
            for key in released:
                rnd.released.extend(self._hold_waiters.pop((i, key), ()))

    def _settle_round(self, rnd: _Round, p: _Pending | None) -> None:
        """Released durable waiters complete with the batch holding the release's output."""
        if not rnd.released:
            return
        if p is not None:
            p.waiters.extend(rnd.released)
        else:
            for fut in rnd.released:
                if not fut.done():
                    fut.set_result(0)
        rnd.released = []

    @property
    def held(self) -> int:
        """Samples the stages hold right now (open aggregation windows)."""
        return sum(stage.held() for stage in self.stages)

    async def submit(
        self, samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> None:
        """Accept samples from a driver (this is the ``emit`` given to push drivers)."""
        rnd = _Round(durable)
        out: Sequence[Sample]
        if lane is Lane.TELEMETRY and self.stages:
            # the stages take Samples: a poll's SampleBlock is materialised here, only here
            out, alerts = self._run_stages(list(samples), 0, self._clock_ms(), rnd)
        elif type(samples) is SampleBlock:
            out, alerts = samples, []  # kept as columns up to the encoder
        else:
            out, alerts = list(samples), []
        waiters: list[asyncio.Future[int]] = rnd.wait_for
        if alerts:
            p = self.batcher.add(Lane.ALERT, (), alerts)
            if durable:
                waiters.append(self._waiter(p))
        tp: _Pending | None = None
        if out:
            tp = self.batcher.add(lane, out)
            if durable:
                waiters.append(self._waiter(tp))
        self._settle_round(rnd, tp)
        due = set(self.batcher.due(time.monotonic()))
        if durable:
            # The caller acknowledges to its device after this returns: seal now, not at max_age.
            due |= {lane, Lane.ALERT} if alerts else {lane}
        for ln in sorted(due):
            await self.batcher.seal(ln)
        if waiters:
            await asyncio.gather(*waiters)

    @staticmethod
    def _waiter(p: _Pending) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        p.waiters.append(fut)
        return fut

    def _stage_outputs(self, now: int, flush: bool) -> None:
        """One clock round: every stage's ``tick`` (or ``flush``) output, on through the rest."""
        for i, stage in enumerate(self.stages):
            self._stage_output(i, stage, now, stage.flush if flush else stage.tick)

    def _stage_output(self, i: int, stage: Stage, now: int,
                      fn: Callable[[int], StageOutput]) -> None:
        """``fn`` (the stage's tick, flush or retire) and its output on through the rest."""
        rnd = _Round(False)
        try:
            samples, alerts, writes = fn(now)
        except Exception:
            self._stage_failed(stage, fn.__name__)
            return
        self._holds(i, stage, rnd)
        if writes and self._on_writes is not None:
            self._on_writes(writes)
        more_alerts: list[Alert] = []
        if samples:
            samples, more_alerts = self._run_stages(samples, i + 1, now, rnd)
        if alerts or more_alerts:
            self.batcher.add(Lane.ALERT, (), alerts + more_alerts)
        self._settle_round(rnd, self.batcher.add(Lane.TELEMETRY, samples) if samples else None)

    def replace_stages(self, stages: Sequence[Stage]) -> list[str]:
        """Swap in new edge stages (remote configuration) without losing what the old ones hold.

        Every old stage that is not in ``stages`` (the same object) is flushed first, through
        the old stages behind it: its open aggregation windows are closed and their outputs
        stored, its holds released (durable submitters waiting on them complete with the batch
        of the output). A kept stage keeps its state (open windows, learnt models, active
        episodes) and its holds' waiters. Returns the names of the stages flushed out."""
        new = list(stages)
        index = {id(s): j for j, s in enumerate(new)}  # where each kept stage goes
        now = self._clock_ms()
        gone: list[str] = []
        for i, stage in enumerate(self.stages):
            if id(stage) not in index:
                # a stage with more to say when replaced than at a flush (the rules stage ends
                # its episodes) has a ``retire`` of its own
                self._stage_output(i, stage, now, getattr(stage, "retire", stage.flush))
                gone.append(stage.name)
        waiters, self._hold_waiters = self._hold_waiters, {}
        for (i, key), futs in waiters.items():
            j = index.get(id(self.stages[i]))
            if j is not None:
                self._hold_waiters[(j, key)] = futs
                continue
            for fut in futs:  # a flushed stage kept a hold against its contract: do not hang
                if not fut.done():
                    fut.set_result(0)
        self.stages = new
        return gone

    async def tick_once(self) -> None:
        now = self._clock_ms()
        self._last_tick_ms = now
        self._stage_outputs(now, flush=False)
        for ln in self.batcher.due(time.monotonic()):
            await self.batcher.seal(ln)
        self.ticks += 1

    async def flush(self) -> None:
        """Release every held sample and seal everything pending; returns after the commit."""
        await self.tick_once()
        self._stage_outputs(self._clock_ms(), flush=True)
        await self.batcher.drain()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.batcher.timed_ages = True
        deadline = loop.time()
        try:
            while True:
                # a stage configured at run time (remote configuration) gets its 50 ms ticks
                # from the next idle tick on (within IDLE_TICK)
                deadline = max(deadline + (self.TICK if self.stages else self.IDLE_TICK),
                               loop.time())
                await asyncio.sleep(deadline - loop.time())
                await self.tick_once()
        finally:
            self.batcher.timed_ages = False

    @property
    def last_tick_ms(self) -> int:
        return self._last_tick_ms

    def stats(self) -> dict[str, Any]:
        stats = {
            "ticks": self.ticks,
            "stage_errors": dict(self.stage_errors),
            "held": self.held,
            "durable_waiting_on_holds": len(self._hold_waiters),
        }
        return stats | self.batcher.stats()
