"""Issue 13's goals in one report: run the benches, print each goal's figure beside its ceiling or
peer from the same run and met / not met, and regenerate the README's goal table from it.

    python bench/perf_report.py                       # run the subset (~15 min), print JSON
    python bench/perf_report.py --out DIR             # ... and keep each bench's JSON in DIR
    python bench/perf_report.py --from DIR            # no run: report from a kept DIR
    python bench/perf_report.py --from DIR --readme README.md   # rewrite the README's table

The README's table lives between ``<!-- perf-goals:begin -->`` and ``<!-- perf-goals:end -->``
and is written only by this script (``make bench-perf`` does all of it). What each bench
measures and how: docs/performance.md. The benches run one after another (never two at once)
because the figures are CPU shares and latencies on the same cores.

W3 (100 devices x 100 registers at 100 ms) is run only with ``--w3``: on a 2-core machine the
register plant alone cannot serve 1000 requests/s of 100 registers, so the row is reported as
"not judged here" with the reason instead of a misleading figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- perf-goals:begin -->", "<!-- perf-goals:end -->"

#: (name, argv after the interpreter); each prints one JSON document on stdout
RUNS: list[tuple[str, list[str]]] = [
    ("thingsboard", ["bench/bench_thingsboard.py", "--workloads", "W1,W2", "--seconds", "15"]),
    ("memory", ["bench/bench_workloads.py", "--workloads", "M", "--seconds", "15", "--imports"]),
    ("modbus", ["bench/bench_modbus.py", "--seconds", "0.5", "--rounds", "3",
                "--instructions", "200"]),
    ("modbus_uint16", ["bench/bench_modbus.py", "--seconds", "0.5", "--rounds", "3",
                       "--layout", "uint16", "--points", "100", "--instructions", "100"]),
    ("drain", ["bench/bench_uplink.py", "--batches", "300", "--seconds", "4"]),
    ("codec", ["bench/bench_codec_outbox.py", "--quick"]),
    ("pipeline", ["bench/bench_gateway.py", "--rss-seconds", "0"]),
]
W3_RUN = ("w3", ["bench/bench_workloads.py", "--workloads", "W3", "--seconds", "10",
                 "--warmup", "3"])


def run_all(out: Path | None, w3: bool) -> dict[str, Any]:
    """Run every bench in turn; {name: its JSON} (a failed bench: {"error": ...})."""
    results: dict[str, Any] = {}
    for name, argv in RUNS + ([W3_RUN] if w3 else []):
        t0 = time.monotonic()
        print(f"== {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
        try:
            doc = _last_json(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            doc = None
        if doc is None:
            doc = {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
        doc["_seconds"] = round(time.monotonic() - t0, 1)
        doc["_load_avg_1min"] = round(os.getloadavg()[0], 1)
        results[name] = doc
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    return results


def _last_json(text: str) -> dict[str, Any]:
    """The JSON document a bench printed (the last top-level object of its stdout)."""
    start = text.rfind("\n{")
    start = 0 if text.startswith("{") and start < 0 else start + 1
    doc = json.loads(text[start:])
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def load(src: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(src.glob("*.json"))
            if p.stem != "report"}


def _row(results: dict[str, Any], workload: str, gateway: str) -> dict[str, Any] | None:
    for r in results.get("thingsboard", {}).get("rows", []):
        if r.get("workload") == workload and r.get("gateway", "").startswith(gateway):
            return dict(r)
    return None


def _goal(goal: str, figure: Any, unit: str, peer: str, target: str, met: bool | None,
          source: str) -> dict[str, Any]:
    return {"goal": goal, "figure": figure, "unit": unit, "ceiling_or_peer": peer,
            "target": target, "met": met, "bench": source}


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 13 with its figure, its ceiling or peer of the same run, met."""
    out: list[dict[str, Any]] = []
    for w, cpu_goal in (("W2", 8.0), ("W1", 2.0)):
        e, tb = _row(results, w, "edgegw"), _row(results, w, "ThingsBoard")
        if e is None:
            out.append(_goal(f"{w} at defaults", None, "", "", "", None, "thingsboard"))
            continue
        tbs = tb or {}
        lag = e.get("lag_ms_at_durable_cloud_commit", {})
        tb_lag = tbs.get("lag_ms_at_cloud_receive", {})
        peer = "ThingsBoard IoT Gateway, same run"
        out.append(_goal(f"{w} delivered", e.get("delivered_percent"), "%",
                         f"{peer}: {tbs.get('delivered_percent')}%", "100%",
                         e.get("goals", {}).get("delivered_100_percent", {}).get("met"),
                         "thingsboard"))
        out.append(_goal(f"{w} gateway CPU", e.get("cpu_percent_one_core"), "% of a core",
                         f"{peer}: {tbs.get('cpu_percent_one_core')}%", f"<= {cpu_goal:g}%",
                         (e.get("cpu_percent_one_core") or 1e9) <= cpu_goal, "thingsboard"))
        out.append(_goal(f"{w} lag p99 (reading -> durable cloud commit)", lag.get("p99"), "ms",
                         f"{peer} (at its cloud's receive): p99 {tb_lag.get('p99')} ms",
                         "<= 100 ms", lag.get("p99") is not None and lag["p99"] <= 100,
                         "thingsboard"))
        if w == "W2":
            out.append(_goal("W2 RSS", e.get("rss_mb"), "MB",
                             f"{peer}: {tbs.get('rss_mb')} MB (PSS/USS edgegw "
                             f"{e.get('pss_mb')}/{e.get('uss_mb')})", "<= 45 MB",
                             (e.get("rss_mb") or 1e9) <= 45, "thingsboard"))
    w3 = results.get("w3", {}).get("results", [{}])[0] if "w3" in results else None
    if w3:
        sched = w3.get("scheduler") or {}
        g = w3.get("goals", {})
        out.append(_goal(
            "W3 (100 devices x 100 registers at 100 ms): gateway CPU",
            w3.get("cpu_percent_one_core"), "% of a core",
            f"on the same 2 cores as its plant, broker and cloud: delivered "
            f"{w3.get('delivered_percent')}%, {sched.get('skipped_slots')} poll slots skipped "
            f"({sched.get('polls')} polls), worst device lateness p99 "
            f"{sched.get('worst_device_lateness_p99_ms')} ms, RSS {w3.get('rss_mb')} MB",
            "<= 60%, RSS <= 80 MB, no missed poll",
            bool(g.get("cpu_percent", {}).get("met") and g.get("rss_mb", {}).get("met")
                 and not sched.get("skipped_slots")), "w3"))
    else:
        out.append(_goal("W3 (100 devices x 100 registers at 100 ms)", None, "",
                         "not run (--w3): the register plant needs cores of its own to serve "
                         "1000 requests/s; on 2 shared cores it is the bottleneck", "", None, "-"))
    m = (results.get("memory", {}).get("results") or [{}])[0]
    floor = results.get("memory", {}).get("import_floor", {})
    floor_rss = max((v["rss_mb"] for v in floor.values() if isinstance(v, dict)), default=None)
    deps = floor.get("dependencies_rss_mb")
    deps_text = f", of which the third-party dependencies alone {deps} MB" if deps else ""
    out.append(_goal("RSS at 100 devices x 20 points @ 1 s", m.get("rss_mb"), "MB",
                     f"import floor of the daemon's modules: {floor_rss} MB{deps_text} (PSS/USS "
                     f"{m.get('pss_mb')}/{m.get('uss_mb')})", "<= 45 MB",
                     m.get("rss_mb") is not None and m["rss_mb"] <= 45, "memory"))
    for name, what in (("modbus_uint16", "100 plain uint16 registers (W2's device)"),
                       ("modbus", "20 points of mixed types")):
        cg = results.get(name, {}).get("callgrind", {})
        ipp = cg.get("instructions_per_poll", {})
        decoded = ""
        if cg.get("poller_scheduler_overhead_vs_raw_decoded_pct") is not None:
            rel = cg["poller_scheduler_overhead_vs_raw_decoded_pct"]
            decoded = (f"; raw pymodbus decoding the points itself: {ipp.get('raw_decoded')}, "
                       + (f"ours {rel}% over it" if rel > 0 else f"ours {-rel}% below it"))
        out.append(_goal(f"Modbus, {what}: instructions per poll over raw pymodbus (poller + "
                         "scheduler)", cg.get("poller_scheduler_overhead_pct"), "%",
                         f"raw pymodbus: {ipp.get('raw')} instructions/poll, ours "
                         f"{ipp.get('scheduled')}{decoded}",
                         "<= 10%, or the rest explained (docs/performance.md)", cg.get("met"),
                         name))
    d = results.get("drain", {}).get("drain") or results.get("drain", {})
    d = d[0] if isinstance(d, list) and d else d
    if isinstance(d, dict):
        rate = d.get("drain_readings_per_s")
        out.append(_goal("drain of a backlog to the cloud store (after the durable commit)",
                         rate, "readings/s", f"raw paho QoS 1 of the same envelopes: "
                         f"{d.get('raw_paho_qos1_readings_per_s')} readings/s", ">= 200000",
                         rate is not None and rate >= 200_000, "drain"))
    c = results.get("codec", {}).get("compression_datasets", {})
    worst = c.get("worst_case", {})
    out.append(_goal("compression vs JSON lines, worst of six data sets", worst.get("ratio"), "x",
                     f"best: {c.get('best_case', {}).get('ratio')}x "
                     f"({c.get('best_case', {}).get('dataset')})", f"worst: {worst.get('dataset')}",
                     None, "codec"))
    p = results.get("pipeline", {})
    pipe, ceil = p.get("pipeline", {}), p.get("sqlite_ceiling", {})
    out.append(_goal("pipeline: driver emit -> durable sealed outbox", pipe.get(
        "readings_per_cpu_s"), "readings per CPU-second", "raw SQLite, FULL-sync blob "
        f"transactions of the same size: {ceil.get('readings_per_s_at_pipeline_batch_size')} "
        "readings/s", ">= 100000 readings/s", (pipe.get("readings_per_s") or 0) >= 100_000,
        "pipeline"))
    return out


