"""Rules stage on a controllable clock: exact `for:` timing, hysteresis, one alert per episode,
write actions, unknown values. No mocks: the stage is driven with real Sample streams."""

from __future__ import annotations

import random

import pytest

from edgegw.edge.config import RuleConfig
from edgegw.edge.rules import RuleStage, RuleState
from edgegw.edge.stage import WriteRequest
from edgegw.model import Alert, Quality, Sample


def s(
    metric: str, value: object, t_s: float, device: str = "boiler1", q: Quality = Quality.GOOD
) -> Sample:
    return Sample(device, metric, int(t_s * 1000), value, q)  # type: ignore[arg-type]


def rule(**kw: object) -> RuleConfig:
    base: dict[str, object] = {"name": "overheat", "device": "boiler1", "when": "temp > 80"}
    base.update(kw)
    return RuleConfig.model_validate(base)


def feed(stage: RuleStage, samples: list[Sample]) -> tuple[list[Alert], list[WriteRequest]]:
    alerts: list[Alert] = []
    writes: list[WriteRequest] = []
    for x in samples:
        out, a, w = stage.process([x], x.ts_ms)
        assert out == [x]  # samples pass through unchanged
        alerts += a
        writes += w
    return alerts, writes


def test_fires_after_exactly_for_on_samples() -> None:
    stage = RuleStage([rule(**{"for": "10s"})])
    alerts, _ = feed(stage, [s("temp", 85.0, t) for t in range(10)])
    assert alerts == []
    assert stage.state_of("overheat") is RuleState.PENDING
    alerts, _ = feed(stage, [s("temp", 85.0, 10)])
    assert [(a.active, a.ts_ms) for a in alerts] == [(True, 10_000)]
    assert alerts[0].metric == "temp" and alerts[0].value == 85.0


def test_fires_on_tick_without_new_samples() -> None:
    stage = RuleStage([rule(**{"for": "10s"})])
    feed(stage, [s("temp", 90.0, 100)])
    assert stage.tick(109_999)[1] == []
    alerts = stage.tick(110_000)[1]
    assert [(a.active, a.ts_ms) for a in alerts] == [(True, 110_000)]
    assert stage.tick(200_000)[1] == []  # no repeat while active


def test_interruption_restarts_the_for_timer() -> None:
    stage = RuleStage([rule(**{"for": "10s"})])
    values = [85.0] * 6 + [70.0] + [85.0] * 11  # t=0..5 true, t=6 false, t=7.. true
    alerts, _ = feed(stage, [s("temp", v, t) for t, v in enumerate(values)])
    assert [(a.active, a.ts_ms) for a in alerts] == [(True, 17_000)]


def test_hysteresis_and_clear_for() -> None:
    stage = RuleStage([rule(clear="temp < 75", clear_for="3s")])
    seq = [85, 78, 79, 82, 74, 74, 76, 74, 74, 74, 74, 90]
    alerts, _ = feed(stage, [s("temp", float(v), t) for t, v in enumerate(seq)])
    # raised at t=0; 78/79/82 between the thresholds keep it active; 74 at t=4,5 then 76 resets
    # the clear timer; 74 from t=7 holds 3 s -> cleared at t=10; 90 at t=11 raises again
    assert [(a.active, a.ts_ms) for a in alerts] == [(True, 0), (False, 10_000), (True, 11_000)]


def test_one_alert_per_episode_on_a_random_stream() -> None:
    rng = random.Random(7)
    stage = RuleStage([rule(clear="temp < 78", **{"for": "2s"})])
    temp = 70.0
    samples = []
    for t in range(5000):
        temp = min(100.0, max(50.0, temp + rng.uniform(-2, 2)))
        samples.append(s("temp", temp, t))
    alerts, _ = feed(stage, samples)
    assert len(alerts) >= 4  # the walk crosses the thresholds several times
    assert [a.active for a in alerts] == [i % 2 == 0 for i in range(len(alerts))]
    # each raise happened after >= 2 s of temp > 80 ending at it; each clear at a temp < 78
    by_ts = {x.ts_ms: x.value for x in samples}
    for a in alerts:
        if a.active:
            assert all(by_ts[a.ts_ms - k * 1000] > 80 for k in range(3))  # type: ignore[operator]
        else:
            assert by_ts[a.ts_ms] < 78  # type: ignore[operator]


