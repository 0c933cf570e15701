"""`edgegw model fit` from a CSV export: files written, model usable, bad input -> exit 2 with
a message naming the problem."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegw.commands import model as model_cmd
from edgegw.edge import fit, litert
from edgegw.model import Quality
from tests.edge import synth


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgegw model")
    model_cmd.add_arguments(parser)
    return parser.parse_args(["fit", *argv])


def write_csv(
    path: Path,
    rows: np.ndarray,
    *,
    device: str = "pump1",
    quality_at: int | None = None,
    extra_device: bool = False,
) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts_ms", "device", "metric", "value", "quality"])
        for s in synth.to_samples(rows, device):
            bad = (
                quality_at is not None
                and s.ts_ms == synth.to_samples(rows[:1])[0].ts_ms + quality_at * 1000
            )
            w.writerow(
                [
                    s.ts_ms,
                    s.device,
                    s.metric,
                    "" if bad else repr(s.value),
                    "comm_error" if bad else "good",
                ]
            )
            if extra_device:
                w.writerow([s.ts_ms, "other", s.metric, 1.0, "good"])


def test_fit_from_csv_writes_a_working_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "normal.csv"
    write_csv(data, synth.normal_rows(1500, seed=21), quality_at=700, extra_device=True)
    out = tmp_path / "m" / "pump.tflite"
    rc = model_cmd.run(
        parse(
            "--csv",
            str(data),
            "--device",
            "pump1",
            "--metrics",
            "flow,pressure,power,temp",
            "--window",
            "8",
            "--out",
            str(out),
        )
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["segments"] == 2  # the comm_error row splits the data
    assert summary["rows"] == 1499
    assert out.stat().st_size == summary["bytes"] < 16_000
    spec = litert.ModelSpec.load(out.with_suffix(".json"))
    assert spec.window == 8 and spec.features == ["flow", "pressure", "power", "temp"]
    assert spec.threshold == summary["threshold"] > 1.0
    model = litert.TFLiteModel(out, spec)
    windows = fit.make_windows(synth.normal_rows(300, seed=22), 8)
    scores = np.array([model.score(w.astype(np.float32)) for w in windows])
    assert np.mean(scores > spec.threshold) < 0.01
    spiked = windows[100].copy()
    spiked[5] += 5.0  # flow of one row
    assert model.score(spiked.astype(np.float32)) > spec.threshold


def test_default_features_and_components(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "normal.csv"
    write_csv(data, synth.normal_rows(800, seed=5))
    rc = model_cmd.run(
        parse(
            "--csv",
            str(data),
            "--window",
            "4",
            "--components",
            "3",
            "--out",
            str(tmp_path / "m.tflite"),
        )
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] == sorted(synth.FEATURES)
    assert summary["components"] == 3


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("ts_ms,device,metric,value\n1x,d,a,1\n", (), "normal.csv:2: cannot read"),
        ("ts_ms,device,metric,value\n1,d,a,notanumber\n", (), "has no numeric metrics"),
        ("ts,dev,m,v\n", (), "header must name ts_ms, device, metric and value"),
        ("ts_ms,device,metric,value\n", (), "no samples"),
        ("1,d,a,1\n2,d,a,2\n", ("--metrics", "b"), "no numeric metric(s) ['b']"),
        ("1,d,a,1\n1,e,a,1\n", (), "several devices (d, e): pass --device"),
        ("".join(f"{t},d,a,{t % 7}\n" for t in range(30)), ("--window", "16"), "only 15 windows"),
        ("".join(f"{t},d,a,3\n" for t in range(300)), ("--window", "4"), "constant"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    args: tuple[str, ...],
    message: str,
) -> None:
    data = tmp_path / "normal.csv"
    data.write_text(content)
    rc = model_cmd.run(parse("--csv", str(data), *args, "--out", str(tmp_path / "m.tflite")))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("edgegw model fit: error: ")
    assert message in err
    assert not (tmp_path / "m.tflite").exists()


def test_no_data_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert model_cmd.run(parse("--out", str(tmp_path / "m.tflite"))) == 2
    assert "pass --csv FILE and/or --outbox STATE_DIR" in capsys.readouterr().err


def test_csv_quality_column_is_honoured(tmp_path: Path) -> None:
    data = tmp_path / "q.csv"
    data.write_text(
        "ts_ms,device,metric,value,quality\n1,d,a,1.5,good\n2,d,a,,comm_error\n3,d,a,2,4\n"
    )
    samples = fit.read_csv_samples(data)
    assert [(s.value, s.quality) for s in samples] == [
        (1.5, Quality.GOOD),
        (None, Quality.COMM_ERROR),
        (2.0, Quality.BAD_DATA),
    ]


def test_inspect_shows_spec_and_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="edgegw model")
    model_cmd.add_arguments(parser)
    model = Path(__file__).resolve().parents[2] / "examples" / "models" / "pump.tflite"
    assert model_cmd.run(parser.parse_args(["inspect", str(model)])) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_shape"] == [1, 64] and info["output_shape"] == [1, 64]
    assert info["features"] == list(synth.FEATURES) and info["runtime"] == "ai-edge-litert"


def _cloud_export(path: Path, rows: np.ndarray) -> None:
    """The layout of `edgegw-cloud query --format csv`, with bool and text metrics mixed in."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["gateway", "device", "metric", "ts_ms", "time", "value", "quality"])
        for s in synth.to_samples(rows):
            w.writerow(
                ["gw1", s.device, s.metric, s.ts_ms, "2023-11-14T22:13:20Z", s.value, "good"]
            )
            if s.metric == "temp":
                w.writerow(["gw1", s.device, "running", s.ts_ms, "", True, "good"])
                w.writerow(["gw1", s.device, "mode", s.ts_ms, "", "auto", "good"])
                w.writerow(["gw1", s.device, "snap", s.ts_ms, "", '{"blob_sha256": "ab"}', "good"])