def table(rows: list[dict[str, Any]], when: str, loads: list[float]) -> str:
    load = f"load average {min(loads):g}-{max(loads):g} during the benches" if loads else "load "\
        "not recorded"
    lines = [f"Generated by `bench/perf_report.py` ({when}, {os.cpu_count()} cores, {load}: "
             "timings vary by tens of percent between runs, instruction counts and memory do "
             "not).", "",
             "| goal | figure | ceiling or peer (same run) | target | met |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        fig = "-" if r["figure"] is None else f"{r['figure']} {r['unit']}".strip()
        met = {True: "met", False: "not met", None: "-"}[r["met"]]
        lines.append(f"| {r['goal']} | {fig} | {r['ceiling_or_peer']} | {r['target']} | {met} |")
    return "\n".join(lines)


def rewrite_readme(readme: Path, text: str) -> None:
    doc = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to regenerate")
    readme.write_text(pattern.sub(lambda _m: f"{BEGIN}\n{text}\n{END}", doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="keep each bench's JSON in this folder")
    ap.add_argument("--from", dest="src", type=Path, help="report from a kept folder, no run")
    ap.add_argument("--readme", type=Path, help="rewrite this README's goal table")
    ap.add_argument("--w3", action="store_true", help="also run W3 (needs spare cores)")
    a = ap.parse_args()
    results = load(a.src) if a.src else run_all(a.out, a.w3)
    rows = goals(results)
    when = time.strftime("%Y-%m-%d", time.gmtime())
    report = {"machine": f"{os.cpu_count()} cores", "load_avg": [
        round(x, 1) for x in os.getloadavg()], "date": when, "goals": rows,
        "benches_failed": sorted(k for k, v in results.items() if "error" in v)}
    print(json.dumps(report, indent=1))
    if a.out is not None:
        (a.out / "report.json").write_text(json.dumps(report, indent=1))
    loads = [v["_load_avg_1min"] for v in results.values() if v.get("_load_avg_1min")]
    if a.readme:
        rewrite_readme(a.readme, table(rows, when, loads))


if __name__ == "__main__":
    main()
