"""`edgegw model fit`: fit a PCA autoencoder to recorded normal data, on the gateway itself.

Input: a CSV export (columns ``ts_ms,device,metric,value``, optionally ``quality`` - the cloud's
``query --format csv`` output) and/or a gateway outbox (``--outbox STATE_DIR``). Output: a
``.tflite`` flatbuffer of two FULLY_CONNECTED ops written with numpy + flatbuffers (no
TensorFlow) and its JSON ``ModelSpec`` beside it.

Method:
1. rows are assembled exactly as the anomaly stage does (``RowAssembler`` + ``Segmenter``), in
   arrival order: a row not newer than the previous one is dropped, a non-GOOD or non-finite
   sample or a gap longer than ``--max-gap`` (default 5x the median row interval, stored in the
   spec so the stage uses the same) starts a new segment, and windows never span segments;
2. sliding windows (step 1) of ``--window`` rows, offset by the training mean in float64 (stored
   as ``input_offset``) and standardised per feature;
3. PCA on the first ``1 - holdout`` of the windows; the components kept are those whose
   eigenvalue exceeds twice the noise floor (the median eigenvalue: most directions of a window
   of several sensors are noise), or the fewest explaining ``--variance``, or ``--components``;
4. the static threshold is ``exp(median + sigmas x robust sd)`` of the held-out (later) windows'
   log errors times ``--margin``; the calibration quality (held-out vs training error, share of
   held-out windows over the threshold) is reported, and a broken one refused unless ``--force``.

Invariants: the model bytes are deterministic for the same input; the model matches the numpy
reference (``litert.dense_forward``) to float32 precision; bad input is a clear error, exit 2.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegw.edge.expr import is_number
from edgegw.edge.litert import (
    ModelSpec,
    Scaling,
    build_dense_model,
    check_shapes,
    dense_forward,
    inspect_model_shapes,
    pca_autoencoder_layers,
    reconstruction_scores,
    runtime_available,
    spec_path_for,
)
from edgegw.edge.rows import RowAssembler, Segmenter
from edgegw.model import Quality, Sample
from edgegw.units import parse_duration

if TYPE_CHECKING:
    import numpy as np  # lazy: optional extra [ml]
    import numpy.typing as npt

    Array = npt.NDArray[np.float64]


NOISE_FLOOR_FACTOR = 2.0


class FitError(ValueError):
    """The data cannot produce a model (too little, constant, wrong names)."""


@dataclass
class FitResult:
    model: bytes
    spec: ModelSpec
    layers: list[tuple[Any, Any]]
    components: int
    explained_variance: float
    train_windows: int
    holdout_windows: int
    seconds: float

    def calibration_problem(self) -> str | None:
        """Why this model's calibration cannot be trusted, or None (see ``calibration_quality``)."""
        level, message = calibration_quality(self.spec.calibration)
        return message if level == "broken" else None

    def save(self, model_path: Path, spec_path: Path | None = None) -> Path:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        model_path.write_bytes(self.model)
        target = spec_path or spec_path_for(model_path)
        self.spec.save(target)
        return target


def calibration_quality(cal: dict[str, Any]) -> tuple[str, str | None]:
    """``("ok" | "warn" | "broken", message)`` for a fit's calibration record.

    Broken: the held-out (latest) windows score ``CALIBRATION_REFUSE_RATIO`` times the training
    median or more - the recording is not one normal regime (a fault, a new operating point or a
    sensor change inside it), so any threshold would be meaningless; or more than 5 % of the
    held-out windows exceed the threshold. Warn: the ratio is above ``CALIBRATION_WARN_RATIO``
    or over 1 % of held-out windows exceed the threshold.
    """
    ratio = float(cal.get("holdout_to_train_ratio", 1.0))
    over = float(cal.get("holdout_over_threshold", 0.0))
    if ratio >= CALIBRATION_REFUSE_RATIO or over > 0.05:
        return "broken", (
            f"calibration is broken: the held-out (latest) windows score {ratio:.3g}x the "
            f"training median and {100 * over:.1f}% of them exceed the threshold. The data is not "
            "one normal regime (a fault, a new operating point or a sensor change inside it): "
            "fit on a stretch of normal operation only (--since/--until in the cloud query), or "
            "use the online detector (kind: online), which re-learns by itself"
        )
    if ratio >= CALIBRATION_WARN_RATIO or over > 0.01:
        return "warn", (
            f"calibration is doubtful: held-out windows score {ratio:.3g}x the training median, "
            f"{100 * over:.1f}% exceed the threshold; check the data covers normal operation only"
        )
    return "ok", None