def test_fit_on_cloud_export_with_mixed_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "export.csv"
    _cloud_export(data, synth.normal_rows(1200, seed=4))
    out = tmp_path / "m.tflite"
    assert model_cmd.run(parse("--csv", str(data), "--window", "8", "--out", str(out))) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] == sorted(synth.FEATURES)  # bool/text metrics are not features
    assert summary["calibration"]["quality"] == "ok"
    rc = model_cmd.run(
        parse("--csv", str(data), "--metrics", "flow,running", "--window", "8", "--out", str(out))
    )
    assert rc == 2
    assert "no numeric metric(s) ['running']" in capsys.readouterr().err


def test_large_offset_small_variance_is_not_constant(tmp_path: Path) -> None:
    rows = synth.normal_rows(1500, seed=8)
    rows[:, 0] = 1e9 + rows[:, 0] - rows[:, 0].mean()  # 1e9 +- a few units
    result = fit.fit_pca_autoencoder([(list(range(len(rows))), rows)], list(synth.FEATURES), 8)
    assert result.spec.input_offset is not None
    assert abs(result.spec.input_offset[0] - 1e9) < 10
    path = tmp_path / "m.tflite"
    result.save(path)
    model = litert.TFLiteModel(path, result.spec)
    windows = fit.make_windows(rows[-300:], 8)
    scores = np.array([model.score(w) for w in windows])
    assert np.median(scores) == pytest.approx(1.0, rel=0.5)  # the variation survived float32
    spiked = windows[100].copy()
    spiked[0] += 5.0  # flow of the first row, 5 units on top of 1e9
    assert model.score(spiked) > 10 * np.median(scores)


def test_broken_calibration_is_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = synth.normal_rows(1500, seed=9)
    rng = np.random.default_rng(1)
    rows[1200:] += rng.normal(0, 3.0, size=(300, 4))  # the held-out part is a different regime
    data = tmp_path / "normal.csv"
    write_csv(data, rows)
    out = tmp_path / "m.tflite"
    assert model_cmd.run(parse("--csv", str(data), "--window", "8", "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert "calibration is broken" in err and "not one normal regime" in err
    assert "--force" in err and not out.exists()
    assert (
        model_cmd.run(parse("--csv", str(data), "--window", "8", "--out", str(out), "--force")) == 0
    )
    captured = capsys.readouterr()
    assert "warning: calibration is broken" in captured.err
    assert json.loads(captured.out)["calibration"]["quality"] == "broken"


def test_model_load_prints_nothing_on_stderr() -> None:
    model = Path(__file__).resolve().parents[2] / "examples" / "models" / "pump.tflite"
    code = (
        "from pathlib import Path\n"
        "from edgegw.edge import litert\n"
        f"p = Path({str(model)!r})\n"
        "m = litert.TFLiteModel(p, litert.ModelSpec.load(p.with_suffix('.json')))\n"
        "import numpy as np\n"
        "print(m.score(np.zeros(64, dtype=np.float32)) >= 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert proc.stderr == ""


def test_eval_prints_detection_rate_false_alerts_and_delay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # synthetic labelled stream (the bench uses real ones): a stuck sensor and a level shift
    rows = synth.normal_rows(3000, seed=12)
    labels = np.zeros(3000, dtype=int)
    rows[1500:1600, 0] = rows[1499, 0]
    labels[1500:1600] = 1
    rows[2400:2600, 1] += 1.0
    labels[2400:2600] = 1
    path = tmp_path / "labelled.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *synth.FEATURES, "anomaly"])
        for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
            w.writerow(
                [
                    f"2024-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}".replace(
                        "00:", f"{i // 3600:02d}:", 1
                    ),
                    *r,
                    lab,
                ]
            )
    parser = argparse.ArgumentParser(prog="edgegw model")
    model_cmd.add_arguments(parser)
    assert model_cmd.run(parser.parse_args(["eval", str(path)])) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labelled_anomalies"] == 2
    assert summary["detected"] == 2 and summary["detection_rate"] == 1.0
    assert summary["false_alerts"] == 0 and summary["false_alerts_per_day"] == 0.0
    assert 0 <= summary["delay_s_median"] <= 30
    assert summary["standard_score"] > 80
    # a fixed model with its own threshold, fitted on normal data of the same pump
    model = tmp_path / "m.tflite"
    fit.fit_pca_autoencoder(
        [(list(range(2000)), synth.normal_rows(2000, seed=13))], list(synth.FEATURES), 16
    ).save(model)
    args = parser.parse_args(["eval", str(path), "--model", str(model), "--static"])
    assert model_cmd.run(args) == 0
    static = json.loads(capsys.readouterr().out)
    assert static["detector"] == "static" and static["labelled_anomalies"] == 2
    assert static["detected"] >= 1
