"""The gateway's per-batch seal path at W2's shape, in process: encode -> append -> settle.

Issue 13, goal 1: at W2 (10 devices x 100 holding registers at 100 ms) a round seal makes a
batch of one poll round, i.e. hundreds of series with ONE reading each, ~17-20 batches/s.
This bench runs exactly that work without the network, the plant or the event loop, so its
cost can be measured by CPU time (``time.process_time``: user + system, the fsyncs' kernel
time included) and by instruction counts (callgrind, user space only, deterministic):

1. ``encode``: ``SeriesDictionary.encode`` (codec v2, steady state: every id confirmed by an
   earlier "ack"), as the batcher calls it in the outbox thread;
2. ``append``: ``Batcher._encode_append`` minus the encode, i.e. ``Outbox.append`` (AES-GCM +
   the FULL-sync transaction) plus the batcher's bookkeeping;
3. ``settle``: ``Outbox.settle_many([(seq, DELIVERED)])`` after the cloud's ack.

Data: synthetic (labelled so): ``--series`` uint16 registers doing a random walk (W2's plant
changes every register every 100 ms), one reading per series per batch unless
``--per-series``. The outbox lives in a temp dir on the same disk as the daemon's would.

    python bench/bench_seal_path.py [--batches 300] [--series 500] [--instructions 100]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import callgrind_total  # noqa: E402

from edgegw.model import Lane, Quality, Sample  # noqa: E402
from edgegw.protocol.ack import AckStatus  # noqa: E402
from edgegw.protocol.keys import Sealer  # noqa: E402
from edgegw.runtime.pipeline import Batcher, OutboxThread  # noqa: E402
from edgegw.store.outbox import Outbox  # noqa: E402
from edgegw.store.series_dict import SeriesDictionary  # noqa: E402

STAGES = ("encode", "append", "settle")


def batches(n: int, series: int, per_series: int, seed: int = 5) -> list[list[Sample]]:
    """``n`` batches of ``series`` uint16 random walks x ``per_series`` readings (100 ms apart)."""
    rnd = random.Random(seed)
    values = [rnd.randrange(65536) for _ in range(series)]
    names = [(f"e0-u{1 + i // 100}", f"r{i % 100}") for i in range(series)]
    ts = 1_790_000_000_000
    out = []
    for _ in range(n):
        b = []
        for _k in range(per_series):
            for i, (dev, met) in enumerate(names):
                values[i] = (values[i] + rnd.randint(-30, 30)) % 65536
                b.append(Sample(dev, met, ts, values[i], Quality.GOOD))
            ts += 100
        out.append(b)
    return out


def run(tmp: Path, n: int, series: int, per_series: int, stages: tuple[str, ...]
        ) -> dict[str, float]:
    """CPU seconds per stage over ``n`` batches (after one warm-up batch that defines the ids)."""
    sd = SeriesDictionary(tmp / "series-dict.db")
    outbox = Outbox(tmp / "outbox.db", max_bytes=64 << 20, sealer=Sealer(b"k" * 32, 1, "gw"))
    batcher = Batcher(outbox, OutboxThread(), encode=sd.encode)
    batcher.on_appended = sd.sealed
    data = batches(n + 1, series, per_series)
    gc.freeze()  # the daemon holds one batch, not n: keep the garbage collector off the rest
    # warm-up: define every id, then confirm them as the cloud's ack would
    seq, _, _ = batcher._encode_append(Lane.TELEMETRY, data[0], [])
    outbox.settle_many([(seq, AckStatus.DELIVERED)])
    sd.delivered([seq])
    cpu = dict.fromkeys(STAGES, 0.0)
    clock = time.process_time
    for b in data[1:]:
        t0 = clock()
        plaintext = sd.encode(samples=b) if "encode" in stages else (b"", [])
        t1 = clock()
        if "append" in stages:
            batcher._encode = lambda samples, alerts, p=plaintext: p  # type: ignore[misc]
            seq, _, _ = batcher._encode_append(Lane.TELEMETRY, b, [])
        t2 = clock()
        if "settle" in stages:
            outbox.settle_many([(seq, AckStatus.DELIVERED)])
            sd.delivered([seq])
        t3 = clock()
        cpu["encode"] += t1 - t0
        cpu["append"] += t2 - t1
        cpu["settle"] += t3 - t2
    outbox.close()
    sd.close()
    return cpu


def _callgrind(n: int, series: int, per_series: int, stages: str) -> int:
    return callgrind_total([__file__, "--child", stages, "--batches", str(n), "--series",
                            str(series), "--per-series", str(per_series)])


def instructions(n: int, series: int, per_series: int) -> dict[str, Any]:
    """Instructions per batch: encode alone, and encode + append + settle; (I(2N) - I(N)) / N
    minus the same for making the synthetic batches alone (no stage)."""
    out: dict[str, Any] = {"batches_n": n}
    per: dict[str, float] = {}
    for label, stages in (("data_only", "none"), ("encode", "encode"),
                          ("encode_append_settle", "encode,append,settle")):
        one = _callgrind(n, series, per_series, stages)
        two = _callgrind(2 * n, series, per_series, stages)
        per[label] = (two - one) / n
    for label in ("encode", "encode_append_settle"):
        out[f"{label}_per_batch"] = round(per[label] - per["data_only"])
        out[f"{label}_per_reading"] = round((per[label] - per["data_only"])
                                            / (series * per_series))
    out["append_settle_per_batch"] = round(per["encode_append_settle"] - per["encode"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--series", type=int, default=500)
    ap.add_argument("--per-series", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="also count instructions under callgrind (N and 2N batches)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        with tempfile.TemporaryDirectory() as d:
            run(Path(d), a.batches, a.series, a.per_series, tuple(a.child.split(",")))
        return
    rounds = []
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory(dir=ROOT) as d:
            rounds.append(run(Path(d), a.batches, a.series, a.per_series, STAGES))
    readings = a.batches * a.series * a.per_series
    report: dict[str, Any] = {
        "data": "synthetic: uint16 random walks, one poll round per batch (W2's shape)",
        "batches": a.batches, "series": a.series, "readings_per_series": a.per_series,
        "rounds": a.rounds,
        "cpu_us_per_batch_median": {
            s: round(sorted(r[s] for r in rounds)[len(rounds) // 2] / a.batches * 1e6)
            for s in STAGES},
        "cpu_us_per_reading_median_all_stages": round(
            sorted(sum(r.values()) for r in rounds)[len(rounds) // 2] / readings * 1e6, 3),
        "note": "CPU time (user + system) on a loaded 2-core machine",
    }
    if a.instructions:
        report["callgrind"] = instructions(a.instructions, a.series, a.per_series)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
