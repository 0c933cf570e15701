"""Includes, environment substitution, YAML features and the semantic phase on valid input."""

from __future__ import annotations

from pathlib import Path

import pytest
from cfgtest_drivers import DRIVERS, DemoOptions
from cfgtest_helpers import FIXTURES, locate, problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.config import (
    ConfigError,
    check_config,
    load_and_check,
    load_config,
)
from edgegw.yamlsrc import load_yaml

GOOD = FIXTURES / "good" / "main.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_includes_merge_in_order_and_the_including_file_wins() -> None:
    cfg = load_config(str(GOOD), env={})
    # lists concatenate: base.yaml, then devices/*.yaml sorted, then main.yaml itself
    assert [d.id for d in cfg.devices] == ["meter0", "valve1", "tank1", "pump1"]
    # mappings merge deep, later wins
    assert cfg.gateway.id == "plant7-gw2"
    assert cfg.gateway.log_level == "info"
    assert cfg.batch.max_readings == 100  # only in base.yaml
    assert cfg.batch.max_age == 0.5  # base says 1s, main says 500ms
    assert cfg.buses["line1"].inter_frame_delay == pytest.approx(0.005)
    # relative paths are relative to the main file's folder
    assert cfg.gateway.state_dir == GOOD.parent.resolve() / "state"
    assert cfg.outbox_path == GOOD.parent.resolve() / "state" / "outbox.db"
    assert cfg.identity_dir == GOOD.parent.resolve() / "state" / "identity"


def test_merged_values_remember_their_own_file() -> None:
    cfg = load_config(str(GOOD), env={})
    assert cfg.source is not None
    valves = FIXTURES / "good" / "devices" / "10-valves.yaml"
    loc = cfg.source.value(("devices", 1, "poll"))
    assert (loc.file, loc.line, loc.col) == (str(valves), *locate(valves, "250ms"))
    base = FIXTURES / "good" / "base.yaml"
    loc = cfg.source.value(("batch", "max_readings"))
    assert (loc.file, loc.line, loc.col) == (str(base), *locate(base, "100"))
    loc = cfg.source.value(("batch", "max_age"))
    assert (loc.file, loc.line, loc.col) == (str(GOOD), *locate(GOOD, "500ms"))


def test_good_config_passes_the_semantic_phase() -> None:
    cfg = load_and_check(str(GOOD), DRIVERS, env={})
    assert cfg.warnings == []
    opts = cfg.options_for("pump1")
    assert isinstance(opts, DemoOptions)
    assert [p.name for p in opts.points] == ["temp"]
    assert cfg.devices[2].enabled is False


def test_env_substitution_with_defaults_and_retyping() -> None:
    cfg = load_config(str(GOOD), env={})
    assert cfg.gateway.id == "plant7-gw2"
    assert cfg.devices[3].options == {
        "host": "10.0.0.5",
        "port": 502,  # unquoted: typed like a literal 502
        "label": "none",  # quoted: stays a string
        "points": [{"name": "temp", "kind": "holding", "address": 0}],
    }
    env = {
        "CFGTEST_GW_ID": "gw-from-env",
        "CFGTEST_PUMP_HOST": "pump.local",
        "CFGTEST_PUMP_PORT": "1502",
    }
    cfg = load_config(str(GOOD), env=env)
    assert cfg.gateway.id == "gw-from-env"
    assert cfg.devices[3].options["host"] == "pump.local"
    assert cfg.devices[3].options["port"] == 1502
    assert cfg.devices[3].options["label"] == "pump.local"


def test_env_substitution_edge_cases(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "env.yaml",
        "a: ${EMPTY:-fallback}\n"
        "b: pre-${NAME}-post\n"
        "c: $${NAME} stays\n"
        "d: ${EMPTY}\n"
        "e: '${FLAG}'\n"
        "f: ${FLAG}\n"
        "g: ${MISSING:-}\n",
    )
    data = load_yaml(path, env={"EMPTY": "", "NAME": "x", "FLAG": "true"}).data
    assert data == {
        "a": "fallback",
        "b": "pre-x-post",
        "c": "${NAME} stays",
        "d": None,
        "e": "true",
        "f": True,
        "g": None,
    }


@pytest.mark.parametrize("ref", ["${}", "${1X}", "${A B}", "${OPEN"])
def test_malformed_env_reference_is_located(tmp_path: Path, ref: str) -> None:
    path = write(tmp_path, "bad.yaml", f"gateway:\n  id: gw1\n  state_dir: x{ref}\n")
    issues = problems(path)
    assert [(i.line, i.col, i.path) for i in issues] == [(3, 14, "gateway.state_dir")]
    assert issues[0].message.startswith("malformed variable reference")


