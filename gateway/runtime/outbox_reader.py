"""Read a gateway's own outbox back into samples (tests, `edgegw status`, model fitting).

Opens the database read-only, so it is safe next to a running daemon.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from edgegw.model import Alert, Sample
from edgegw.protocol.codec_v2 import decode_any
from edgegw.protocol.envelope import open_sealed, parse_header
from edgegw.runtime.sealing import key_lookup
from edgegw.store.series_dict import FILE_NAME, file_resolver


def _rows(db: Path) -> list[tuple[int, bytes]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (int(r[0]), bytes(r[1]))
            for r in con.execute("SELECT seq, envelope FROM batches ORDER BY seq")
        ]
    finally:
        con.close()


def read_outbox(
    state_dir: Path | str, *, gateway_id: str | None = None, db: Path | None = None
) -> tuple[list[Sample], list[Alert], list[int]]:
    """(samples, alerts, seqs) of every batch still stored in the outbox."""
    state = Path(state_dir)
    path = db or state / "outbox.db"
    lookup = key_lookup(state)
    samples: list[Sample] = []
    alerts: list[Alert] = []
    seqs: list[int] = []
    gw = gateway_id or _gateway_id(state)
    resolve: Any = file_resolver(state / FILE_NAME)
    for seq, env in _rows(path):
        header = parse_header(env)
        key = lookup(header.key_id)
        if key is None:
            raise KeyError(f"no key with id {header.key_id} for outbox batch {seq}")
        _, plaintext = open_sealed(key, gw, env)
        batch = decode_any(plaintext, resolve)
        samples.extend(batch.samples)
        alerts.extend(batch.alerts)
        seqs.append(seq)
    return samples, alerts, seqs


def read_outbox_samples(state_dir: Path | str, gateway_id: str | None = None) -> list[Sample]:
    return read_outbox(state_dir, gateway_id=gateway_id)[0]


def _gateway_id(state_dir: Path) -> str:
    marker = state_dir / "gateway-id"
    if marker.exists():
        return marker.read_text().strip()
    raise FileNotFoundError(f"{marker} is missing; pass gateway_id explicitly")
