"""The cloud ingest's per-batch path, in process: open -> decode -> store (durable commit).

Issue 13, goal 6 (drain >= 200k readings/s at the cloud's durable commit): when the drain is
busy, the ingest process spends its CPU here. This bench runs exactly that work without the
broker and the MQTT client, so it can be measured by CPU time (``time.process_time``: user +
system, the fsyncs' kernel time included) and by instruction counts (callgrind, user space
only, deterministic):

1. ``open``: ``envelope.open_sealed`` (AES-GCM with the gateway id as associated data) and the
   SHA-256 of the plaintext (the sequence-conflict digest), as ``Ingest._open`` does;
2. ``decode``: ``decode_any`` and the store records (``ingest._records``);
3. ``store``: ``CloudStore.commit_statuses`` of a group of ``--group`` batches (one
   ``synchronous=FULL`` transaction), as the ingest's writer thread commits them.

The garbage collector is set as in an ingest process (``ingest.tune_gc``).

Data: bench_uplink.py's drain backlog (labelled so): 1000 readings per batch = 50 devices x 20
registers, ONE reading per series, two-decimal floats; codec v1 (what bench_uplink seals) or
``--codec v2`` (the daemon's default; ids defined in the first batch only, as in steady state).
The store lives in a temp dir on the same disk as the cloud's would, and grows over the run.

    python bench/bench_ingest_path.py [--batches 300] [--codec v1|v2] [--instructions 100]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_uplink import _samples, encoder  # noqa: E402
from benchlib import callgrind_total  # noqa: E402

from edgegw.protocol import envelope  # noqa: E402
from edgegw.protocol.codec_v2 import DecodedV2, decode_any  # noqa: E402
from edgegw.protocol.keys import Sealer  # noqa: E402
from edgegw_cloud import ingest  # noqa: E402
from edgegw_cloud.store import CloudStore  # noqa: E402

STAGES = ("open", "decode", "store")
GW = "bench-ingest"
KEY = b"k" * 32
TS0 = 1_790_000_000_000


def envelopes(n: int, readings: int, codec: str) -> list[bytes]:
    """``n`` sealed batches of the drain bench's backlog (``bench_uplink.encoder``)."""
    sealer = Sealer(KEY, 1, GW)
    encode = encoder(codec)
    return [sealer.seal(k + 1, encode(_samples(k, readings, TS0 + k * 1000)))
            for k in range(n)]


def run(tmp: Path, n: int, readings: int, group: int, codec: str, stages: tuple[str, ...]
        ) -> dict[str, float]:
    """CPU seconds per stage over ``n`` batches (plus one warm-up batch that is not counted)."""
    blobs = envelopes(n + 1, readings, codec)
    store = CloudStore(tmp / "store.db")
    names: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}

    def resolve(epoch: int, want: Any) -> dict[int, tuple[str, str]]:
        known = names.get((GW, epoch), {})
        return {i: known[i] for i in want if i in known}

    def opened(blob: bytes, seq: int) -> ingest._Opened:
        _, plaintext = envelope.open_sealed(KEY, GW, blob)
        plaintext = bytes(plaintext)
        digest = hashlib.sha256(plaintext).digest()
        decoded = decode_any(plaintext, resolve)
        if isinstance(decoded, DecodedV2) and decoded.definitions:
            names.setdefault((GW, decoded.epoch), {}).update(decoded.definitions)
        return ingest._Opened(None, GW, seq, TS0, decoded, digest=digest)  # type: ignore[arg-type]

    store.commit_statuses(ingest._records(opened(blobs[0], 1)))  # warm-up: definitions
    # the collector as in an ingest process (a tree from before tune_gc: start-up frozen only)
    getattr(ingest, "tune_gc", gc.freeze)()
    cpu = dict.fromkeys(STAGES, 0.0)
    clock = time.process_time
    pending: list[Any] = []
    for k, blob in enumerate(blobs[1:], start=2):
        t0 = clock()
        plaintext = b""
        if "open" in stages:
            _, plaintext = envelope.open_sealed(KEY, GW, blob)
            plaintext = bytes(plaintext)
            digest = hashlib.sha256(plaintext).digest()
        t1 = clock()
        if "decode" in stages:
            decoded = decode_any(plaintext, resolve)
            pending.extend(ingest._records(
                ingest._Opened(None, GW, k, TS0, decoded, digest=digest)))  # type: ignore[arg-type]
        t2 = clock()
        if len(pending) >= group or k == n + 1:
            if "store" in stages:
                store.commit_statuses(pending)
            pending = []  # without the store too: the same live objects for the collector
        t3 = clock()
        cpu["open"] += t1 - t0
        cpu["decode"] += t2 - t1
        cpu["store"] += t3 - t2
    assert "store" not in stages or store.stats()["batches_stored"] == n + 1
    store.close()
    return cpu


def _callgrind(n: int, readings: int, group: int, codec: str, stages: str) -> int:
    return callgrind_total([__file__, "--child", stages, "--batches", str(n), "--readings",
                            str(readings), "--group", str(group), "--codec", codec])


def instructions(n: int, readings: int, group: int, codec: str) -> dict[str, Any]:
    """Instructions per batch for each stage (cumulative runs, differences): (I(2N) - I(N)) / N
    minus the same for making the envelopes alone."""
    per: dict[str, float] = {}
    for label, stages in (("data_only", "none"), ("open", "open"),
                          ("open_decode", "open,decode"), ("all", "open,decode,store")):
        one = _callgrind(n, readings, group, codec, stages)
        two = _callgrind(2 * n, readings, group, codec, stages)
        per[label] = (two - one) / n
    out: dict[str, Any] = {"batches_n": n,
                           "open_per_batch": round(per["open"] - per["data_only"]),
                           "decode_per_batch": round(per["open_decode"] - per["open"]),
                           "store_per_batch": round(per["all"] - per["open_decode"])}
    out["all_per_batch"] = round(per["all"] - per["data_only"])
    out["all_per_reading"] = round(out["all_per_batch"] / readings)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--readings", type=int, default=1000)
    ap.add_argument("--group", type=int, default=32, help="batches per store transaction")
    ap.add_argument("--codec", choices=("v1", "v2"), default="v1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="also count instructions under callgrind (N and 2N batches)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        with tempfile.TemporaryDirectory(dir=ROOT) as d:
            run(Path(d), a.batches, a.readings, a.group, a.codec, tuple(a.child.split(",")))
        return
    rounds = []
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory(dir=ROOT) as d:
            rounds.append(run(Path(d), a.batches, a.readings, a.group, a.codec, STAGES))
    readings = a.batches * a.readings
    med = {s: sorted(r[s] for r in rounds)[len(rounds) // 2] for s in STAGES}
    total = sorted(sum(r.values()) for r in rounds)[len(rounds) // 2]
    report: dict[str, Any] = {
        "data": "bench_uplink's drain backlog: 50 devices x 20 registers, one reading per "
                f"series per batch, two-decimal floats, codec {a.codec}",
        "batches": a.batches, "readings_per_batch": a.readings, "group": a.group,
        "rounds": a.rounds,
        "cpu_us_per_batch_median": {s: round(med[s] / a.batches * 1e6) for s in STAGES},
        "cpu_readings_per_s_all_stages": round(readings / total),
        "note": "CPU time (user + system) on a loaded 2-core machine; one thread does all "
                "three stages here (the ingest overlaps open+decode with the store's commit)",
    }
    if a.instructions:
        report["callgrind"] = instructions(a.instructions, a.readings, a.group, a.codec)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