# --------------------------------------------------------------------------- data
def segments_from_samples(
    samples: Iterable[Sample],
    device: str,
    features: Sequence[str],
    *,
    max_gap_ms: int | None = None,
) -> list[tuple[list[int], list[list[float]]]]:
    """Rows of ``features`` for ``device`` as the anomaly stage builds them, in arrival order:
    a row not newer than the previous one is dropped, a non-GOOD or non-finite sample or a gap
    longer than ``max_gap_ms`` starts a new segment (see ``Segmenter``)."""
    asm = RowAssembler(features)
    gate = Segmenter(max_gap_ms)
    segments: list[tuple[list[int], list[list[float]]]] = [([], [])]
    for s in samples:
        if s.device != device or not asm.wants(s.metric):
            continue
        if not s.good or not is_number(s.value):
            asm.reset()
            if segments[-1][0]:
                segments.append(([], []))
            continue
        done = asm.add(s.metric, s.ts_ms, float(s.value))  # type: ignore[arg-type]
        if done is None:
            continue
        ts, row = done
        verdict = gate.accept(ts)
        if verdict == "drop":
            continue
        if verdict == "break" and segments[-1][0]:
            segments.append(([], []))
        segments[-1][0].append(ts)
        segments[-1][1].append(row)
    return [seg for seg in segments if seg[0]]


def median_gap_limit(samples: Sequence[Sample], device: str, features: Sequence[str]) -> int | None:
    """The default max gap: 5x the median interval between consecutive rows."""
    import numpy as np  # lazy: optional extra [ml]

    probe = segments_from_samples(samples, device, features)
    gaps = np.concatenate(
        [np.diff(ts) for ts, _ in probe if len(ts) > 1] or [np.empty(0, dtype=np.int64)]
    )
    return int(5 * np.median(gaps)) if len(gaps) else None


def make_windows(rows: Array, window: int) -> Array:
    """Sliding windows (step 1), flattened time-major: ``[N - window + 1, window * F]``."""
    import numpy as np  # lazy: optional extra [ml]

    rows = np.asarray(rows, dtype=np.float64)
    n, f = rows.shape
    if n < window:
        return np.empty((0, window * f))
    view = np.lib.stride_tricks.sliding_window_view(rows, (window, f))[:, 0]
    return view.reshape(n - window + 1, window * f).copy()


def read_csv_samples(path: Path) -> list[Sample]:
    """Samples from a ``ts_ms,device,metric,value[,quality]`` CSV (header optional)."""
    out: list[Sample] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        cols = {"ts_ms": 0, "device": 1, "metric": 2, "value": 3}
        for lineno, rec in enumerate(reader, 1):
            if not rec or rec[0].startswith("#"):
                continue
            if lineno == 1 and not rec[0].strip().lstrip("-").isdigit():  # a header
                cols = {
                    name: rec.index(name)
                    for name in ("ts_ms", "device", "metric", "value")
                    if name in rec
                }
                if len(cols) != 4:
                    raise FitError(f"{path}:1: header must name ts_ms, device, metric and value")
                if "quality" in rec:
                    cols["quality"] = rec.index("quality")
                continue
            try:
                quality = Quality.GOOD
                if "quality" in cols and rec[cols["quality"]] not in ("", "good", "0"):
                    q = rec[cols["quality"]]
                    quality = Quality(int(q)) if q.isdigit() else Quality[q.upper()]
                value = parse_value(rec[cols["value"]])
                if value is None and quality is Quality.GOOD:
                    quality = Quality.BAD_DATA
                out.append(
                    Sample(
                        rec[cols["device"]],
                        rec[cols["metric"]],
                        int(rec[cols["ts_ms"]]),
                        value,
                        quality,
                    )
                )
            except (IndexError, ValueError, KeyError) as exc:
                raise FitError(f"{path}:{lineno}: cannot read {rec!r}: {exc}") from None
    return out


