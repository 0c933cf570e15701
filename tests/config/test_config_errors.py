"""Each kind of config mistake is reported once, at the exact file:line:col and dotted path."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cfgtest_helpers import FIXTURES, locate, problems

BAD = FIXTURES / "bad"
ID_HINT = (
    "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
    "(ids become MQTT topic levels)"
)


@dataclass(frozen=True)
class Case:
    fixture: str
    needle: str  # where the issue must point (text search in `at`)
    path: str
    message: str
    hint: str | None = None
    occurrence: int = 1
    at: str | None = None  # file the issue must name, when not the fixture itself


CASES = [
    Case("wrong_type.yaml", "lots", "uplink.window", "expected a whole number, got 'lots'"),
    Case("unknown_key.yaml", "pol:", "devices.0.pol", "unknown key 'pol'", "did you mean 'poll'?"),
    Case(
        "unknown_section.yaml",
        "devcies",
        "devcies",
        "unknown key 'devcies'",
        "did you mean 'devices'?",
    ),
    # a missing key points at the mapping that lacks it
    Case("missing_key.yaml", "id: pump2", "devices.1.driver", "missing required key 'driver'"),
    Case("missing_gateway.yaml", "devices", "gateway", "missing required key 'gateway'"),
    Case(
        "unknown_bus.yaml", "line2", "devices.0.bus", "unknown bus 'line2'", "did you mean 'line1'?"
    ),
    Case(
        "unknown_rule_device.yaml",
        "pmup1",
        "rules.0.device",
        "unknown device 'pmup1'",
        "did you mean 'pump1'?",
    ),
    Case(
        "duplicate_id.yaml",
        "pump1",
        "devices.2.id",
        "duplicate device id 'pump1' (first defined at line 4)",
        "device ids must be unique within a gateway",
        occurrence=2,
    ),
    Case(
        "bad_register_type.yaml",
        "holdnig",
        "devices.0.options.points.1.kind",
        "expected one of 'holding', 'input', 'coil' or 'discrete', got 'holdnig'",
        "did you mean 'holding'?",
    ),
    Case(
        "unknown_driver.yaml",
        "dmeo",
        "devices.0.driver",
        "unknown driver 'dmeo'",
        "did you mean 'demo'?",
    ),
    Case(
        "bad_duration.yaml",
        "5 sex",
        "devices.0.poll",
        "bad duration '5 sex' (use e.g. 500ms, 10s, 5m)",
    ),
    Case(
        "bad_bytes.yaml",
        "64 MegaBytes",
        "outbox.max_bytes",
        "bad byte size '64 MegaBytes' (use e.g. 4096, 256KiB, 64MiB, 10MB)",
    ),
    Case(
        "bad_id.yaml", '"pump/1"', "devices.0.id", "invalid id 'pump/1' (it contains '/')", ID_HINT
    ),
    Case(
        "bad_gateway_id.yaml",
        '"site#1"',
        "gateway.id",
        "invalid id 'site#1' (it contains '#')",
        ID_HINT,
    ),
    Case(
        "unset_env.yaml",
        "${CFGTEST_UNSET_HOST}",
        "devices.0.options.host",
        "environment variable CFGTEST_UNSET_HOST is not set",
        "set CFGTEST_UNSET_HOST or give a default: ${CFGTEST_UNSET_HOST:-value}",
    ),
    Case(
        "duplicate_yaml_key.yaml",
        "max_readings",
        "batch.max_readings",
        "duplicate key 'max_readings' (first defined at line 4)",
        "YAML keeps only one of them: remove or rename one",
        occurrence=2,
    ),
    Case(
        "when_full_typo.yaml",
        "drop_oldest_telemetri",
        "outbox.when_full",
        "expected one of 'drop_oldest_telemetry', 'drop_oldest' or 'reject_new', "
        "got 'drop_oldest_telemetri'",
        "did you mean 'drop_oldest_telemetry'?",
    ),
    Case(
        "cycle/main.yaml",
        "../a.yaml",
        "include",
        "include cycle: a.yaml -> b.yaml -> a.yaml",
        "remove one of these includes",
        at="cycle/sub/b.yaml",
    ),
    Case(
        "included_error/main.yaml",
        "forever",
        "devices.1.timeout",
        "bad duration 'forever' (use e.g. 500ms, 10s, 5m)",
        at="included_error/devices.yaml",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.fixture for c in CASES])
def test_mistake_is_located(case: Case) -> None:
    issues = [i for i in problems(BAD / case.fixture) if i.severity == "error"]
    assert len(issues) == 1, "\n".join(map(str, issues))
    issue = issues[0]
    expected_file = BAD / (case.at or case.fixture)
    line, col = locate(expected_file, case.needle, case.occurrence)
    assert (issue.file, issue.line, issue.col) == (str(expected_file), line, col)
    assert issue.path == case.path
    assert issue.message == case.message
    assert issue.hint == case.hint
    assert issue.severity == "error"
    suffix = f" (hint: {case.hint})" if case.hint else ""
    assert str(issue) == f"{expected_file}:{line}:{col}: {case.path}: {case.message}{suffix}"


def test_yaml_syntax_error_is_located() -> None:
    path = BAD / "syntax_error.yaml"
    issues = problems(path)
    assert len(issues) == 1
    issue = issues[0]
    # the flow sequence opened on line 6 is never closed: the parser gives up at the end (7:1)
    assert (issue.file, issue.line, issue.col) == (str(path), 7, 1)
    assert issue.message.startswith("YAML syntax error: ")
    assert issue.hint is not None and "started at line" in issue.hint


def test_all_mistakes_of_a_file_are_reported_together(tmp_path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "gateway:\n"
        "  id: gw1\n"
        "  log_levl: info\n"
        "devices:\n"
        "  - id: d1\n"
        "    driver: demo\n"
        "    poll: soon\n"
        "    timeout: -1\n"
        "batch:\n"
        "  max_readings: 0\n",
        encoding="utf-8",
    )
    issues = problems(path)
    got = [(i.line, i.col, i.path) for i in issues]
    assert got == [
        (3, 3, "gateway.log_levl"),
        (7, 11, "devices.0.poll"),
        (8, 14, "devices.0.timeout"),
        (10, 17, "batch.max_readings"),
    ]
    assert issues[3].message == "must be greater than 0, got 0"
