"""`edgegw model eval`: score a model or the online detector on a labelled CSV.

Input: a *wide* CSV, one row per reading time: a time column first (epoch seconds or
milliseconds, or an ISO date-time), numeric feature columns, and a 0/1 label column (``--label``,
default the first of ``anomaly``, ``is_anomaly``, ``label``); ``,`` or ``;`` separated. This is the
layout of the public labelled sets (one file per experiment). Rows are fed in file order through
the same row rules as the stage (out-of-order dropped, gaps and non-finite values restart windows).

Output (JSON): detection rate, false alerts per day and detection delay (``scoring.event_metrics``)
and the windowed scores of the three profiles (``scoring.score_stream``). The first
``--learn`` fraction of the rows (default: the scorer's 15 % probation) is learning time and is not
judged.

Invariants: the online detector here is the same ``OnlineDetector`` the ``online`` stage runs,
with refits done inline at the same row counts; numbers printed for a model file use its spec's
static threshold exactly like ``kind: model, online: false``.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegw.edge import litert, scoring
from edgegw.edge.online import OnlineDetector, OnlineParams, WindowModel, default_clear
from edgegw.edge.rows import Segmenter

if TYPE_CHECKING:
    import numpy as np  # lazy: optional extra [ml]
    import numpy.typing as npt

    from edgegw.edge.online import OnlineDetector, OnlineParams, WindowModel

    Array = npt.NDArray[np.float64]

LABEL_NAMES = ("anomaly", "is_anomaly", "label")


class EvalError(ValueError):
    """The labelled file cannot be read."""


@dataclass
class Labelled:
    name: str
    features: list[str]
    ts_ms: list[int]
    rows: Array
    labels: list[int]


def _parse_time(text: str, lineno: int, path: Path) -> int:
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        try:
            dt = datetime.fromisoformat(t)
        except ValueError:
            raise EvalError(f"{path}:{lineno}: cannot read the time {t!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return round(dt.timestamp() * 1000)
    # epoch seconds (< year 5000 in s) or milliseconds; plain row numbers count as seconds
    return round(v * 1000) if abs(v) < 1e11 else round(v)


def load_labelled_csv(
    path: Path, *, label: str | None = None, features: Sequence[str] | None = None
) -> Labelled:
    """Read a wide labelled CSV (see the module docstring)."""
    import numpy as np  # lazy: optional extra [ml]

    with path.open(newline="", encoding="utf-8") as fh:
        head = fh.readline()
        fh.seek(0)
        delim = ";" if head.count(";") > head.count(",") else ","
        reader = csv.reader(fh, delimiter=delim)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise EvalError(f"{path}: empty file") from None
        lab = label or next((n for n in LABEL_NAMES if n in header), None)
        if lab is None or lab not in header:
            raise EvalError(
                f"{path}:1: no label column (looked for {label or ', '.join(LABEL_NAMES)}); "
                "pass --label NAME"
            )
        li = header.index(lab)
        skip = {0, li} | {i for i, h in enumerate(header) if h in ("changepoint",)}
        names = [h for i, h in enumerate(header) if i not in skip]
        if features:
            missing = [f for f in features if f not in header]
            if missing:
                raise EvalError(f"{path}:1: no column(s) {missing} (found {', '.join(names)})")
            names = list(features)
        idx = [header.index(n) for n in names]
        ts: list[int] = []
        rows: list[list[float]] = []
        labels: list[int] = []
        for lineno, rec in enumerate(reader, 2):
            if not rec or not rec[0].strip():
                continue
            try:
                vals = [float(rec[i]) if rec[i].strip() else math.nan for i in idx]
                labels.append(1 if float(rec[li]) else 0)
            except (ValueError, IndexError) as exc:
                raise EvalError(f"{path}:{lineno}: cannot read {rec!r}: {exc}") from None
            ts.append(_parse_time(rec[0], lineno, path))
            rows.append(vals)
    if len(rows) < 50:
        raise EvalError(f"{path}: only {len(rows)} rows; a labelled stream needs hundreds")
    return Labelled(path.stem, names, ts, np.asarray(rows, dtype=np.float64), labels)


@dataclass
class Run:
    """Per-row output of a detector over a stream."""

    scores: list[float]  # combined score (NaN where none yet)
    raised: list[int]  # rows where an alert episode started
    refit_cpu_s: float = 0.0
    refits: int = 0
    refits_rejected: int = 0


def run_online(
    data: Labelled,
    params: OnlineParams | None = None,
    *,
    model: WindowModel | None = None,
    limits: Sequence[tuple[float, float] | None] | None = None,
) -> tuple[Run, OnlineDetector]:
    """Feed the stream through an ``OnlineDetector`` with inline refits."""
    det = OnlineDetector(data.features, params, model=model, limits=limits)
    scores: list[float] = []
    raised: list[int] = []
    cpu = 0.0
    for i, (ts, row) in enumerate(zip(data.ts_ms, data.rows.tolist(), strict=True)):
        v = det.step(ts, row)
        if v is None or v.score is None:
            scores.append(math.nan)
        else:
            scores.append(v.score)
            if v.raised:
                raised.append(i)
        outcome = det.refit_now()
        if outcome is not None:
            cpu += outcome.cpu_s
    run = Run(scores, raised, cpu, det.counters["refits"], det.counters["refits_rejected"])
    return run, det


def run_static(data: Labelled, model: WindowModel, threshold: float) -> Run:
    """A fixed model and threshold (``kind: model, online: false``), windows restart at gaps."""
    import numpy as np  # lazy: optional extra [ml]

    gate = Segmenter(model.spec.max_gap_ms, learn=model.spec.max_gap_ms is None)
    w = model.spec.window
    buf: list[list[float]] = []
    scores: list[float] = []
    raised: list[int] = []
    active = False
    for i, (ts, row) in enumerate(zip(data.ts_ms, data.rows.tolist(), strict=True)):
        verdict = gate.accept(ts)
        if verdict == "drop":
            scores.append(math.nan)
            continue
        if verdict == "break" or not all(math.isfinite(x) for x in row):
            buf = []
        if not all(math.isfinite(x) for x in row):
            scores.append(math.nan)
            continue
        buf.append(row)
        if len(buf) > w:
            buf.pop(0)
        if len(buf) < w:
            scores.append(math.nan)
            continue
        s = model.score(np.asarray(buf, dtype=np.float64).reshape(-1))
        scores.append(s)
        if s > threshold and not active:
            active = True
            raised.append(i)
        elif s <= threshold:
            active = False
    return Run(scores, raised)


def judge(data: Labelled, detections: Sequence[int]) -> dict[str, Any]:
    """Windowed scores (three profiles) and operator metrics of detections on one stream."""
    n = len(data.labels)
    runs = scoring.label_runs(data.labels)
    windows = scoring.anomaly_windows(runs, n)
    prob = scoring.probation_rows(n)
    out: dict[str, Any] = {}
    for profile in scoring.PROFILES:
        st = scoring.score_stream(detections, windows, n, profile)
        out[profile] = scoring.normalised([st])
    st = scoring.score_stream(detections, windows, n, "standard")
    out["windows"] = len(windows)
    out["tp"], out["fn"], out["fp"] = st.tp, st.fn, st.fp
    ev = scoring.event_metrics(detections, runs, data.ts_ms, skip_rows=prob)
    out.update(ev.as_dict())
    return out


# --------------------------------------------------------------------------- CLI
def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", type=Path, nargs="+", help="labelled wide CSV file(s)")
    parser.add_argument(
        "--model",
        type=Path,
        help="a fitted .tflite (spec beside it): with --static, its own threshold; otherwise "
        "the online detector starts from it",
    )
    parser.add_argument(
        "--static", action="store_true", help="score the model with its fixed spec threshold"
    )
    parser.add_argument("--label", help="label column (default: anomaly, is_anomaly or label)")
    parser.add_argument("--metrics", help="comma-separated feature columns (default: all)")
    parser.add_argument(
        "--threshold", type=float, help="alert threshold (online: surprise; static: error)"
    )


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    features = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    model: WindowModel | None = None
    if args.model is not None:
        spec = litert.ModelSpec.load(litert.spec_path_for(args.model))
        model = WindowModel(None, spec, litert.TFLiteModel(args.model, spec))
        if features is None:
            features = list(spec.features)
    elif args.static:
        raise EvalError("--static needs --model")
    params = (
        OnlineParams()
        if args.threshold is None
        else OnlineParams(threshold=args.threshold, clear=default_clear(args.threshold, None))
    )
    files: dict[str, Any] = {}
    total: list[scoring.StreamScore] = []
    for path in args.csv:
        data = load_labelled_csv(path, label=args.label, features=features)
        if args.static:
            assert model is not None
            thr = args.threshold if args.threshold is not None else model.spec.threshold
            if thr is None:
                raise EvalError(f"{args.model}: the spec has no threshold; pass --threshold")
            run = run_static(data, model, thr)
        else:
            run, _ = run_online(data, params, model=model)
        files[str(path)] = judge(data, run.raised)
        n = len(data.labels)
        windows = scoring.anomaly_windows(scoring.label_runs(data.labels), n)
        total.append(scoring.score_stream(run.raised, windows, n, "standard"))
    keys = ("labelled_anomalies", "detected", "false_alerts")
    summary: dict[str, Any] = {
        "detector": "static" if args.static else "online",
        "files": len(files),
        **{k: sum(f[k] for f in files.values()) for k in keys},
        "standard_score": scoring.normalised(total),
        "per_file": files,
    }
    days = sum(f["days"] for f in files.values())
    summary["detection_rate"] = (
        round(summary["detected"] / summary["labelled_anomalies"], 4)
        if summary["labelled_anomalies"]
        else None
    )
    delays = [f["delay_s_median"] for f in files.values() if f["delay_s_median"] is not None]
    summary["delay_s_median"] = sorted(delays)[len(delays) // 2] if delays else None
    summary["false_alerts_per_day"] = round(summary["false_alerts"] / days, 3) if days else None
    return summary
