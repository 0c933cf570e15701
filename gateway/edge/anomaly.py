"""The anomaly stage: sliding windows of a device's metrics scored by a model or a statistic.

Per ``anomaly:`` entry, the device's ``metrics`` are assembled into rows (a row is complete when
every metric has a new GOOD value since the previous row; its timestamp is the newest of them).
Rows follow the rules ``edgegw model fit`` applies (``rows.Segmenter``): a row not newer than the
previous one is dropped (``out_of_order``), a gap longer than the max gap restarts the window.
Detectors:
- ``online`` (and ``model`` with ``online: true``, the default): the online, self-calibrating
  detector of online.py around a PCA-autoencoder TFLite model (the given one, else fitted on the
  device after ``learn_rows`` rows), with level-shift, drift, stuck-sensor and range detectors;
  the score is a surprise (-log10 of a probability), background refits run in the worker and are
  installed only if they validate;
- ``model`` with ``online: false``: the last ``window`` rows, flattened time-major, go to a TFLite
  model (see litert.py); the score is the standardised reconstruction error (or the model's own
  score output) against the spec's fixed threshold.
- ``zscore``: robust z-score per metric against the median/MAD of the previous ``window`` rows
  (default 60); the row's score is the largest |z| over the metrics (default threshold 5).
- ``ewma``: |x - mean| / std with exponentially weighted mean and variance (``alpha``), largest
  over the metrics (default threshold 5).
The score is itself a reading (``score_metric``, default ``anomaly.score``) and an Alert is raised
once per episode. Online: when the surprise reaches ``threshold`` (default 2.5), cleared after 10
rows below ``clear_threshold`` (default 0.5 below ``threshold``); the alert names the detector
that fired (``cause``).
Fixed model / statistical: after ``min_consecutive`` scores above ``threshold``, cleared at the
first score at or below ``clear_threshold`` (default: ``threshold``).

Invariants:
- Model inference and refits never run on the event loop once ``start(submit_blocking)`` was
  called: windows (online: every prepared row, in order) queue up (bounded by ``max_queue``,
  oldest dropped and counted), one batch per model and one refit are in flight at a time (an
  interpreter is not thread-safe), and scores come out of a later ``process()`` or ``tick()``.
  Without ``start`` (tests, benchmarks) inference and refits run inline.
- A non-GOOD or non-numeric sample of a metric empties that detector's window: scores never mix
  data from both sides of an outage.
- A detector that cannot be built (missing model or runtime without ``fallback``) is logged as an
  ERROR and disabled; it never takes the gateway down. ``edgegw check`` reports the same problem.
- Samples pass through unchanged; the stage never reads the wall clock.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgegw.edge import litert, online
from edgegw.edge.config import AnomalyConfig, resolve_path
from edgegw.edge.expr import is_number
from edgegw.edge.rows import RowAssembler, Segmenter
from edgegw.edge.rules import render_message
from edgegw.edge.stage import NoHolds, StageOutput
from edgegw.model import Alert, Sample, Severity

log = logging.getLogger("edgegw.edge.anomaly")

DEFAULT_THRESHOLDS = {"zscore": 5.0, "ewma": 5.0}
DEFAULT_STAT_WINDOW = 60
MAD_TO_SIGMA = 1.4826


class FutureLike(Protocol):
    def done(self) -> bool: ...

    def result(self) -> Any: ...


SubmitBlocking = Callable[..., FutureLike]


# --------------------------------------------------------------------------- statistical
class RobustZScore:
    """max over features of |x - median| / (1.4826 MAD) of the previous ``window`` rows."""

    def __init__(self, n_features: int, window: int, warmup: int) -> None:
        self.history: list[deque[float]] = [deque(maxlen=window) for _ in range(n_features)]
        self.warmup = min(warmup, window)

    def reset(self) -> None:
        for h in self.history:
            h.clear()

    def score(self, row: Sequence[float]) -> float | None:
        result: float | None = None
        if len(self.history[0]) >= self.warmup:
            result = 0.0
            for h, x in zip(self.history, row, strict=True):
                values = sorted(h)
                med = _median(values)
                mad = _median(sorted(abs(v - med) for v in values))
                scale = MAD_TO_SIGMA * mad
                if scale <= 1e-12 * max(1.0, abs(med)):
                    z = 0.0 if x == med else math.inf
                else:
                    z = abs(x - med) / scale
                result = max(result, z)
        for h, x in zip(self.history, row, strict=True):
            h.append(x)
        return result


def _median(values: Sequence[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2.0


class Ewma:
    """max over features of |x - mean| / std, exponentially weighted (scored before updating)."""

    def __init__(self, n_features: int, alpha: float, warmup: int) -> None:
        self.alpha = alpha
        self.warmup = warmup
        self.n = 0
        self.mean = [0.0] * n_features
        self.var = [0.0] * n_features

    def reset(self) -> None:
        self.n = 0

    def score(self, row: Sequence[float]) -> float | None:
        a = self.alpha
        if self.n == 0:
            self.mean = list(row)
            self.var = [0.0] * len(row)
            self.n = 1
            return None
        result = 0.0
        for i, x in enumerate(row):
            d = x - self.mean[i]
            sd = math.sqrt(self.var[i])
            z = abs(d) / sd if sd > 1e-12 else (0.0 if d == 0 else math.inf)
            result = max(result, z)
            self.mean[i] += a * d
            self.var[i] = (1 - a) * (self.var[i] + a * d * d)
        self.n += 1
        return result if self.n > self.warmup else None


# --------------------------------------------------------------------------- detector
@dataclass(eq=False)
class _Detector:
    cfg: AnomalyConfig
    kind: str
    threshold: float
    clear_threshold: float
    rows: RowAssembler
    severity: Severity
    stat: RobustZScore | Ewma | None = None
    model: Any = None  # litert.TFLiteModel
    window: deque[list[float]] = field(default_factory=deque)
    window_len: int = 1
    rows_seen: int = 0
    queue: deque[tuple[int, Any]] = field(default_factory=deque)
    inflight: FutureLike | None = None
    over: int = 0
    active: bool = False
    errors_logged: bool = False
    gate: Segmenter | None = None
    online: Any = None  # online.OnlineDetector
    refit_inflight: FutureLike | None = None


class AnomalyStage(NoHolds):
    """Stage running every configured anomaly detector; see the module docstring."""

    name = "anomaly"

    def __init__(self, configs: Sequence[AnomalyConfig], *, base_dir: Path | None = None) -> None:
        self._submit: SubmitBlocking | None = None
        self._by_device: dict[str, list[_Detector]] = {}
        self._detectors: list[_Detector] = []
        self.counters: dict[str, int] = {
            "rows": 0,
            "windows": 0,
            "scores": 0,
            "raised": 0,
            "cleared": 0,
            "resets": 0,
            "queue_dropped": 0,
            "inference_errors": 0,
            "batches": 0,
            "detectors_failed": 0,
            "out_of_order": 0,
            "refits": 0,
            "refits_rejected": 0,
            "refit_errors": 0,
        }
        for cfg in configs:
            try:
                det = self._build(cfg, base_dir)
            except Exception as exc:  # a broken detector must not take the gateway down
                self.counters["detectors_failed"] += 1
                log.error("anomaly detector %s disabled: %s", cfg.name, exc)
                continue
            self._detectors.append(det)
            self._by_device.setdefault(cfg.device, []).append(det)

    @staticmethod
    def _build(cfg: AnomalyConfig, base_dir: Path | None) -> _Detector:
        if cfg.kind == "online" or (cfg.kind == "model" and cfg.online):
            try:
                return AnomalyStage._build_online(cfg, base_dir)
            except ImportError as exc:  # numpy (extra ml) missing
                if cfg.fallback is None:
                    raise RuntimeError(
                        f"the online detector needs numpy: pip install 'edgegw[ml]' ({exc})"
                    ) from exc
                log.warning("anomaly %s: no numpy; using the %s fallback", cfg.name, cfg.fallback)
                return AnomalyStage._build_static(
                    cfg.model_copy(update={"kind": cfg.fallback, "threshold": None}), base_dir
                )
        return AnomalyStage._build_static(cfg, base_dir)

    @staticmethod
    def _build_online(cfg: AnomalyConfig, base_dir: Path | None) -> _Detector:
        if importlib.util.find_spec("numpy") is None:
            raise ImportError("numpy is not installed")
        wmodel = None
        use_litert = True
        if cfg.model is not None:
            path = resolve_path(cfg.model, base_dir)
            spec_path = resolve_path(cfg.spec, base_dir) if cfg.spec else litert.spec_path_for(path)
            spec = litert.ModelSpec.load(spec_path)
            if spec.features != cfg.metrics:
                raise litert.ModelShapeError(
                    f"metrics {cfg.metrics} differ from the model's features {spec.features}"
                )
            try:
                wmodel = online.WindowModel(None, spec, litert.TFLiteModel(path, spec))
            except litert.RuntimeMissingError:
                if cfg.fallback is None:
                    raise
                log.warning(
                    "anomaly %s: no TFLite runtime; the model part is fitted on the device and "
                    "runs on numpy",
                    cfg.name,
                )
                use_litert = False
        defaults = online.OnlineParams()
        params = online.OnlineParams(
            window=cfg.window or defaults.window,
            history=cfg.history,
            learn_rows=cfg.learn_rows,
            refit_every=cfg.refit_every,
            threshold=cfg.threshold if cfg.threshold is not None else defaults.threshold,
            clear=online.default_clear(cfg.threshold, cfg.clear_threshold),
            max_gap_ms=int(cfg.max_gap * 1000) if cfg.max_gap is not None else None,
            detectors=tuple(cfg.detectors) if cfg.detectors else defaults.detectors,
            use_litert=use_litert,
        )
        limits = [cfg.limits.get(m) for m in cfg.metrics]
        det = online.OnlineDetector(cfg.metrics, params, model=wmodel, limits=limits)
        return _Detector(
            cfg=cfg,
            kind="online",
            threshold=params.threshold,
            clear_threshold=params.clear,
            rows=RowAssembler(cfg.metrics),
            severity=Severity[cfg.severity.upper()],
            online=det,
        )

    @staticmethod
    def _build_static(cfg: AnomalyConfig, base_dir: Path | None) -> _Detector:
        kind = cfg.kind
        model = None
        threshold = cfg.threshold
        window = cfg.window
        max_gap_ms = int(cfg.max_gap * 1000) if cfg.max_gap is not None else None
        if kind == "model":
            assert cfg.model is not None
            path = resolve_path(cfg.model, base_dir)
            spec_path = resolve_path(cfg.spec, base_dir) if cfg.spec else litert.spec_path_for(path)
            try:
                spec = litert.ModelSpec.load(spec_path)
                if spec.features != cfg.metrics:
                    raise litert.ModelShapeError(
                        f"metrics {cfg.metrics} differ from the model's features {spec.features}"
                    )
                model = litert.TFLiteModel(path, spec)
            except litert.RuntimeMissingError:
                if cfg.fallback is None:
                    raise
                log.warning(
                    "anomaly %s: no TFLite runtime; using the %s fallback", cfg.name, cfg.fallback
                )
                kind, model = cfg.fallback, None
                threshold = cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLDS[kind]
                window = None
            else:
                threshold = threshold if threshold is not None else spec.threshold
                if threshold is None:
                    raise ValueError("no threshold in the config or the model spec")
                window = spec.window
                if max_gap_ms is None:
                    max_gap_ms = spec.max_gap_ms
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[kind]
        n = len(cfg.metrics)
        stat: RobustZScore | Ewma | None = None
        if kind == "zscore":
            stat = RobustZScore(n, window or DEFAULT_STAT_WINDOW, cfg.warmup)
        elif kind == "ewma":
            stat = Ewma(n, cfg.alpha, cfg.warmup)
        wlen = window if model is not None and window else 1
        return _Detector(
            cfg=cfg,
            kind=kind,
            threshold=threshold,
            clear_threshold=cfg.clear_threshold if cfg.clear_threshold is not None else threshold,
            rows=RowAssembler(cfg.metrics),
            severity=Severity[cfg.severity.upper()],
            stat=stat,
            model=model,
            window=deque(maxlen=wlen),
            window_len=wlen,
            gate=Segmenter(max_gap_ms, learn=max_gap_ms is None),
        )

    def start(self, submit_blocking: SubmitBlocking | None) -> None:
        """Run model inference through ``submit_blocking(fn, *args) -> Future`` from now on."""
        self._submit = submit_blocking

    @property
    def detectors(self) -> list[str]:
        return [f"{d.cfg.name}:{d.kind}" for d in self._detectors]

    # ------------------------------------------------------------------ stage protocol
    def process(self, samples: list[Sample], now_ms: int) -> StageOutput:
        out: list[Sample] = list(samples)
        alerts: list[Alert] = []
        if self._by_device:
            for s in samples:
                dets = self._by_device.get(s.device)
                if dets is None:
                    continue
                for det in dets:
                    if det.rows.wants(s.metric):
                        self._feed(det, s, out, alerts)
        self._pump(out, alerts)
        return out, alerts, []

    def tick(self, now_ms: int) -> StageOutput:
        out: list[Sample] = []
        alerts: list[Alert] = []
        self._pump(out, alerts)
        return out, alerts, []

    def stats(self) -> dict[str, Any]:
        queued = sum(len(d.queue) for d in self._detectors)
        active = sum(
            1 for d in self._detectors if (d.online.active if d.online is not None else d.active)
        )
        return {
            **self.counters,
            "detectors": len(self._detectors),
            "queued": queued,
            "active": active,
        }

    def drain(self) -> StageOutput:
        """Wait for every queued window to be scored (shutdown, tests); blocks."""
        out: list[Sample] = []
        alerts: list[Alert] = []
        for det in self._detectors:
            while det.inflight is not None or det.queue:
                if det.inflight is not None:
                    self._finish(det, det.inflight.result(), out, alerts)
                    det.inflight = None
                self._submit_next(det, inline=True, out=out, alerts=alerts)
            if det.refit_inflight is not None:
                fut, det.refit_inflight = det.refit_inflight, None
                self._refit_done(det, fut)
        return out, alerts, []

    # ------------------------------------------------------------------ internals
    def _feed(self, det: _Detector, s: Sample, out: list[Sample], alerts: list[Alert]) -> None:
        if not s.good or not is_number(s.value):
            if det.window or det.rows_seen:
                self.counters["resets"] += 1
            det.rows.reset()
            det.window.clear()
            det.rows_seen = 0
            if det.stat is not None:
                det.stat.reset()
            if det.online is not None:
                det.online.break_segment()
            return
        done = det.rows.add(s.metric, s.ts_ms, float(s.value))  # type: ignore[arg-type]
        if done is None:
            return
        ts, row = done
        if det.online is not None:
            prep = det.online.prepare(ts, row)
            if prep is None:
                self.counters["out_of_order"] += 1
                return
            self.counters["rows"] += 1
            det.rows_seen += 1
            if prep.window is not None:
                self.counters["windows"] += 1
            det.queue.append((ts, prep))
            if len(det.queue) > det.cfg.max_queue:
                det.queue.popleft()
                self.counters["queue_dropped"] += 1
            return
        assert det.gate is not None
        verdict = det.gate.accept(ts)
        if verdict == "drop":
            self.counters["out_of_order"] += 1
            return
        if verdict == "break":
            det.window.clear()
            det.rows_seen = 0
            if det.stat is not None:
                det.stat.reset()
        self.counters["rows"] += 1
        det.rows_seen += 1
        if det.stat is not None:
            score = det.stat.score(row)
            if score is not None:
                self._emit(det, ts, score, out, alerts)
            return
        det.window.append(row)
        if len(det.window) < det.window_len or (det.rows_seen - det.window_len) % det.cfg.step:
            return
        import numpy as np  # lazy: optional extra [ml]

        self.counters["windows"] += 1
        det.queue.append((ts, np.asarray(det.window, dtype=np.float32).reshape(-1)))
        if len(det.queue) > det.cfg.max_queue:
            det.queue.popleft()
            self.counters["queue_dropped"] += 1

    def _pump(self, out: list[Sample], alerts: list[Alert]) -> None:
        for det in self._detectors:
            if det.inflight is not None and det.inflight.done():
                fut, det.inflight = det.inflight, None
                try:
                    results = fut.result()
                except Exception as exc:
                    self._inference_failed(det, exc)
                else:
                    self._finish(det, results, out, alerts)
            if det.inflight is None and det.queue:
                self._submit_next(det, inline=self._submit is None, out=out, alerts=alerts)
            if det.online is not None:
                self._pump_refit(det)

    def _pump_refit(self, det: _Detector) -> None:
        if det.refit_inflight is not None:
            if not det.refit_inflight.done():
                return
            fut, det.refit_inflight = det.refit_inflight, None
            self._refit_done(det, fut)
        if det.online.refit_due():
            job = det.online.refit_job()
            if self._submit is None:
                self._install(det, job())
            else:
                det.refit_inflight = self._submit(job)

    def _refit_done(self, det: _Detector, fut: FutureLike) -> None:
        try:
            outcome = fut.result()
        except Exception as exc:
            self.counters["refit_errors"] += 1
            det.online.refit_pending = False
            log.error("anomaly %s: refit failed: %s: %s", det.cfg.name, type(exc).__name__, exc)
            return
        self._install(det, outcome)

    def _install(self, det: _Detector, outcome: Any) -> None:
        if det.online.install(outcome):
            self.counters["refits"] += 1
            log.debug(
                "anomaly %s: refitted model installed (%.3f s CPU)", det.cfg.name, outcome.cpu_s
            )
        else:
            self.counters["refits_rejected"] += 1
            log.info("anomaly %s: refit not installed: %s", det.cfg.name, outcome.reason)

    def _submit_next(
        self, det: _Detector, *, inline: bool, out: list[Sample], alerts: list[Alert]
    ) -> None:
        if not det.queue:
            return
        batch = list(det.queue)
        det.queue.clear()
        self.counters["batches"] += 1
        fn = _score_online if det.online is not None else _score_batch
        model = det.online.model if det.online is not None else det.model
        if inline or self._submit is None:
            try:
                results = fn(model, batch)
            except Exception as exc:
                self._inference_failed(det, exc)
                if det.online is not None:  # judge the rows without the model's part
                    self._finish(det, [(ts, (prep, None)) for ts, prep in batch], out, alerts)
                return
            self._finish(det, results, out, alerts)
            return
        det.inflight = self._submit(fn, model, batch)

    def _inference_failed(self, det: _Detector, exc: BaseException) -> None:
        self.counters["inference_errors"] += 1
        if not det.errors_logged:
            det.errors_logged = True
            log.error(
                "anomaly %s: inference failed: %s: %s (logged once)",
                det.cfg.name,
                type(exc).__name__,
                exc,
            )

    def _finish(
        self,
        det: _Detector,
        results: list[tuple[int, Any]],
        out: list[Sample],
        alerts: list[Alert],
    ) -> None:
        if det.online is not None:
            for ts, (prep, raw) in results:
                self._judge_online(det, ts, prep, raw, out, alerts)
            return
        for ts, score in results:
            self._emit(det, ts, score, out, alerts)

    def _judge_online(
        self,
        det: _Detector,
        ts: int,
        prep: Any,
        raw: float | None,
        out: list[Sample],
        alerts: list[Alert],
    ) -> None:
        verdict = det.online.judge(prep, raw)
        if verdict.score is None:
            return
        cfg = det.cfg
        self.counters["scores"] += 1
        out.append(Sample(cfg.device, cfg.score_metric, ts, round(verdict.score, 4)))
        if verdict.raised or verdict.cleared:
            det.active = verdict.raised
            self.counters["raised" if verdict.raised else "cleared"] += 1
            top = max(verdict.components, key=lambda k: verdict.components[k])
            alerts.append(
                self._alert(det, ts, verdict.score, verdict.raised, top, verdict.components)
            )

    def _emit(
        self, det: _Detector, ts: int, score: float, out: list[Sample], alerts: list[Alert]
    ) -> None:
        cfg = det.cfg
        self.counters["scores"] += 1
        value = score if math.isfinite(score) else 1e300
        out.append(Sample(cfg.device, cfg.score_metric, ts, value))
        if score > det.threshold:
            det.over += 1
            if not det.active and det.over >= cfg.min_consecutive:
                det.active = True
                self.counters["raised"] += 1
                alerts.append(self._alert(det, ts, score, True))
        else:
            det.over = 0
            if det.active and score <= det.clear_threshold:
                det.active = False
                self.counters["cleared"] += 1
                alerts.append(self._alert(det, ts, score, False))

    def _alert(
        self,
        det: _Detector,
        ts: int,
        score: float,
        raised: bool,
        top: str | None = None,
        components: dict[str, float] | None = None,
    ) -> Alert:
        cfg = det.cfg
        fields = {
            "rule": cfg.name,
            "device": cfg.device,
            "score": score,
            "threshold": det.threshold,
            "metrics": ", ".join(cfg.metrics),
            "kind": det.kind,
            "detector": top or det.kind,
        }
        if cfg.message:
            text = render_message(cfg.message, lambda k: fields.get(k))
        elif components is not None:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in components.items())
            text = (
                f"{cfg.name}: anomaly ({top}) surprise {score:.2f} >= {det.threshold:.4g} "
                f"over {fields['metrics']} [{parts}]"
            )
        else:
            text = (
                f"{cfg.name}: {det.kind} anomaly score {score:.4g} > {det.threshold:.4g} "
                f"over {fields['metrics']}"
            )
        if not raised:
            text = (
                f"cleared: {text}"
                if cfg.message
                else (
                    f"{cfg.name}: {det.kind} anomaly score back to {score:.4g} "
                    f"(<= {det.clear_threshold:.4g})"
                )
            )
        return Alert(
            rule=cfg.name,
            device=cfg.device,
            ts_ms=ts,
            active=raised,
            severity=det.severity,
            message=text,
            metric=cfg.score_metric,
            value=score if math.isfinite(score) else None,
            labels={"detector": det.kind, **({"cause": top} if top else {})},
        )


def _score_online(model: Any, batch: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Worker side of the online detector: the model error of each prepared row's window
    (None while the window is filling or before the first model)."""
    out: list[tuple[int, Any]] = []
    for ts, prep in batch:
        raw = model.score(prep.window) if model is not None and prep.window is not None else None
        out.append((ts, (prep, raw)))
    return out


def _score_batch(model: Any, batch: list[tuple[int, Any]]) -> list[tuple[int, float]]:
    """Runs in the worker: one model invocation per window (batch size 1 is LiteRT's fast path)."""
    return [(ts, model.score(x)) for ts, x in batch]
