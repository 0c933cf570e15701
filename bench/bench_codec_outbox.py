"""Benchmark: batch codec compression and speed, outbox append rate, and raw ceilings.

Prints one JSON document. Nothing here is asserted: budgets are judged by a human (or CI
trend) against the raw ceilings measured in the same run on the same machine.

Data set ("realistic sensor data"): 200 slowly drifting registers (10 devices x 20 registers,
read in one request per device, so a device's registers share a timestamp), polled once a
second for 60 s = 12,000 readings. Register kinds: 25% FLOAT32 pairs decoded to Python floats,
25% int16 scaled by 0.1 (unrounded: 21.400000000000002 and friends), 25% raw int16 registers,
15% two-decimal readings from a serial sensor, 10% coils (bool); 0.5% failed reads
(value None, quality comm_error). JSON lines: one json.dumps({device, metric, ts, value,
quality}) per reading.

``compression_datasets`` (issue 13: not only the best case): the DEFAULT codec (v2 with the
series dictionary, definitions confirmed by acks after the first batch, as in steady state)
against JSON lines on several realistic data sets, each 200 series polled at its own rate,
batched as the daemon does at defaults (one batch per 100 ms round at W2, per 1 s poll at 1 s):
- ``drifting_registers``: the data set above (70% of readings repeat the previous value);
- ``noisy_analog``: int16 registers with 0.01 scaling around 20.00 +- 0.4 (sensor noise, every
  reading differs); ``noisy_float32``: float32 values with full-mantissa noise;
- ``counters``: uint32 energy/pulse counters increasing by 0..40 per poll;
- ``booleans``: coils and status bits flipping now and then;
- ``w2_registers``: issue 13's W2 registers (bench/register_plant.py), all changing every
  100 ms by a fixed step, polled at 100 ms.
The worst case over the data sets is reported beside the best.

Usage: python bench/bench_codec_outbox.py [--quick]
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import snappy
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgegw.model import Lane, Quality, Sample
from edgegw.protocol import codec
from edgegw.protocol.ack import AckStatus
from edgegw.protocol.codec import decode_batch, encode_batch
from edgegw.protocol.keys import Sealer
from edgegw.store import Outbox
from edgegw.store.series_dict import SeriesDictionary

DEVICES = 10
REGS = 20
POLLS = 60
T0 = 1_764_230_400_000


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def dataset(seed: int = 7, polls: int = POLLS) -> list[Sample]:
    rng = random.Random(seed)
    kinds = (["f32"] * 5 + ["scaled"] * 5 + ["int"] * 5 + ["dec"] * 3 + ["bool"] * 2)
    state: dict[tuple[int, int], float] = {}
    for d in range(DEVICES):
        for r in range(REGS):
            state[(d, r)] = rng.uniform(10, 500)
    out: list[Sample] = []
    for k in range(polls):
        for d in range(DEVICES):
            ts = T0 + k * 1000 + d * 97 + rng.randint(0, 30)  # staggered, jittered
            for r in range(REGS):
                kind = kinds[r]
                if rng.random() < 0.3:  # slowly drifting: most polls see no change
                    state[(d, r)] += rng.gauss(0, 0.5)
                x = state[(d, r)]
                v: Any
                if kind == "f32":
                    v = f32(x)
                elif kind == "scaled":
                    v = int(x * 10) * 0.1
                elif kind == "int":
                    v = int(x)
                elif kind == "dec":
                    v = round(x, 2)
                else:
                    v = int(x) % 7 == 0
                q = Quality.GOOD
                if rng.random() < 0.005:
                    v, q = None, Quality.COMM_ERROR
                out.append(Sample(f"plc-{d:02d}", f"hr_{40001 + r}", ts, v, q))
    return out


def synthetic(kind: str, seed: int = 11, series: int = 200, polls: int = 100,
              period_ms: int = 1000) -> list[Sample]:
    """Readings of ``series`` series, ``polls`` polls each: see the module doc."""
    rng = random.Random(seed)
    out: list[Sample] = []
    state = [rng.uniform(0, 1000) for _ in range(series)]
    for k in range(polls):
        for i in range(series):
            dev, metric = f"plc-{i // 20:02d}", f"hr_{40001 + i % 20}"
            ts = T0 + k * period_ms + (i // 20) * (period_ms // 10)
            v: Any
            if kind == "noisy_analog":
                v = round(20.0 + rng.gauss(0, 0.2), 2)
            elif kind == "noisy_float32":
                v = f32(20.0 + rng.gauss(0, 0.2))
            elif kind == "counters":
                state[i] += rng.randint(0, 40)
                v = int(state[i])
            elif kind == "booleans":
                if rng.random() < 0.05:
                    state[i] = 1000 - state[i]
                v = state[i] > 500
            elif kind == "w2_registers":  # bench/register_plant.py: (u*1000 + r*7 + tick)
                v = ((i // 20 + 1) * 1000 + (i % 20) * 7 + k) & 0xFFFF
            else:
                raise ValueError(kind)
            out.append(Sample(dev, metric, ts, v))
    return out


def bench_datasets(drifting: list[Sample]) -> dict[str, Any]:
    """Default codec (v2 + dictionary, steady state) vs JSON lines per data set."""
    sets = {
        "drifting_registers": (drifting, 1000),
        "noisy_analog": (synthetic("noisy_analog"), 1000),
        "noisy_float32": (synthetic("noisy_float32"), 1000),
        "counters": (synthetic("counters"), 1000),
        "booleans": (synthetic("booleans"), 1000),
        "w2_registers": (synthetic("w2_registers", period_ms=100), 100),
    }
    out: dict[str, Any] = {}
    for name, (samples, period_ms) in sets.items():
        # one batch per round (the round seal at defaults); at 100 ms polling the 50 ms
        # min_interval gives about one batch per round too
        rounds: dict[int, list[Sample]] = {}
        for smp in samples:
            rounds.setdefault((smp.ts_ms - T0) // period_ms, []).append(smp)
        sd = SeriesDictionary(None)
        total = 0
        for seq, batch in enumerate(rounds.values(), 1):
            data, defined = sd.encode(batch)
            sd.sealed(seq, defined)
            sd.delivered([seq])  # acked before the next round (steady state)
            if seq > 1:  # the first batch carries the definitions: count steady state only
                total += len(data) + 44
        steady = [smp for k, b in enumerate(rounds.values()) if k > 0 for smp in b]
        jl = json_lines(steady)
        out[name] = {"readings": len(steady), "json_lines_bytes": len(jl),
                     "sealed_bytes": total,
                     "sealed_bytes_per_reading": round(total / len(steady), 2),
                     "ratio_vs_json_lines": round(len(jl) / total, 2),
                     "json_lines_snappy_ratio": round(len(jl) / len(snappy.compress(jl)), 2)}
    worst = min(out, key=lambda k: out[k]["ratio_vs_json_lines"])
    best = max(out, key=lambda k: out[k]["ratio_vs_json_lines"])
    out["worst_case"] = {"dataset": worst, "ratio": out[worst]["ratio_vs_json_lines"]}
    out["best_case"] = {"dataset": best, "ratio": out[best]["ratio_vs_json_lines"]}
    return out


def json_lines(samples: list[Sample]) -> bytes:
    return "".join(
        json.dumps({"device": s.device, "metric": s.metric, "ts": s.ts_ms, "value": s.value,
                    "quality": s.quality.label}) + "\n"
        for s in samples
    ).encode()


def rate(fn: Callable[[], object], min_time: float) -> tuple[float, int]:
    """Calls per second of fn, repeated for at least min_time seconds."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n / dt, n


