"""The windowed scorer: null detector 0, perfect 100, early beats late, false alarms cost."""

from __future__ import annotations

import pytest

from edgegw.edge import scoring

N = 2000
LABELS = [1 if 1000 <= i < 1010 or 1500 <= i < 1510 else 0 for i in range(N)]


def score(detections: list[int], profile: str = "standard") -> float:
    runs = scoring.label_runs(LABELS)
    wins = scoring.anomaly_windows(runs, N)
    result = scoring.normalised([scoring.score_stream(detections, wins, N, profile)])
    assert result is not None
    return result


def test_windows_are_ten_percent_of_the_stream_shared_by_the_anomalies() -> None:
    wins = scoring.anomaly_windows(scoring.label_runs(LABELS), N)
    assert wins == [(955, 1054), (1455, 1554)]  # 100 rows each, centred on the labels


def test_null_and_perfect() -> None:
    assert score([]) == 0.0
    assert score([955, 1455]) == pytest.approx(100.0)


def test_earlier_is_better_and_only_the_first_detection_counts() -> None:
    early, late = score([960, 1460]), score([1050, 1550])
    assert 100 > early > late > 0
    assert score([960, 961, 1000, 1460]) == early


def test_false_alarms_cost_more_far_from_a_window_and_per_profile() -> None:
    base = score([955, 1455])
    assert score([955, 1455, 500]) < base  # before the first window: full cost
    near, far = score([955, 1455, 1060]), score([955, 1455, 1400])
    assert near > far
    # rows in probation (first 15 %) are never judged
    assert score([955, 1455, 100]) == base
    low_fp = score([955, 1455, 500], "reward_low_fp")
    assert low_fp < score([955, 1455, 500])


def test_missed_windows_cost_double_for_low_fn() -> None:
    wins = scoring.anomaly_windows(scoring.label_runs(LABELS), N)
    std = scoring.score_stream([955], wins, N, "standard")
    low_fn = scoring.score_stream([955], wins, N, "reward_low_fn")
    assert std.raw - low_fn.raw == pytest.approx(1.0)  # one miss: -1 vs -2
    # and a false alarm weighs less against a miss than in the standard profile
    assert score([955, 1455, 500], "reward_low_fn") > score([955, 1455, 500])


def test_event_metrics() -> None:
    ts = [i * 1000 for i in range(N)]
    ev = scoring.event_metrics([1004, 1700], scoring.label_runs(LABELS), ts)
    assert (ev.windows, ev.detected, ev.false_alerts) == (2, 1, 1)
    assert ev.delays_s == [4.0]
