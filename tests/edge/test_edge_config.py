"""`validate_edge`: every edge config problem is reported at the right dotted path with an
actionable hint, through the real config loader and `check_config`."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgegw.config import check_config, drivers_from_registry, load_config
from edgegw.edge import build_stages, litert
from edgegw.edge.config import AggregateConfig, AnomalyConfig, RuleConfig, validate_edge
from edgegw.sdk import DriverOptions, PolledDriver, ReadResult, discover_drivers

REPO = Path(__file__).resolve().parents[2]


class PointsOptions(DriverOptions):
    points: list[str] = []


class PointsDriver(PolledDriver):
    """A real (tiny) driver whose metric names come from its options."""

    Options = PointsOptions

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, PointsOptions)
        return options.points

    async def read(self) -> ReadResult:
        return {}


def write_config(tmp_path: Path, edge: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    for name in ("pump.tflite", "pump.json"):
        shutil.copy(REPO / "examples" / "models" / name, tmp_path / "models" / name)
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway: {id: gw1}\n"
        "devices:\n"
        "  - id: boiler1\n    driver: pts\n    options: {points: [temp, pressure, pump_on]}\n"
        "  - id: pump1\n    driver: pts\n    options: {points: [flow, pressure, power, temp]}\n"
        "  - id: blackbox\n    driver: pts\n" + edge
    )
    return path


def issues_of(path: Path) -> list[tuple[str, str, str | None]]:
    cfg = load_config(path)
    return [
        (i.path, i.message, i.hint)
        for i in check_config(cfg, {"pts": PointsDriver})
        if i.severity == "error"
    ]


def test_metric_typo_is_located_with_did_you_mean(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
rules:
  - {name: ok, device: boiler1, when: "temp > 90", for: 10s, clear: "temp < 85"}
  - name: typo
    device: boiler1
    when: "avg(tmep, '5m') > 90 and pressure > 2"
""",
    )
    found = issues_of(path)
    assert len(found) == 1
    where, message, hint = found[0]
    assert where == "rules.1.when"
    assert "unknown metric 'tmep'" in message
    assert hint == "did you mean 'temp'?"
    cfg = load_config(path)
    issue = next(i for i in check_config(cfg, {"pts": PointsDriver}) if i.severity == "error")
    lines = path.read_text().splitlines()
    assert "avg(tmep" in lines[issue.line - 1]  # points at the `when:` line of the second rule


