"""`edgegw model fit` from a CSV export: files written, model usable, bad input -> exit 2 with
a message naming the problem."""

from __future__ import annotations

import argparse
import csv
import json
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
        ("ts_ms,device,metric,value\n1,d,a,notanumber\n", (), "normal.csv:2: cannot read"),
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