def test_missing_data_never_clears_and_breaks_pending() -> None:
    stage = RuleStage([rule(**{"for": "5s"})])
    feed(stage, [s("temp", 90.0, t) for t in range(3)])
    feed(stage, [s("temp", None, 3, q=Quality.COMM_ERROR)])
    assert stage.state_of("overheat") is RuleState.IDLE  # "for" means continuously
    alerts, _ = feed(stage, [s("temp", 90.0, t) for t in range(4, 10)])
    assert [(a.active, a.ts_ms) for a in alerts] == [(True, 9_000)]
    alerts, _ = feed(stage, [s("temp", None, 10, q=Quality.COMM_ERROR)])
    assert alerts == [] and stage.state_of("overheat") is RuleState.ACTIVE
    assert stage.tick(60_000)[1] == []
    alerts, _ = feed(stage, [s("temp", 60.0, 61)])
    assert [(a.active, a.ts_ms) for a in alerts] == [(False, 61_000)]


def test_a_poll_is_applied_as_a_whole() -> None:
    stage = RuleStage([rule(when="a > b")])
    poll1 = [s("a", 1.0, 1), s("b", 2.0, 1)]
    poll2 = [s("a", 3.0, 2), s("b", 4.0, 2)]  # a=3 with the old b=2 would be true
    _, alerts, _ = stage.process(poll1 + poll2, 2_000)
    assert alerts == []
    _, alerts, _ = stage.process([s("a", 5.0, 3), s("b", 4.0, 3)], 3_000)
    assert [a.active for a in alerts] == [True]


def test_write_action_with_rate_limit() -> None:
    stage = RuleStage(
        [
            rule(
                clear="temp < 75",
                actions=[
                    {"type": "alert"},
                    {
                        "type": "write",
                        "device": "pump1",
                        "point": "run",
                        "value": 0,
                        "min_interval": "60s",
                    },
                    {"type": "write", "point": "fan", "value": True, "edge": "clear"},
                ],
            )
        ]
    )
    alerts, writes = feed(stage, [s("temp", 85.0, 0)])
    assert writes == [
        WriteRequest(device="pump1", point="run", value=0, reason="rule overheat raised")
    ]
    assert len(alerts) == 1
    alerts, writes = feed(stage, [s("temp", 70.0, 10)])
    assert writes == [
        WriteRequest(device="boiler1", point="fan", value=True, reason="rule overheat cleared")
    ]
    _, writes = feed(stage, [s("temp", 85.0, 20)])  # 20 s after the last write: suppressed
    assert writes == []
    feed(stage, [s("temp", 70.0, 30)])
    _, writes = feed(stage, [s("temp", 85.0, 61)])  # 61 s after: allowed again
    assert [w.point for w in writes] == ["run"]
    assert stage.stats()["writes_suppressed"] == 1


def test_write_only_rule_emits_no_alert_and_log_action(caplog: pytest.LogCaptureFixture) -> None:
    stage = RuleStage(
        [
            rule(
                actions=[
                    {"type": "log", "level": "error"},
                    {"type": "write", "point": "valve", "value": 1},
                ]
            )
        ]
    )
    with caplog.at_level("ERROR", logger="edgegw.edge.rules"):
        alerts, writes = feed(stage, [s("temp", 99.0, 0)])
    assert alerts == [] and [w.point for w in writes] == ["valve"]
    assert "overheat" in caplog.text and "temp=99.0" in caplog.text


def test_message_template_and_dotted_metrics() -> None:
    stage = RuleStage(
        [
            rule(
                when='anomaly.score > 2 and metric("flow-rate") < 10',
                message="{device}: score {anomaly.score:.1f}, flow {flow-rate}, {missing}",
                severity="critical",
            )
        ]
    )
    _, alerts, _ = stage.process([s("anomaly.score", 3.25, 1), s("flow-rate", 4, 1)], 1_000)
    assert len(alerts) == 1
    assert alerts[0].message == "boiler1: score 3.2, flow 4, ?"
    assert alerts[0].severity.name == "CRITICAL"


def test_window_functions_in_rules() -> None:
    stage = RuleStage(
        [rule(when='avg(temp, "5s") > 80 and delta(temp, "5s") > 0 and prev(temp) < temp')]
    )
    # rising temperature: the 5 s average passes 80 only once enough high values are inside
    temps = [70, 75, 80, 85, 90, 95]
    alerts, _ = feed(stage, [s("temp", float(v), t) for t, v in enumerate(temps)])
    # window at t=5 holds t=1..5 (t > now - 5s): mean(75..95)=85 > 80; at t=4: mean(70..90)=80
    assert [(a.active, a.ts_ms) for a in alerts] == [(True, 5_000)]


def test_runtime_errors_count_as_unknown() -> None:
    stage = RuleStage([rule(when="temp / zero > 1 or 2 ** temp > 1")])
    alerts, _ = feed(stage, [s("zero", 0.0, 0), s("temp", 1000.0, 0)])
    assert alerts == []
    assert stage.stats()["eval_errors"] == 1


def test_other_devices_pass_untouched() -> None:
    stage = RuleStage([rule()])
    samples = [s("temp", 99.0, 0, device="other")]
    out, alerts, writes = stage.process(samples, 0)
    assert out is samples and alerts == [] and writes == []