def test_every_kind_of_edge_issue(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
rules:
  - {name: r0, device: boilr1, when: "temp > 1"}
  - {name: r1, device: boiler1, when: "temp >"}
  - {name: r2, device: boiler1, when: "avg(temp, '5 min') > 1"}
  - {name: r3, device: boiler1, when: "temp > 1", clear: "temperature < 1"}
  - name: r4
    device: boiler1
    when: "temp > 1"
    actions: [{type: write, device: pmp1, point: run, value: 0}]
  - {name: r5, device: blackbox, when: "anything > 1 and anomaly.score > 2"}
  - {name: r6, device: pump1, when: "anomaly.score > 2"}
anomaly:
  - {name: a0, device: pump1, metrics: [flow, pressure, power, temp], model: models/missing.tflite}
  - {name: a1, device: pump1, metrics: [flow, pressure, power, temp], model: models/pump.tflite,
     window: 8, score_metric: s1}
  - {name: a2, device: pump1, metrics: [flow, presure], kind: zscore, score_metric: s2}
""",
    )
    found = {(w, m.split(" (")[0][:60]): h for w, m, h in issues_of(path)}
    paths = sorted(w for w, _ in found)
    assert paths == sorted(
        [
            "rules.0.device",
            "rules.1.when",
            "rules.2.when",
            "rules.3.clear",
            "rules.4.actions.0.device",
            "anomaly.0.model",
            "anomaly.1.window",
            "anomaly.2.metrics.1",
        ]
    )
    hints = {w: h for (w, _), h in found.items()}
    assert hints["rules.0.device"] == "did you mean 'boiler1'?"
    assert hints["rules.3.clear"] == "boiler1 has: pressure, pump_on, temp"
    assert hints["rules.4.actions.0.device"] == "did you mean 'pump1'?"
    assert hints["anomaly.2.metrics.1"] == "did you mean 'pressure'?"
    assert "edgegw model fit" in (hints["anomaly.0.model"] or "")
    assert "use e.g. 500ms" in (hints["rules.2.when"] or "")


def test_missing_runtime_is_a_check_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Mock: the ML runtime cannot be uninstalled from the test venv; make its import fail the
    # way it does on a gateway installed without the `ml` extra.
    def missing() -> tuple[Any, str]:
        raise litert.RuntimeMissingError("no TFLite runtime is installed (test)")

    monkeypatch.setattr(litert, "load_interpreter_class", missing)
    path = write_config(
        tmp_path,
        """
anomaly:
  - {name: a0, device: pump1, metrics: [flow, pressure, power, temp], model: models/pump.tflite}
  - {name: a1, device: pump1, metrics: [flow, pressure, power, temp], model: models/pump.tflite,
     fallback: zscore, score_metric: s1}
""",
    )
    found = issues_of(path)
    assert [(w, h) for w, _, h in found] == [
        ("anomaly.0.kind", "pip install 'edgegw[ml]' (ai-edge-litert), or set fallback: zscore")
    ]


def test_model_shape_mismatch(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
anomaly:
  - {name: a0, device: pump1, metrics: [flow, pressure, power, temp], model: models/pump.tflite}
""",
    )
    spec_path = tmp_path / "models" / "pump.json"
    spec = litert.ModelSpec.load(spec_path)
    spec.window = 8  # the model was built for 16 rows
    spec.save(spec_path)
    found = issues_of(path)
    assert len(found) == 1
    where, message, _ = found[0]
    assert where == "anomaly.0.model"
    assert "does not match window 8 x 4 features" in message


def test_aggregate_override_of_unknown_metric(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, ""))
    cfg.devices[0].aggregate = AggregateConfig.model_validate(
        {
            "window": "1m",
            "functions": ["min", "max"],
            "name": "{metric}",
            "metrics": {"presure": {"raw": True}},
        }
    )
    found = validate_edge(cfg, {"boiler1": {"temp", "pressure"}})
    assert [(w, h) for w, _, h in found] == [
        ("devices.0.aggregate.metrics.presure", "did you mean 'pressure'?"),
        ("devices.0.aggregate.name", "include {fn}, e.g. '{metric}.{fn}'"),
    ]


@pytest.mark.parametrize(
    ("model", "data", "fragment"),
    [
        (RuleConfig, {"name": "r", "device": "d", "when": "x", "for": "5 sec"}, "bad duration"),
        (
            RuleConfig,
            {"name": "r", "device": "d", "when": "x", "actions": [{"type": "mail"}]},
            "mail",
        ),
        (RuleConfig, {"name": "r", "device": "d", "when": "x", "severity": "fatal"}, "critical"),
        (AggregateConfig, {"window": "0s"}, "longer than 0"),
        (AggregateConfig, {"functions": ["median"]}, "stddev"),
        (AggregateConfig, {"name": "{metric}.{func}"}, "only use {metric} and {fn}"),
        (AggregateConfig, {"windw": "1m"}, "Extra inputs are not permitted"),
        (AnomalyConfig, {"name": "a", "device": "d", "metrics": ["x"]}, "kind: model needs"),
    ],
)
def test_model_validation_errors(model: type[Any], data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    assert fragment in str(err.value)


def test_example_config_checks_clean_and_builds_stages() -> None:
    path = REPO / "examples" / "edge.yaml"
    cfg = load_config(path)
    ok, broken = drivers_from_registry(discover_drivers())  # the real modbus driver's options
    issues = check_config(cfg, ok, unavailable=broken)
    assert [str(i) for i in issues if i.severity == "error"] == []
    stages = build_stages(cfg)
    assert [s.name for s in stages] == ["anomaly", "rules", "aggregate"]
    assert stages[0].detectors == ["pump-ae:online", "boiler-temp:zscore"]
