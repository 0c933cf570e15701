"""Read queries shared by every cloud store backend (SQLite ``CloudStore``, PostgreSQL
``PgStore``): what the HTTP API, the dashboard and the exports ask of the store.

The SQL is written once in the subset both engines accept; a backend supplies ``_rows`` (run a
query with ``?`` placeholders, return tuples) and ``_dict_rows``. Nothing here writes.
Invariants: every query is bounded (a ``limit``, or a time window the caller passes), and
filters use the indexes the schemas have: ``batches (gateway, seq)``, ``points (ts_ms, series)``,
``alerts (gateway, device, ts_ms)``.
"""

from __future__ import annotations

import json
from typing import Any

from edgegw.protocol.model import Value

VT_NULL, VT_INT, VT_FLOAT, VT_BOOL, VT_STR, VT_BLOB = range(6)
VTYPE_NAMES = ("null", "int", "float", "bool", "str", "blob")


def decode_value(stored: Any, vtype: int) -> Value:
    """The reading's value as the gateway produced it (blobs as their hex digest)."""
    if vtype == VT_BOOL:
        return bool(stored)
    if vtype == VT_INT and isinstance(stored, str):
        return int(stored)
    if vtype == VT_FLOAT and stored is not None:
        return float(stored)
    return stored


def readings_query(columns: str, *, gateway: str | None, device: str | None,
                   metric: str | None, since_ms: int | None, until_ms: int | None,
                   limit: int | None) -> tuple[str, list[Any]]:
    """(SQL with ``?`` placeholders, params): ``columns`` of the ``readings`` view matching
    every given filter, by (gateway, device, metric, ts)."""
    where: list[str] = []
    params: list[Any] = []
    for col, val in (("gateway", gateway), ("device", device), ("metric", metric)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    if since_ms is not None:
        where.append("ts_ms >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("ts_ms < ?")
        params.append(until_ms)
    sql = f"SELECT {columns} FROM readings"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY gateway, device, metric, ts_ms"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


class StoreQueries:
    """Mixin: read queries over the common schema (batches, series, points/readings, alerts,
    gaps). Subclasses implement ``_rows``."""

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _dict_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def alerts(self, gateway: str) -> list[dict[str, Any]]:
        return self._dict_rows(
            "SELECT seq, rule, device, ts_ms, active, severity, message, metric, value, labels"
            " FROM alerts WHERE gateway = ? ORDER BY seq, ts_ms", (gateway,))

    def gaps(self, gateway: str) -> list[dict[str, Any]]:
        return self._dict_rows(
            "SELECT seq, lane, seqs, from_ts_ms, to_ts_ms, batches, readings, reason"
            " FROM gaps WHERE gateway = ? ORDER BY seq", (gateway,))

    #: the points columns holding a value, and how they decode (PostgreSQL splits it in two)
    _VALUE_COLS = "p.value"

    def _decode_stored(self, stored: tuple[Any, ...], vtype: int) -> Any:
        return decode_value(stored[0], vtype)

    def distinct_readings(self, gateway: str) -> int:
        """Distinct (device, metric, ts) of a gateway: == count_readings unless duplicated."""
        return int(self._rows(
            "SELECT count(*) FROM (SELECT DISTINCT device, metric, ts_ms FROM readings"
            " WHERE gateway = ?) AS d", (gateway,))[0][0])

    # ------------------------------------------------------------------ fleet
    def fleet_summary(self) -> dict[str, dict[str, Any]]:
        """Per gateway: batches, readings, last stored time, gaps and what they dropped."""
        out: dict[str, dict[str, Any]] = {}
        for gw, batches, readings, last_ms, last_seq in self._rows(
            "SELECT gateway, count(*), coalesce(sum(readings), 0), max(stored_ms), max(seq)"
            " FROM batches GROUP BY gateway"
        ):
            out[gw] = {
                "batches": int(batches),
                "readings": int(readings),
                "last_stored_ms": int(last_ms) if last_ms is not None else None,
                "last_seq": int(last_seq),
                "gaps": 0,
                "dropped_batches": 0,
                "dropped_readings": 0,
            }
        for gw, n, b, r in self._rows(
            "SELECT gateway, count(*), coalesce(sum(batches), 0), coalesce(sum(readings), 0)"
            " FROM gaps GROUP BY gateway"
        ):
            d = out.setdefault(gw, {"batches": 0, "readings": 0, "last_stored_ms": None,
                                    "last_seq": 0})
            d.update(gaps=int(n), dropped_batches=int(b), dropped_readings=int(r))
        for gw, n, devices in self._rows(
            "SELECT gateway, count(*), count(DISTINCT device) FROM series GROUP BY gateway"
        ):
            out.setdefault(gw, {}).update(series=int(n), devices=int(devices))
        for gw, active in self._active_alert_counts().items():
            out.setdefault(gw, {})["active_alerts"] = active
        return out

    def series_of(self, gateway: str) -> list[dict[str, str]]:
        return [
            {"device": d, "metric": m}
            for d, m in self._rows(
                "SELECT device, metric FROM series WHERE gateway = ? ORDER BY device, metric",
                (gateway,),
            )
        ]

    def last_seq(self, gateway: str) -> int:
        row = self._rows("SELECT max(seq) FROM batches WHERE gateway = ?", (gateway,))
        return int(row[0][0]) if row and row[0][0] is not None else 0

    def recent_readings(
        self,
        gateway: str,
        *,
        since_ms: int,
        after_seq: int = 0,
        device: str | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Readings of ``gateway`` with ts >= ``since_ms`` from batches after ``after_seq``
        (the live view: the time index bounds the scan)."""
        sql = (
            f"SELECT s.device, s.metric, p.ts_ms, p.vtype, p.quality, p.seq, {self._VALUE_COLS}"
            " FROM points p JOIN series s ON s.id = p.series"
            " WHERE p.ts_ms >= ? AND s.gateway = ? AND p.seq > ?"
        )
        params: list[Any] = [since_ms, gateway, after_seq]
        if device is not None:
            sql += " AND s.device = ?"
            params.append(device)
        sql += " ORDER BY p.seq, p.ts_ms LIMIT ?"
        params.append(limit)
        out = []
        for d, m, ts, vt, q, seq, *stored in self._rows(sql, tuple(params)):
            value = self._decode_stored(tuple(stored), vt)
            out.append({
                "device": d,
                "metric": m,
                "ts_ms": int(ts),
                "value": {"blob_sha256": value} if vt == VT_BLOB else value,
                "quality": int(q),
                "seq": int(seq),
            })
        return out

    # ------------------------------------------------------------------ alerts and gaps
    def alert_events(
        self,
        *,
        gateway: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Alert raise/clear events, oldest first."""
        where, params = _filters(gateway, since_ms, until_ms)
        rows = self._dict_rows(
            "SELECT gateway, seq, rule, device, ts_ms, active, severity, message, metric, value,"
            f" labels FROM alerts{where} ORDER BY ts_ms, gateway, seq LIMIT ?",
            (*params, limit),
        )
        for r in rows:
            r["active"] = bool(r["active"])
            r["labels"] = json.loads(r["labels"]) if r["labels"] else {}
        return rows

    def alert_states(self, gateway: str | None = None) -> list[dict[str, Any]]:
        """The latest event per (gateway, rule, device): active or cleared, since when."""
        where, params = _filters(gateway, None, None)
        rows = self._dict_rows(
            "SELECT a.gateway, a.rule, a.device, a.ts_ms, a.active, a.severity, a.message,"
            " a.metric, a.value, a.labels, n.events FROM alerts a JOIN ("
            "  SELECT gateway, rule, device, max(ts_ms) AS last_ts, count(*) AS events"
            f"  FROM alerts{where} GROUP BY gateway, rule, device"
            ") n ON n.gateway = a.gateway AND n.rule = a.rule AND n.device = a.device"
            " AND n.last_ts = a.ts_ms ORDER BY a.active DESC, a.ts_ms DESC",
            params,
        )
        seen: set[tuple[str, str, str]] = set()
        out = []
        for r in rows:  # two events with the same last ts: keep one (active first)
            key = (r["gateway"], r["rule"], r["device"])
            if key in seen:
                continue
            seen.add(key)
            r["active"] = bool(r["active"])
            r["labels"] = json.loads(r["labels"]) if r["labels"] else {}
            out.append(r)
        return out

    def _active_alert_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.alert_states():
            if r["active"]:
                counts[r["gateway"]] = counts.get(r["gateway"], 0) + 1
        return counts

    def gap_records(
        self,
        *,
        gateway: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Gap records (what a gateway dropped, which interval, why), oldest first."""
        where, params = _filters(gateway, since_ms, until_ms, ts="from_ts_ms")
        rows = self._dict_rows(
            "SELECT gateway, seq, lane, seqs, from_ts_ms, to_ts_ms, batches, readings, reason"
            f" FROM gaps{where} ORDER BY from_ts_ms, gateway, seq LIMIT ?",
            (*params, limit),
        )
        for r in rows:
            r["seqs"] = json.loads(r["seqs"]) if isinstance(r["seqs"], str) else r["seqs"]
        return rows


def _filters(
    gateway: str | None, since_ms: int | None, until_ms: int | None, ts: str = "ts_ms"
) -> tuple[str, tuple[Any, ...]]:
    where: list[str] = []
    params: list[Any] = []
    if gateway is not None:
        where.append("gateway = ?")
        params.append(gateway)
    if since_ms is not None:
        where.append(f"{ts} >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append(f"{ts} < ?")
        params.append(until_ms)
    return (" WHERE " + " AND ".join(where) if where else ""), tuple(params)
