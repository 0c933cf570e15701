"""The JSON Schema for editors: valid, complete root, accepts the reference configs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from cfgtest_drivers import DRIVERS
from cfgtest_helpers import FIXTURES

from edgegw.config import config_json_schema
from edgegw.yamlsrc import load_yaml

ROOT_KEYS = {
    "gateway",
    "metrics",
    "outbox",
    "batch",
    "breaker",
    "uplink",
    "buses",
    "devices",
    "rules",
    "anomaly",
    "ota",
    "include",
}
EXAMPLE = Path(__file__).parents[2] / "examples" / "gateway.example.yaml"


def test_schema_is_valid_json_schema_with_every_root_key() -> None:
    schema = json.loads(json.dumps(config_json_schema()))  # survives a JSON round trip
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "edgegw gateway configuration"
    assert set(schema["properties"]) == ROOT_KEYS
    assert schema["required"] == ["gateway"]
    assert schema["additionalProperties"] is False


def test_schema_accepts_the_example_and_the_fixture() -> None:
    validator = jsonschema.Draft202012Validator(config_json_schema())
    for path in (EXAMPLE, FIXTURES / "good" / "base.yaml"):
        data = load_yaml(path, env={}).data
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], path


def test_schema_has_per_driver_options() -> None:
    schema = config_json_schema(DRIVERS)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "driver.demo" in schema["$defs"]
    assert "driver.demo.DemoPoint" in schema["$defs"]
    validator = jsonschema.Draft202012Validator(schema)
    good = {
        "gateway": {"id": "gw1"},
        "devices": [
            {
                "id": "d1",
                "driver": "demo",
                "options": {
                    "host": "h",
                    "points": [{"name": "t", "kind": "holding", "address": 1}],
                },
            }
        ],
    }
    assert list(validator.iter_errors(good)) == []
    bad = json.loads(json.dumps(good))
    bad["devices"][0]["options"]["points"][0]["kind"] = "holdnig"
    bad["devices"][0]["poll"] = "5 sex"
    bad["devices"][0]["id"] = "a/b"
    failing = sorted(".".join(map(str, e.absolute_path)) for e in validator.iter_errors(bad))
    # the options error comes from the per-driver schema applied through if/then
    assert failing == ["devices.0.id", "devices.0.options.points.0.kind", "devices.0.poll"]


@pytest.mark.parametrize("value", ["500ms", "1m30s", 2, 0.5])
def test_duration_pattern_in_schema_matches_the_parser(value: object) -> None:
    validator = jsonschema.Draft202012Validator(config_json_schema())
    doc = {"gateway": {"id": "gw1"}, "batch": {"max_age": value}}
    assert list(validator.iter_errors(doc)) == []
    doc["batch"]["max_age"] = "5 sex"
    assert len(list(validator.iter_errors(doc))) == 1