def parse_value(raw: str) -> float | bool | str | None:
    """A CSV cell as the cloud export writes it: a number, a bool (``True``/``False``), empty
    (no value) or any other text (kept as text: only the selected metrics must be numeric)."""
    text = raw.strip()
    if text in ("", "None", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    return text


# --------------------------------------------------------------------------- fitting
#: held-out median error above this many times the training median: the calibration is broken
CALIBRATION_REFUSE_RATIO = 10.0
#: above this: warn (the held-out data differs from the training data)
CALIBRATION_WARN_RATIO = 3.0


def fit_pca_autoencoder(
    segments: Sequence[tuple[Sequence[int], Sequence[Sequence[float]]]],
    features: Sequence[str],
    window: int,
    *,
    components: int | None = None,
    variance: float | None = None,
    sigmas: float = 5.0,
    margin: float = 1.0,
    holdout: float = 0.2,
    source: str = "",
    max_gap_ms: int | None = None,
) -> FitResult:
    """Fit on rows grouped in segments (windows never span two segments)."""
    import numpy as np  # lazy: optional extra [ml]

    started = time.perf_counter()
    if window < 1:
        raise FitError("window must be at least 1")
    bad_variance = variance is not None and not 0 < variance <= 1
    if bad_variance or sigmas <= 0 or margin <= 0 or not 0 < holdout < 1:
        raise FitError("need 0 < variance <= 1, sigmas > 0, margin > 0, 0 < holdout < 1")
    f = len(features)
    parts = [
        make_windows(np.asarray(rows, dtype=np.float64).reshape(-1, f), window)
        for _, rows in segments
        if len(rows) >= window
    ]
    x = np.concatenate(parts) if parts else np.empty((0, window * f))
    n = len(x)
    if n < 20:
        raise FitError(
            f"only {n} windows of {window} complete rows: record more normal data "
            "(at least a few hundred rows) or use a smaller --window"
        )
    n_hold = max(1, round(n * holdout))
    rows_all = x[: n - n_hold].reshape(-1, f)
    # offset in float64 before anything goes to float32: a sensor at 1e9 +- 1 keeps its variation
    offset = rows_all.mean(axis=0)
    x = x - np.tile(offset, window)
    train, hold = x[: n - n_hold], x[n - n_hold :]
    rows_train = train.reshape(-1, f)
    mean = rows_train.mean(axis=0)
    std = rows_train.std(axis=0)
    flat = [features[i] for i in range(f) if std[i] == 0 or std[i] <= 1e-12 * abs(float(offset[i]))]
    if flat:
        raise FitError(
            f"metric(s) {flat} are constant in the training data: drop them from --metrics"
        )
    mu_full = np.tile(mean, window)
    sd_full = np.tile(std, window)
    z = (train - mu_full) / sd_full
    z_centered = z - z.mean(axis=0)
    _, sing, vt = np.linalg.svd(z_centered, full_matrices=False)
    energy = sing**2
    ratio = np.cumsum(energy) / energy.sum()
    dims = window * f
    if components is not None:
        k = components
    elif variance is not None:
        k = int(np.searchsorted(ratio, variance) + 1)
    else:
        # the noise floor: the median eigenvalue (most directions of a window are sensor noise);
        # keep the components clearly above it
        k = int(np.count_nonzero(energy > NOISE_FLOOR_FACTOR * np.median(energy)))
    k = max(1, min(k, dims - 1 if dims > 1 else 1))
    v = vt[:k]
    # Fold the training mean of z into the layers: use mu' = mu + sd * mean(z) as the centre.
    centre = mu_full + sd_full * z.mean(axis=0)
    layers = pca_autoencoder_layers(v, centre, sd_full)
    spec = ModelSpec(
        kind="pca_autoencoder",
        window=window,
        features=list(features),
        scaling=Scaling(
            mean=[float(m + o) for m, o in zip(mean, offset, strict=True)],
            std=[float(s) for s in std],
        ),
        threshold=1.0,  # replaced below
        input_offset=[float(o) for o in offset],
        max_gap_ms=max_gap_ms,
    )
    # normalise residuals by their typical size on training data: a normal window scores ~1
    train_residual = train - dense_forward(layers, train.astype(np.float32))
    rms = np.sqrt(np.mean(train_residual.reshape(-1, f) ** 2, axis=0))
    spec.residual_scale = [float(max(r, 1e-12)) for r in rms]
    hold_scores = reconstruction_scores(hold, dense_forward(layers, hold.astype(np.float32)), spec)
    train_scores = reconstruction_scores(train, train - train_residual, spec)
    # A robust threshold on the log scale: median + sigmas x (1.4826 MAD) of the held-out errors.
    # Unlike a high quantile of a few hundred windows (in effect their maximum) one burst in the
    # held-out data cannot blow it up, and spiky training data cannot shrink it to nothing.
    log_hold = np.log(np.maximum(hold_scores, 1e-12))
    med = float(np.median(log_hold))
    spread = max(1.4826 * float(np.median(np.abs(log_hold - med))), 0.05)
    threshold = float(np.exp(med + sigmas * spread) * margin)
    spec.threshold = threshold
    hold_p50 = float(np.median(hold_scores))
    train_p50 = float(np.median(train_scores))
    spec.calibration = {
        "method": f"exp(median + {sigmas} x robust sd) of held-out log errors x margin {margin}",
        "components": k,
        "explained_variance": float(ratio[k - 1]),
        "train_windows": len(train),
        "holdout_windows": len(hold),
        "holdout_score_p50": hold_p50,
        "holdout_score_p99": float(np.quantile(hold_scores, 0.99)),
        "holdout_score_max": float(hold_scores.max()),
        "holdout_over_threshold": float(np.mean(hold_scores > threshold)),
        "train_score_p50": train_p50,
        "holdout_to_train_ratio": hold_p50 / max(train_p50, 1e-12),
        "source": source,
        "fitted_at_ms": int(time.time() * 1000),
    }
    model = build_dense_model(layers, description=f"edgegw PCA autoencoder {window}x{f} k={k}")
    return FitResult(
        model,
        spec,
        layers,
        k,
        float(ratio[k - 1]),
        len(train),
        len(hold),
        time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- commands
def inspect_model(model: Path, spec_file: Path | None = None) -> dict[str, Any]:
    """``edgegw model inspect``: a model's spec, tensor shapes and the runtime found."""
    spec_path = spec_file or spec_path_for(model)
    spec = ModelSpec.load(spec_path)
    info: dict[str, Any] = {
        "model": str(model),
        "bytes": model.stat().st_size,
        "spec": str(spec_path),
        **spec.model_dump(exclude={"scaling"}),
    }
    info["runtime"] = runtime_available()
    if info["runtime"] is not None:
        in_shape, out_shape = inspect_model_shapes(model)
        info["input_shape"], info["output_shape"] = in_shape, out_shape
        check_shapes(spec, in_shape, out_shape, str(model))
    return info


def fit_model(
    samples: Sequence[Sample],
    sources: Sequence[str],
    *,
    out: Path,
    device: str | None = None,
    metrics: str | None = None,
    window: int = 16,
    components: int | None = None,
    variance: float | None = None,
    sigmas: float = 5.0,
    margin: float = 1.0,
    holdout: float = 0.2,
    max_gap: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """``edgegw model fit``: pick the device and features, fit, judge the calibration (a broken
    one raises ``FitError`` unless ``force``), save; returns a summary whose ``calibration``
    block carries the quality and, when not ok, the ``message`` to show."""
    if not sources:
        raise FitError("no data: pass --csv FILE and/or --outbox STATE_DIR")
    if not samples:
        raise FitError(f"no samples in {', '.join(sources)}")
    devices = sorted({s.device for s in samples})
    if device is None:
        if len(devices) != 1:
            raise FitError(f"the data holds several devices ({', '.join(devices)}): pass --device")
        device = devices[0]
    elif device not in devices:
        raise FitError(f"no samples of device {device!r} (found: {', '.join(devices)})")
    seen = sorted({s.metric for s in samples if s.device == device and is_number(s.value)})
    if metrics:
        features = [m.strip() for m in metrics.split(",") if m.strip()]
        missing = [m for m in features if m not in seen]
        if missing:
            raise FitError(
                f"device {device!r} has no numeric metric(s) {missing} (found: {', '.join(seen)})"
            )
    else:
        features = seen
    if not features:
        raise FitError(f"device {device!r} has no numeric metrics")
    if max_gap is not None:
        max_gap_ms: int | None = int(parse_duration(max_gap) * 1000)
    else:
        max_gap_ms = median_gap_limit(samples, device, features)
    segments = segments_from_samples(samples, device, features, max_gap_ms=max_gap_ms)
    result = fit_pca_autoencoder(
        segments,
        features,
        window,
        components=components,
        variance=variance,
        sigmas=sigmas,
        margin=margin,
        holdout=holdout,
        source=", ".join(sources),
        max_gap_ms=max_gap_ms,
    )
    quality, message = calibration_quality(result.spec.calibration)
    if quality == "broken" and not force:
        raise FitError(f"{message} (nothing written; --force writes it anyway)")
    spec_path = result.save(out)
    cal = result.spec.calibration
    return {
        "model": str(out),
        "spec": str(spec_path),
        "bytes": len(result.model),
        "device": device,
        "features": features,
        "window": window,
        "components": result.components,
        "explained_variance": round(result.explained_variance, 4),
        "threshold": result.spec.threshold,
        "train_windows": result.train_windows,
        "holdout_windows": result.holdout_windows,
        "rows": sum(len(ts) for ts, _ in segments),
        "segments": len(segments),
        "max_gap_ms": max_gap_ms,
        "fit_seconds": round(result.seconds, 3),
        "calibration": {
            "quality": quality,
            "holdout_to_train_ratio": round(cal["holdout_to_train_ratio"], 3),
            "holdout_over_threshold": round(cal["holdout_over_threshold"], 4),
            "holdout_score_p50": round(cal["holdout_score_p50"], 4),
            "train_score_p50": round(cal["train_score_p50"], 4),
            **({"message": message} if message else {}),
        },
    }
