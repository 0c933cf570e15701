"""OTA rollouts: which gateways get a release, in which waves, and where each one stands.

Storage: two tables in ``DATA/ota/ota.db`` (next to the release store, ``edgegw_cloud.ota``)::

    rollouts  id, release, waves (cumulative sizes), max_failures, window, wave_timeout_s,
              state (running | halted | cancelled | completed), reason, wave (index of the
              started wave, -1 before the first), acked_failures, timestamps
    targets   (rollout, gateway): position in the sorted target list, wave (first wave that
              includes it), state (``edgegw.protocol.ota_transfer.STATES``), bytes, received,
              total, reason, detail, version, offer/cancel bookkeeping

The CLI writes rollouts (create, halt, resume, cancel) and reads them (status); ``serve``'s
device manager runs ``RolloutEngine`` over the same rows: one tick a second and on events
(a gateway's state report, a gateway connecting). The engine is a plain class: the clock, the
sender and the online test are injected, so the state machine is tested without a broker.

Invariants:
- Wave ``k``'s target set is cumulative: the first ``waves[k]`` gateways of the sorted target
  list. Wave ``k+1`` starts only when every gateway of wave ``k``'s set is terminal and the
  failure ratio is within ``max_failures``; the last wave always covers every target.
- ``failures / len(wave set) > max_failures`` (failures counted since the last ``resume``)
  halts the rollout by itself (``halted``, reason ``failure threshold ...``); a halted,
  cancelled or completed rollout never sends a new offer.
- A state report is recorded idempotently: the same report again changes nothing, and a
  target in a terminal state never moves again (a new offer is a new rollout, a new row).
- A target becomes ``offered`` only after the broker took the offer; an offer that may have
  been lost (the gateway was offline: clean sessions) is sent again when the gateway connects,
  and every ``reoffer_s`` while it stays unanswered. A gateway known to be offline is not sent
  anything; it stays ``pending`` until it connects.
- ``cancel`` marks the targets never offered ``cancelled`` at once and sends ``cancel`` to the
  ones still downloading or waiting (again on reconnect); a target already installing or on
  trial is left to finish (the gateway commits or rolls back on its own).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgegw.protocol import ota_transfer as ot
from edgegw.protocol.cron import CronError, cron_trigger
from edgegw_cloud.registry import Registry

log = logging.getLogger("edgegw.cloud.rollout")

RUNNING, HALTED, CANCELLED, COMPLETED = "running", "halted", "cancelled", "completed"
ROLLOUT_STATES = (RUNNING, HALTED, CANCELLED, COMPLETED)
#: target states in which the gateway still downloads or waits: a ``cancel`` stops them
CANCELLABLE = frozenset({"offered", "downloading", "verifying", "waiting_window"})
DEFAULT_WAVES = "1,10%,50%,100%"
DEFAULT_MAX_FAILURES = "10%"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  release_id TEXT NOT NULL,
  serial INTEGER NOT NULL,
  selector TEXT NOT NULL,             -- what --to said (all | gw1,gw2 | label:k=v)
  waves TEXT NOT NULL,                -- JSON list of cumulative wave sizes
  max_failures TEXT NOT NULL,         -- "10%" or an absolute count "2"
  win TEXT,                           -- maintenance window (cron) sent with the offers
  wave_timeout_s REAL,
  state TEXT NOT NULL,                -- running | halted | cancelled | completed
  reason TEXT,                        -- why halted / cancelled
  wave INTEGER NOT NULL DEFAULT -1,   -- index of the started wave (-1: none yet)
  wave_started_ms INTEGER,
  acked_failures INTEGER NOT NULL DEFAULT 0,  -- failures accepted by `resume`
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
  rollout INTEGER NOT NULL REFERENCES rollouts(id),
  gateway TEXT NOT NULL,
  position INTEGER NOT NULL,
  wave INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  bytes INTEGER NOT NULL DEFAULT 0,
  received INTEGER NOT NULL DEFAULT 0,
  total INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  detail TEXT,
  version TEXT,
  offers INTEGER NOT NULL DEFAULT 0,
  offer_ms INTEGER,                   -- last offer sent (or tried)
  cancel_ms INTEGER,                  -- last cancel sent
  updated_ms INTEGER,
  PRIMARY KEY (rollout, gateway)
);
CREATE INDEX IF NOT EXISTS targets_gw ON targets(gateway, rollout);
"""