def test_yaml_merge_keys_and_aliases(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "merge.yaml",
        "gateway: {id: gw1}\n"
        "devices:\n"
        "  - &first\n"
        "    id: a\n"
        "    driver: demo\n"
        "    poll: 5s\n"
        "    options: {host: h1}\n"
        "  - <<: *first\n"
        "    id: b\n",
    )
    cfg = load_config(str(path), env={})
    assert [(d.id, d.poll, d.options["host"]) for d in cfg.devices] == [
        ("a", 5.0, "h1"),
        ("b", 5.0, "h1"),
    ]
    assert check_config(cfg, DRIVERS) == []


def test_an_anchored_mapping_is_whole_at_every_use_with_its_places(tmp_path: Path) -> None:
    """The loader lets go of composed nodes as it builds them, except under an anchor: a
    nested mapping of an anchored one reads the same (data and places) at each alias."""
    path = write(
        tmp_path,
        "anchors.yaml",
        "a: &a {b: {c: 1}, d: [{e: 2}]}\n"
        "x: *a\n"
        "y:\n"
        "  <<: *a\n"
        "  f: 3\n"
        "z: [*a]\n",
    )
    loaded = load_yaml(path, env={})
    whole = {"b": {"c": 1}, "d": [{"e": 2}]}
    assert loaded.data == {"a": whole, "x": whole, "y": {**whole, "f": 3}, "z": [whole]}
    src = loaded.source
    for use in (("a",), ("x",), ("y",), ("z", 0)):
        assert (src.value((*use, "b", "c")).line, src.value((*use, "b", "c")).col) == (1, 15)
        assert (src.key((*use, "d")).line, src.key((*use, "d")).col) == (1, 19)
        assert src.value((*use, "d", 0, "e")).col == 27
    assert (src.key(("y", "f")).line, src.key(("y", "f")).col) == (5, 3)
    # a path that goes past the data ends at the nearest enclosing value
    assert src.value(("y", "b", "c", "deeper")) == src.value(("y", "b", "c"))
    assert src.value(("z", 7)) == src.value(("z",))
    assert (src.value(()).line, src.key(("nope",)).line) == (1, 1)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\nb: *nope\n", 2, "YAML syntax error: found undefined alias"),
        ("a: &x 1\nb: &x 2\n", 2, "YAML syntax error: second occurrence"),
        ("a: 1\n---\nb: 2\n", 2, "YAML syntax error: but found another document"),
    ],
)
def test_composer_errors_are_located(tmp_path: Path, text: str, line: int, message: str) -> None:
    issues = problems(write(tmp_path, "bad.yaml", text))
    assert [(i.line, i.message) for i in issues] == [(line, message)]


def test_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "document too large" in str(err.value)


def test_recursive_alias_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "rec.yaml", "gateway: &g\n  id: gw1\n  self: *g\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert [(i.line, i.path, i.message) for i in err.value.issues] == [
        (1, "gateway.self", "recursive YAML alias")  # located at the anchor
    ]