def chunks(samples: list[Sample], size: int) -> list[list[Sample]]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def float_modes(samples: list[Sample]) -> dict[str, int]:
    series: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        if isinstance(s.value, float):
            series.setdefault((s.device, s.metric), []).append(s.value)
    names = {codec.F_PLAIN: "plain", codec.F_DECIMAL: "decimal", codec.F_XOR32: "xor32",
             codec.F_XOR64: "xor64", codec.F_SCALED: "scaled"}
    modes: Counter[str] = Counter()
    for vals in series.values():
        out = bytearray()
        codec._write_floats(out, vals)
        modes[names[out[0]]] += 1
    return dict(modes)


def bench_compression(samples: list[Sample]) -> dict[str, Any]:
    jl = json_lines(samples)
    res: dict[str, Any] = {
        "readings": len(samples),
        "json_lines_bytes": len(jl),
        "json_lines_snappy_ratio": round(len(jl) / len(snappy.compress(jl)), 2),
        "float_series_modes": float_modes(samples),
    }
    for label, size in (("one_batch", len(samples)), ("batches_1000", 1000),
                        ("batches_200_one_poll", 200)):
        enc = [encode_batch(c) for c in chunks(samples, size)]
        total = sum(map(len, enc))
        res[f"codec_{label}_bytes"] = total
        res[f"codec_{label}_ratio"] = round(len(jl) / total, 2)
        res[f"codec_{label}_sealed_ratio"] = round(len(jl) / (total + 44 * len(enc)), 2)
    by_kind: dict[str, float] = {}
    for kind in ("f32", "scaled", "int", "dec", "bool"):
        regs = {"f32": range(0, 5), "scaled": range(5, 10), "int": range(10, 15),
                "dec": range(15, 18), "bool": range(18, 20)}[kind]
        names = {f"hr_{40001 + r}" for r in regs}
        sub = [s for s in samples if s.metric in names]
        by_kind[kind] = round(len(json_lines(sub)) / sum(
            len(encode_batch(c)) for c in chunks(sub, 1000 * len(sub) // len(samples))), 2)
    res["codec_batches_1000_ratio_by_register_kind"] = by_kind
    return res


def bench_codec_speed(samples: list[Sample], min_time: float) -> dict[str, Any]:
    batch = samples[:1000]
    blob = encode_batch(batch)
    enc, _ = rate(lambda: encode_batch(batch), min_time)
    dec, _ = rate(lambda: decode_batch(blob), min_time)
    jl_rate, _ = rate(lambda: json_lines(batch), min_time)
    return {
        "encode_readings_per_s": round(enc * 1000),
        "decode_readings_per_s": round(dec * 1000),
        "json_lines_encode_readings_per_s": round(jl_rate * 1000),
    }


def bench_sqlite_ceiling(tmp: Path, samples: list[Sample], envelope_size: int,
                         min_time: float) -> dict[str, Any]:
    db = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE r (device TEXT, metric TEXT, ts INTEGER, value)")
    db.execute("CREATE TABLE b (seq INTEGER PRIMARY KEY, envelope BLOB)")
    rows = [(s.device, s.metric, s.ts_ms, s.value) for s in samples[:1000]]
    row_bytes = sum(len(d) + len(m) + 8 + 8 for d, m, _, _ in rows)

    def insert_rows() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO r VALUES (?,?,?,?)", rows)
        db.execute("COMMIT")

    blob = os.urandom(envelope_size)

    def insert_blob() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO b (envelope) VALUES (?)", (blob,))
        db.execute("COMMIT")

    r_rate, _ = rate(insert_rows, min_time)
    b_rate, _ = rate(insert_blob, min_time)
    db.close()
    return {
        "rows_1000_per_txn_rows_per_s": round(r_rate * 1000),
        "rows_1000_per_txn_bytes_per_s": round(r_rate * row_bytes),
        "blob_1_per_txn_txn_per_s": round(b_rate),
        "blob_1_per_txn_bytes_per_s": round(b_rate * envelope_size),
        "blob_size": envelope_size,
    }


def bench_outbox(tmp: Path, samples: list[Sample], min_time: float) -> dict[str, Any]:
    sealer = Sealer(os.urandom(32), 1, "gw-bench")
    batches = chunks(samples, 1000)
    ob = Outbox(tmp / "outbox.db", max_bytes=256 << 20, sealer=sealer)
    i = 0

    def append_encoded() -> None:
        nonlocal i
        b = batches[i % len(batches)]
        i += 1
        ob.append(Lane.TELEMETRY, encode_batch(b), count=len(b), first_ts_ms=b[0].ts_ms,
                  last_ts_ms=b[-1].ts_ms)

    pre = encode_batch(batches[0])

    def append_only() -> None:
        ob.append(Lane.TELEMETRY, pre, count=1000, first_ts_ms=0, last_ts_ms=0)

    full, _ = rate(append_encoded, min_time)
    only, _ = rate(append_only, min_time)
    t0 = time.perf_counter()
    drained = 0
    while rows := ob.next_batches(32):
        ob.settle_many([(b.seq, AckStatus.DELIVERED) for b in rows])
        drained += sum(b.count for b in rows)
    drain = drained / (time.perf_counter() - t0)
    st = ob.stats()
    ob.close()
    return {
        "append_1000_readings_incl_encode_seal_readings_per_s": round(full * 1000),
        "append_1000_readings_seal_only_readings_per_s": round(only * 1000),
        "appends_per_s": round(only, 1),
        "drain_next_batches_settle_readings_per_s": round(drain),
        "file_bytes_after_drain": st["file_bytes"],
    }


def bench_crypto_snappy(samples: list[Sample], envelope_size: int,
                        min_time: float) -> dict[str, Any]:
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    out: dict[str, Any] = {}
    for size in (envelope_size, 65536):
        data = os.urandom(size)

        def encrypt(d: bytes = data) -> bytes:
            return aead.encrypt(nonce, d, b"aad")

        r, _ = rate(encrypt, min_time)
        out[f"aesgcm_{size}B_MB_per_s"] = round(r * size / 1e6, 1)
    jl = json_lines(samples[:1000])
    r, _ = rate(lambda: snappy.compress(jl), min_time)
    out["snappy_compress_json_MB_per_s"] = round(r * len(jl) / 1e6, 1)
    body = snappy.decompress(encode_batch(samples[:1000])[1:])
    r, _ = rate(lambda: snappy.compress(body), min_time)
    out["snappy_compress_codec_body_MB_per_s"] = round(r * len(body) / 1e6, 1)
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    min_time = 0.3 if quick else 1.5
    samples = dataset()
    result: dict[str, Any] = {"python": sys.version.split()[0],
                              "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count()}
    result["compression"] = bench_compression(samples)
    result["compression_datasets"] = bench_datasets(samples)
    result["codec_speed"] = bench_codec_speed(samples, min_time)
    envelope_size = len(encode_batch(samples[:1000])) + 44
    with tempfile.TemporaryDirectory() as d:
        result["sqlite_ceiling"] = bench_sqlite_ceiling(Path(d), samples, envelope_size,
                                                        min_time)
        result["outbox"] = bench_outbox(Path(d), samples, min_time)
    result["crypto_snappy"] = bench_crypto_snappy(samples, envelope_size, min_time)
    ceiling = result["sqlite_ceiling"]["rows_1000_per_txn_rows_per_s"]
    txn_ceiling = result["sqlite_ceiling"]["blob_1_per_txn_txn_per_s"]
    outbox = result["outbox"]
    result["ratios"] = {
        "outbox_append_incl_encode_vs_sqlite_rows_ceiling": round(
            outbox["append_1000_readings_incl_encode_seal_readings_per_s"] / ceiling, 3),
        "outbox_appends_vs_sqlite_blob_txn_ceiling": round(
            outbox["appends_per_s"] / txn_ceiling, 3),
        "compression_goal_30x_met": result["compression"]["codec_batches_1000_ratio"] >= 30,
        "compression_worst_dataset_ratio": result["compression_datasets"]["worst_case"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