class RolloutError(Exception):
    """An operator mistake in a rollout command (the message says what to do)."""


# --------------------------------------------------------------------------- plans
def parse_waves(text: str, n: int) -> list[int]:
    """``1,10%,50%,100%`` over ``n`` targets -> cumulative sizes, e.g. [1, 10, 50, 100].

    A percentage rounds up (at least one gateway), a count is capped at ``n``; a wave no larger
    than the previous one is dropped, and the last wave always covers every target."""
    if n <= 0:
        raise RolloutError("no gateways to roll out to")
    sizes: list[int] = []
    for item in (text or DEFAULT_WAVES).split(","):
        item = item.strip()
        try:
            if item.endswith("%"):
                pct = float(item[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                size = max(1, math.ceil(n * pct / 100 - 1e-9))
            else:
                size = int(item)
                if size <= 0:
                    raise ValueError
        except ValueError:
            raise RolloutError(f"--waves {text!r}: {item!r} is neither a count >= 1 nor a "
                               "percentage in (0, 100] (e.g. 1,10%,50%,100%)") from None
        size = min(size, n)
        if not sizes or size > sizes[-1]:
            sizes.append(size)
    if sizes[-1] < n:
        sizes.append(n)
    return sizes


def parse_max_failures(text: str) -> str:
    """``10%`` (a ratio of the wave) or ``2`` (a count); returned normalised."""
    t = (text or DEFAULT_MAX_FAILURES).strip()
    try:
        if t.endswith("%"):
            pct = float(t[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return f"{pct:g}%"
        count = int(t)
        if count < 0:
            raise ValueError
        return str(count)
    except ValueError:
        raise RolloutError(f"--max-failures {text!r}: a percentage (10%) or a count (2)") from None


def threshold_exceeded(max_failures: str, failures: int, wave_size: int) -> bool:
    """True when ``failures`` among ``wave_size`` gateways pass ``max_failures``."""
    if failures <= 0:
        return False
    if max_failures.endswith("%"):
        return failures / max(wave_size, 1) > float(max_failures[:-1]) / 100
    return failures > int(max_failures)


def check_window(window: str | None) -> str | None:
    """A 5-field crontab expression (the gateway's grammar, ``edgegw.protocol.cron``) or None."""
    if window is None or not window.strip():
        return None
    w = " ".join(window.split())
    if len(w.split(" ")) != 5:
        raise RolloutError(f"--window {window!r}: a cron expression has 5 fields "
                           "(minute hour day month weekday), e.g. '0-59 2-4 * * *'")
    try:
        cron_trigger(w)
    except CronError as exc:
        raise RolloutError(f"--window {window!r}: {exc}") from None
    return w


def resolve_targets(reg: Registry, to: str) -> list[str]:
    """``all`` | ``gw1,gw2`` | ``label:key=value[,key=value]`` -> sorted gateway ids (enrolled,
    not revoked; named gateways must exist)."""
    text = (to or "").strip()
    if not text:
        raise RolloutError("--to is required: all | gw1,gw2 | label:key=value")
    if text == "all":
        found = [g.id for g in reg.gateways() if g.cert_serial is not None and not g.revoked]
    elif text.startswith("label:"):
        labels: dict[str, str] = {}
        for kv in text[len("label:"):].split(","):
            k, sep, v = kv.partition("=")
            if not sep or not k.strip():
                raise RolloutError(f"--to {text!r}: labels are key=value[,key=value]")
            labels[k.strip()] = v.strip()
        found = reg.select(labels)
    else:
        found = []
        for gw in (g.strip() for g in text.split(",")):
            if not gw:
                continue
            row = reg.gateway(gw)
            if row is None:
                raise RolloutError(f"--to: unknown gateway {gw!r} (see `edgegw-cloud gateways`)")
            if row.revoked:
                raise RolloutError(f"--to: gateway {gw!r} is revoked")
            found.append(gw)
    if not found:
        raise RolloutError(f"--to {text!r} selects no gateway (labels: `edgegw-cloud gateways "
                           "label GW key=value`)")
    return sorted(set(found))


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True, slots=True)
class Rollout:
    id: int
    release_id: str
    serial: int
    selector: str
    waves: list[int]
    max_failures: str
    window: str | None
    wave_timeout_s: float | None
    state: str
    reason: str | None
    wave: int
    wave_started_ms: int | None
    acked_failures: int
    created_ms: int
    updated_ms: int

    @property
    def active(self) -> bool:
        return self.state in (RUNNING, HALTED)

    def wave_size(self, wave: int | None = None) -> int:
        w = self.wave if wave is None else wave
        return self.waves[w] if 0 <= w < len(self.waves) else 0


@dataclass(frozen=True, slots=True)
class Target:
    rollout: int
    gateway: str
    position: int
    wave: int
    state: str
    bytes: int
    received: int
    total: int
    reason: str | None
    detail: str | None
    version: str | None
    offers: int
    offer_ms: int | None
    cancel_ms: int | None
    updated_ms: int | None

    @property
    def terminal(self) -> bool:
        return self.state in ot.TERMINAL

    def display(self) -> str:
        """``downloading 45%``, ``refused: bad_signature``, ``rolled back: health gate``."""
        s = self.state.replace("_", " ")
        if self.state == "downloading" and self.total:
            return f"downloading {100 * self.received // self.total}%"
        if self.state == "waiting_window":
            return "waiting for window"
        if self.state in ot.FAILURES:
            why = self.reason or "no reason given"
            return f"{s}: {why}" + (f" ({self.detail})" if self.detail else "")
        if self.state == "committed" and self.version:
            return f"committed ({self.version})"
        return s


def _rollout(r: sqlite3.Row) -> Rollout:
    return Rollout(r["id"], r["release_id"], r["serial"], r["selector"], json.loads(r["waves"]),
                   r["max_failures"], r["win"], r["wave_timeout_s"], r["state"], r["reason"],
                   r["wave"], r["wave_started_ms"], r["acked_failures"], r["created_ms"],
                   r["updated_ms"])


def _target(r: sqlite3.Row) -> Target:
    return Target(r["rollout"], r["gateway"], r["position"], r["wave"], r["state"], r["bytes"],
                  r["received"], r["total"], r["reason"], r["detail"], r["version"], r["offers"],
                  r["offer_ms"], r["cancel_ms"], r["updated_ms"])


def _ms() -> int:
    return time.time_ns() // 1_000_000


class RolloutStore:
    """The rollout tables of one data dir. Thread-safe (one connection under a lock); several
    processes (``serve`` + CLI) share the file (WAL, ``BEGIN IMMEDIATE`` for every change)."""

    def __init__(self, data_dir: Path) -> None:
        root = Path(data_dir) / "ota"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "ota.db"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RolloutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ create / operator
    def create(self, release_id: str, serial: int, gateways: Sequence[str], *,
               selector: str, waves: str = DEFAULT_WAVES,
               max_failures: str = DEFAULT_MAX_FAILURES, window: str | None = None,
               wave_timeout_s: float | None = None, now_ms: int | None = None) -> Rollout:
        """A new rollout over ``gateways`` (sorted here), every target ``pending``."""
        targets = sorted(set(gateways))
        sizes = parse_waves(waves, len(targets))
        maxf = parse_max_failures(max_failures)
        win = check_window(window)
        if wave_timeout_s is not None and wave_timeout_s <= 0:
            raise RolloutError("--wave-timeout must be a positive number of seconds")
        now = now_ms if now_ms is not None else _ms()
        with self.txn() as db:
            cur = db.execute(
                "INSERT INTO rollouts(release_id, serial, selector, waves, max_failures, win, "
                "wave_timeout_s, state, created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (release_id, serial, selector, json.dumps(sizes), maxf, win, wave_timeout_s,
                 RUNNING, now, now))
            rid = int(cur.lastrowid or 0)
            for pos, gw in enumerate(targets):
                wave = next(i for i, size in enumerate(sizes) if pos < size)
                db.execute("INSERT INTO targets(rollout, gateway, position, wave, updated_ms) "
                           "VALUES (?,?,?,?,?)", (rid, gw, pos, wave, now))
        return self.get(rid)

    def halt(self, rid: int, reason: str = "by operator", now_ms: int | None = None) -> Rollout:
        with self.txn() as db:
            r = self._get(db, rid)
            if r.state != RUNNING:
                raise RolloutError(f"rollout {rid} is {r.state}; only a running one can be "
                                   "halted")
            db.execute("UPDATE rollouts SET state=?, reason=?, updated_ms=? WHERE id=?",
                       (HALTED, reason, now_ms or _ms(), rid))
        return self.get(rid)

    def resume(self, rid: int, now_ms: int | None = None) -> Rollout:
        """Run a halted rollout again; the failures seen so far are accepted (the threshold
        counts new ones) and the wave timeout starts again."""
        now = now_ms or _ms()
        with self.txn() as db:
            r = self._get(db, rid)
            if r.state != HALTED:
                raise RolloutError(f"rollout {rid} is {r.state}; only a halted one can be "
                                   "resumed")
            failures = self._failures(db, r)
            db.execute("UPDATE rollouts SET state=?, reason=NULL, acked_failures=?, "
                       "wave_started_ms=CASE WHEN wave >= 0 THEN ? END, updated_ms=? "
                       "WHERE id=?", (RUNNING, failures, now, now, rid))
        return self.get(rid)

    def cancel(self, rid: int, now_ms: int | None = None) -> Rollout:
        """Cancel: targets never offered become ``cancelled`` now; the engine sends ``cancel``
        to those still downloading or waiting."""
        now = now_ms or _ms()
        with self.txn() as db:
            r = self._get(db, rid)
            if r.state not in (RUNNING, HALTED):
                raise RolloutError(f"rollout {rid} is already {r.state}")
            db.execute("UPDATE rollouts SET state=?, reason='by operator', updated_ms=? "
                       "WHERE id=?", (CANCELLED, now, rid))
            db.execute("UPDATE targets SET state='cancelled', reason='rollout cancelled', "
                       "updated_ms=? WHERE rollout=? AND state='pending'", (now, rid))
        return self.get(rid)

    # ------------------------------------------------------------------ queries
    def _get(self, db: sqlite3.Connection, rid: int) -> Rollout:
        row = db.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
        if row is None:
            raise RolloutError(f"no rollout {rid}; list them with `edgegw-cloud ota status`")
        return _rollout(row)

    def get(self, rid: int) -> Rollout:
        with self._lock:
            return self._get(self._db, rid)

    def rollouts(self, states: Sequence[str] = ROLLOUT_STATES) -> list[Rollout]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM rollouts WHERE state IN ({marks}) "
                                    "ORDER BY id", tuple(states)).fetchall()
        return [_rollout(r) for r in rows]

    def working(self) -> list[Rollout]:
        """Rollouts the engine has work for: running ones, and cancelled ones with targets
        still to be told (offered, downloading, verifying, waiting for their window)."""
        marks = ",".join("?" * len(CANCELLABLE))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM rollouts r WHERE r.state=? OR (r.state=? AND EXISTS ("
                f"SELECT 1 FROM targets t WHERE t.rollout=r.id AND t.state IN ({marks}))) "
                "ORDER BY r.id", (RUNNING, CANCELLED, *sorted(CANCELLABLE))).fetchall()
        return [_rollout(r) for r in rows]

    def targets(self, rid: int) -> list[Target]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM targets WHERE rollout=? ORDER BY position",
                                    (rid,)).fetchall()
        return [_target(r) for r in rows]

    def target(self, rid: int, gw: str) -> Target | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM targets WHERE rollout=? AND gateway=?",
                                   (rid, gw)).fetchone()
        return _target(row) if row else None

    def targets_of(self, gw: str, states: Sequence[str] = ROLLOUT_STATES
                   ) -> list[tuple[Rollout, Target]]:
        """Every (rollout, target row) of ``gw`` in rollouts in ``states``, oldest first."""
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT t.* FROM targets t JOIN rollouts r ON r.id = t.rollout "
                f"WHERE t.gateway=? AND r.state IN ({marks}) ORDER BY t.rollout",
                (gw, *states)).fetchall()
            return [(self._get(self._db, r["rollout"]), _target(r)) for r in rows]

    def may_download(self, gw: str, release_id: str) -> bool:
        """Is ``gw`` an offered, unfinished target of a running/halted rollout of the release?

        A ``pending`` target of a started wave counts as offered: the offer is recorded once
        the broker took it, and a fast gateway's first request can arrive before that."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM targets t JOIN rollouts r ON r.id = t.rollout "
                "WHERE t.gateway=? AND r.release_id=? AND r.state IN (?, ?) "
                "AND t.state NOT IN ('committed', 'rolled_back', 'failed', 'refused', "
                "'cancelled') AND (t.state != 'pending' OR t.wave <= r.wave) LIMIT 1",
                (gw, release_id, RUNNING, HALTED)).fetchone()
        return row is not None

    def _failures(self, db: sqlite3.Connection, r: Rollout) -> int:
        if r.wave < 0:
            return 0
        marks = ",".join("?" * len(ot.FAILURES))
        row = db.execute(f"SELECT COUNT(*) FROM targets WHERE rollout=? AND wave<=? "
                         f"AND state IN ({marks})", (r.id, r.wave, *sorted(ot.FAILURES)))
        return int(row.fetchone()[0])

    def failures(self, r: Rollout) -> int:
        with self._lock:
            return self._failures(self._db, r)

    # ------------------------------------------------------------------ engine writes
    def record_state(self, rid: int, gw: str, st: ot.State, now_ms: int) -> str:
        """Apply one state report; returns ``changed``, ``same``, ``terminal`` or ``unknown``."""
        with self.txn() as db:
            row = db.execute("SELECT * FROM targets WHERE rollout=? AND gateway=?",
                             (rid, gw)).fetchone()
            if row is None:
                return "unknown"
            t = _target(row)
            if t.terminal:
                return "same" if st.state == t.state else "terminal"
            new = (st.state, st.bytes, st.received, st.total, st.reason, st.detail,
                   st.version or t.version)
            if new == (t.state, t.bytes, t.received, t.total, t.reason, t.detail, t.version):
                return "same"
            db.execute("UPDATE targets SET state=?, bytes=?, received=?, total=?, reason=?, "
                       "detail=?, version=?, updated_ms=? WHERE rollout=? AND gateway=?",
                       (*new, now_ms, rid, gw))
            return "changed"

    def mark_offer(self, rid: int, gw: str, now_ms: int, sent: bool) -> None:
        with self.txn() as db:
            db.execute("UPDATE targets SET offer_ms=?, offers=offers+?, "
                       "state=CASE WHEN ? AND state='pending' THEN 'offered' ELSE state END, "
                       "updated_ms=CASE WHEN ? AND state='pending' THEN ? ELSE updated_ms END "
                       "WHERE rollout=? AND gateway=?",
                       (now_ms, int(sent), int(sent), int(sent), now_ms, rid, gw))

    def mark_cancel(self, rid: int, gw: str, now_ms: int) -> None:
        with self.txn() as db:
            db.execute("UPDATE targets SET cancel_ms=? WHERE rollout=? AND gateway=?",
                       (now_ms, rid, gw))

    def start_wave(self, rid: int, wave: int, now_ms: int) -> bool:
        """Move a running rollout from wave ``wave - 1`` to ``wave`` (False if it changed)."""
        with self.txn() as db:
            cur = db.execute("UPDATE rollouts SET wave=?, wave_started_ms=?, updated_ms=? "
                             "WHERE id=? AND state=? AND wave=?",
                             (wave, now_ms, now_ms, rid, RUNNING, wave - 1))
            return cur.rowcount == 1

    def auto_halt(self, rid: int, reason: str, now_ms: int) -> bool:
        with self.txn() as db:
            cur = db.execute("UPDATE rollouts SET state=?, reason=?, updated_ms=? "
                             "WHERE id=? AND state=?", (HALTED, reason, now_ms, rid, RUNNING))
            return cur.rowcount == 1

    def complete(self, rid: int, now_ms: int) -> bool:
        with self.txn() as db:
            cur = db.execute("UPDATE rollouts SET state=?, updated_ms=? WHERE id=? AND state=?",
                             (COMPLETED, now_ms, rid, RUNNING))
            return cur.rowcount == 1


# --------------------------------------------------------------------------- status
def summary(r: Rollout, targets: Sequence[Target]) -> dict[str, Any]:
    """The ``ota status --json`` document of one rollout."""
    counts: dict[str, int] = {}
    for t in targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    doc = asdict(r)
    doc.update(
        waves_total=len(r.waves),
        wave_number=r.wave + 1,
        gateways=len(targets),
        counts=counts,
        targets=[{**asdict(t), "display": t.display()} for t in targets],
    )
    return doc


def status_text(r: Rollout, targets: Sequence[Target]) -> str:
    """Human status of one rollout: a header and one line per gateway."""
    head = f"rollout {r.id}  {r.release_id}  {r.state}"
    if r.reason and r.state != COMPLETED:
        head += f": {r.reason}"
    wave = f"wave {r.wave + 1}/{len(r.waves)}" if r.wave >= 0 else "not started"
    head += (f"\n  {wave} (sizes {','.join(map(str, r.waves))})  max-failures {r.max_failures}"
             f"  window {r.window or '-'}  targets {r.selector}")
    counts: dict[str, int] = {}
    for t in targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    head += "\n  " + "  ".join(f"{s.replace('_', ' ')} {counts[s]}"
                               for s in ot.STATES if s in counts)
    width = max([len(t.gateway) for t in targets] + [7])
    lines = [head, f"  {'GATEWAY':{width}}  WAVE  STATE"]
    for t in targets:
        lines.append(f"  {t.gateway:{width}}  {t.wave + 1:>4}  {t.display()}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- engine
Sender = Callable[[str, dict[str, Any]], bool]


class RolloutEngine:
    """Runs the rollouts of a ``RolloutStore``: waves, threshold, offers, cancels.

    ``send(gateway, body)`` publishes one ``ota`` message and returns whether the broker took
    it; ``online(gateway)`` is True/False/None (unknown: try); ``offer_of(release_id)`` returns
    the release's ``(manifest bytes, signature)``; ``clock()`` is epoch seconds. Not
    thread-safe: call it from one thread (the device manager's housekeeping thread)."""

    def __init__(self, store: RolloutStore, send: Sender,
                 offer_of: Callable[[str], tuple[bytes, bytes]], *,
                 online: Callable[[str], bool | None] = lambda gw: None,
                 labels_of: Callable[[str], dict[str, str]] = lambda gw: {},
                 clock: Callable[[], float] = time.time, reoffer_s: float = 30.0) -> None:
        self.store = store
        self.labels_of = labels_of
        self.send = send
        self.offer_of = offer_of
        self.online = online
        self.clock = clock
        self.reoffer_s = reoffer_s
        self.counts: dict[str, int] = {}

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _now(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------ events
    def tick(self) -> None:
        """Advance every active rollout; (re)send what is due."""
        self._count("ticks")
        for r in self.store.working():
            if r.state == RUNNING:
                self._advance(r)
            else:
                self._send_cancels(r)

    def on_state(self, gw: str, st: ot.State) -> None:
        """A gateway's ``state`` report (idempotent; stale or unknown ones are counted).

        It goes to the target its rollout id names; when that one is finished (or the report
        names none: a gateway re-reporting after a restart), to the gateway's open target of
        the same release in another active rollout (a gateway answers an offer of a release
        it already installed with that release's outcome, under the rollout that installed
        it), else to its newest target of that release."""
        row = self.store.target(st.rollout, gw) if st.rollout is not None else None
        if row is not None and self.store.get(row.rollout).release_id != st.release:
            self._count("state_wrong_release")
            log.warning("state from %s names release %s, rollout %d is another release; "
                        "ignored", gw, st.release, row.rollout)
            return
        if row is None or row.terminal:
            mine = [(r, t) for r, t in self.store.targets_of(gw) if r.release_id == st.release]
            open_ = [t for r, t in mine
                     if r.active and not t.terminal and t.state != "pending"]
            if open_:
                row = open_[-1]
            elif row is None and mine and st.rollout is None:
                row = mine[-1][1]
        if row is None:
            self._count("state_unknown_rollout")
            log.info("state %s from %s for rollout %s / %s: not a target; ignored", st.state,
                     gw, st.rollout, st.release)
            return
        r = self.store.get(row.rollout)
        outcome = self.store.record_state(r.id, gw, st, self._now())
        self._count(f"state_{outcome}")
        if outcome == "terminal":
            log.info("rollout %d: %s is already %s; %s ignored", r.id, gw, row.state, st.state)
        if outcome != "changed":
            return
        if st.state in ot.FAILURES:
            log.warning("rollout %d: %s %s: %s %s", r.id, gw, st.state, st.reason or "",
                        st.detail or "")
        else:
            log.info("rollout %d: %s %s", r.id, gw, st.state)
        if r.state == RUNNING:
            self._advance(self.store.get(r.id))

    def on_connect(self, gw: str, since_ms: int | None = None) -> None:
        """The gateway (re)connected at ``since_ms``: what it may have missed is sent again now
        (an offer already sent since that connection is not repeated)."""
        for r, t in self.store.targets_of(gw, (RUNNING, CANCELLED)):
            fresh = (since_ms is not None and t.offer_ms is not None and t.offer_ms >= since_ms)
            if r.state == RUNNING and t.wave <= r.wave and (
                t.state == "pending" or (t.state == "offered" and not fresh)
            ):
                self._offer(r, t, online=True)
            elif r.state == CANCELLED and t.state in CANCELLABLE:
                self._cancel(r, t)

    # ------------------------------------------------------------------ the state machine
    def _advance(self, r: Rollout) -> None:
        now = self._now()
        if r.wave < 0:
            if self.store.start_wave(r.id, 0, now):
                log.info("rollout %d: wave 1 of %d starts (%d gateways)", r.id, len(r.waves),
                         r.waves[0])
            r = self.store.get(r.id)
        while r.state == RUNNING:
            targets = self.store.targets(r.id)
            wave_set = [t for t in targets if t.wave <= r.wave]
            failures = sum(t.state in ot.FAILURES for t in wave_set) - r.acked_failures
            if threshold_exceeded(r.max_failures, failures, len(wave_set)):
                why = (f"failure threshold ({failures} of {len(wave_set)} failed in wave "
                       f"{r.wave + 1}, max {r.max_failures})")
                if self.store.auto_halt(r.id, why, now):
                    self._count("auto_halts")
                    log.warning("rollout %d halted: %s", r.id, why)
                return
            if all(t.terminal for t in wave_set):
                if r.wave + 1 >= len(r.waves):
                    if self.store.complete(r.id, now):
                        log.info("rollout %d completed", r.id)
                    return
                if not self.store.start_wave(r.id, r.wave + 1, now):
                    return
                log.info("rollout %d: wave %d of %d starts (%d gateways)", r.id, r.wave + 2,
                         len(r.waves), r.waves[r.wave + 1])
                r = self.store.get(r.id)
                continue
            if (r.wave_timeout_s and r.wave_started_ms is not None
                    and now - r.wave_started_ms > r.wave_timeout_s * 1000):
                open_ = sum(not t.terminal for t in wave_set)
                why = f"wave timeout ({open_} gateways of wave {r.wave + 1} not finished)"
                if self.store.auto_halt(r.id, why, now):
                    self._count("auto_halts")
                    log.warning("rollout %d halted: %s", r.id, why)
                return
            for t in wave_set:
                # pending: never offered (or the send failed); offered: no answer yet
                due = t.offer_ms is None or now - t.offer_ms >= self.reoffer_s * 1000
                if t.state in ("pending", "offered") and due:
                    if self.store.get(r.id).state != RUNNING:
                        return  # halted or cancelled meanwhile (`ota halt` / a bad release)
                    self._offer(r, t, online=self.online(t.gateway))
            return

    def _offer(self, r: Rollout, t: Target, *, online: bool | None) -> None:
        if online is False:
            return  # it gets the offer when it connects (on_connect)
        try:
            manifest, sig = self.offer_of(r.release_id)
        except (OSError, LookupError, ValueError) as exc:
            self._count("offer_release_missing")
            reason = f"release {r.release_id} unreadable: {exc}"
            if self.store.auto_halt(r.id, reason, self._now()):
                log.error("rollout %d halted: %s", r.id, reason)
            return
        body = ot.Offer(r.id, r.release_id, manifest, sig, r.window,
                        self.labels_of(t.gateway)).body()
        sent = self.send(t.gateway, body)
        self.store.mark_offer(r.id, t.gateway, self._now(), sent)
        self._count("offers_sent" if sent else "offers_unsent")
        if sent and self.store.get(r.id).state == CANCELLED:
            self._cancel(r, t)  # `ota cancel` ran while the offer was on its way

    def _cancel(self, r: Rollout, t: Target) -> None:
        if self.send(t.gateway, ot.Cancel(r.id, r.release_id).body()):
            self.store.mark_cancel(r.id, t.gateway, self._now())
            self._count("cancels_sent")
        else:
            self._count("cancels_unsent")

    def _send_cancels(self, r: Rollout) -> None:
        now = self._now()
        for t in self.store.targets(r.id):
            if t.state not in CANCELLABLE:
                continue
            due = t.cancel_ms is None or now - t.cancel_ms >= self.reoffer_s * 1000
            if due and self.online(t.gateway) is not False:
                self._cancel(r, t)