def test_unreadable_and_odd_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(str(missing))
    assert str(err.value) == f"{missing}: cannot read {missing}: No such file or directory"

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"gateway:\n  id: gw1\n  state_dir: caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(latin1))
    issue = err.value.issues[0]
    assert (issue.line, issue.col, issue.message) == (3, 17, "not valid UTF-8 (byte 0xe9)")

    control = write(tmp_path, "ctl.yaml", "gateway:\n  id: g\x07w\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(control))
    issue = err.value.issues[0]
    assert (issue.line, issue.col) == (2, 8)
    assert "control characters" in issue.message

    scalar = write(tmp_path, "scalar.yaml", "just text\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(scalar))
    assert "top level of a config file must be a mapping" in str(err.value)


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "gateway:\n  id: gw1\ndevices:\nrules:\nuplink:\n")
    cfg = load_config(str(path))
    assert cfg.devices == [] and cfg.rules == []
    assert cfg.uplink.broker == "mqtts://127.0.0.1:8883" and cfg.uplink.port == 8883
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9108
    assert cfg.outbox.max_bytes == 64 * 1024 * 1024
    assert cfg.batch.max_age == 0.25


def test_missing_include_points_at_the_include_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path, "main.yaml", "include:\n  - there.yaml\n  - conf.d/*.yaml\ngateway:\n  id: gw1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert [(i.line, i.col, i.path) for i in err.value.issues] == [(2, 5, "include")]
    assert "there.yaml does not exist" in err.value.issues[0].message
    write(tmp_path, "there.yaml", "metrics: {enabled: false}\n")
    assert load_config(str(path)).metrics.enabled is False  # an empty glob is fine


def test_broken_driver_is_a_warning_and_unknown_one_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "drv.yaml",
        "gateway: {id: gw1}\n"
        "devices:\n"
        "  - {id: cam1, driver: rtsp-broken, options: {url: x}}\n"
        "  - {id: d1, driver: demo, options: {host: h}}\n",
    )
    cfg = load_and_check(str(path), DRIVERS, unavailable={"rtsp-broken": "ImportError: av"})
    assert [(w.line, w.path, w.severity) for w in cfg.warnings] == [
        (3, "devices.0.driver", "warning")
    ]
    assert "failed to load (ImportError: av)" in cfg.warnings[0].message
    assert cfg.options_for("cam1") is None and cfg.options_for("d1") is not None
    with pytest.raises(ConfigError) as err:
        load_and_check(str(path), DRIVERS)
    assert [(i.path, i.message, i.hint) for i in err.value.issues] == [
        ("devices.0.driver", "unknown driver 'rtsp-broken'", "installed drivers: demo")
    ]


def test_bus_warnings_and_conflicts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bus.yaml",
        "gateway: {id: gw1}\n"
        "buses:\n"
        "  line1: {}\n"
        "  line2: {}\n"
        "  spare.bus: {timeout: 1s}\n"
        '  "demo://h:502": {timeout: 2s}\n'  # named by the driver's bus key: used
        "devices:\n"
        "  - {id: a, driver: demo, bus: line1, options: {host: h}}\n"
        "  - {id: b, driver: demo, bus: line2, options: {host: h}}\n",
    )
    issues = problems(path)
    assert [(i.line, i.col, i.path, i.severity) for i in issues] == [
        (5, 3, "buses.spare.bus", "warning"),  # a key containing a dot
        (*locate(path, "line2, options"), "devices.1.bus", "error"),
    ]
    assert issues[1].message == (
        "device 'b' is on the same bus (demo://h:502) as device 'a', which uses bus 'line1'"
    )


def test_dotted_paths_from_the_edge_checks_resolve_to_locations(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "edge.yaml",
        "gateway: {id: gw1}\n"
        "devices:\n"
        "  - id: d1\n"
        "    driver: demo\n"
        "    options: {host: h, points: [{name: temp, kind: holding, address: 0}]}\n"
        "rules:\n"
        "  - name: r1\n"
        "    device: d1\n"
        "    when: tmep > 3\n",
    )
    issues = problems(path)
    assert [(i.line, i.col, i.path) for i in issues] == [(9, 11, "rules.0.when")]
    assert issues[0].message == "unknown metric 'tmep' of device 'd1'"
    assert issues[0].hint == "did you mean 'temp'?"
    cfg = load_config(str(path))
    assert cfg.source is not None
    assert cfg.source.resolve("rules[0].when", cfg._data) == ("rules", 0, "when")
    assert cfg.source.resolve("devices.0.options.points.0.name", cfg._data) == (
        "devices",
        0,
        "options",
        "points",
        0,
        "name",
    )


def test_reference_example_is_valid_for_the_real_modbus_driver() -> None:
    from edgegw.sdk import discover_drivers

    example = Path(__file__).parents[2] / "examples" / "gateway.example.yaml"
    entry = discover_drivers()["modbus"]
    assert entry.cls is not None, entry.error
    cfg = load_and_check(str(example), {"modbus": entry.cls}, env={})
    assert cfg.warnings == []
    assert [d.id for d in cfg.devices] == ["boiler1", "meter1"]
    assert cfg.gateway.id == "plant1-gw1"
    assert cfg.outbox.max_bytes == 64 * 1024**2 and cfg.batch.max_age == 0.25


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.sampled_from(list("gateway:id- \n{}[],&*!|>'\"#$%{}0123456789.sm\t<")),
        max_size=120,
    )
)
def test_garbage_only_ever_raises_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "fuzz.yaml", "gateway: {id: gw1}\n" + text)
    try:
        cfg = load_config(str(path), env={})
    except ConfigError as exc:
        assert exc.issues and all(i.file == str(path) for i in exc.issues)
    else:
        assert isinstance(check_config(cfg, DRIVERS), list)
