"""examples/custom_driver as a user gets it: a fresh venv, `pip install` edgegw and the example.

Nothing here is mocked: a new virtualenv (python -m venv), the two packages installed by pip
from their source folders, the `edgegw` command of that venv, and the example's simulated
station as a real HTTP server on loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.srctree import copy_project

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom_driver"


def run(
    args: list[str | Path],
    *,
    cwd: Path | None = None,
    timeout: float = 180,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra_env or {})
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with edgegw (this checkout) and edgegw-weather (the example) pip-installed."""
    fresh = tmp_path_factory.mktemp("fresh")
    root = fresh / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    py = root / "bin" / "python"
    # pip builds both in place: build copies, never the shared checkout (tests/srctree.py)
    src = copy_project(fresh / "src")
    example = src / EXAMPLE.relative_to(REPO)
    # one pip call resolves both; the example's [test] extra brings pytest for its own tests
    done = run([py, "-m", "pip", "install", "-q", src, f"{example}[test]"])
    assert done.returncode == 0, done.stderr[-4000:]
    return root


def test_fresh_install_help_and_every_example_checks(fresh_venv: Path) -> None:
    """Gateway core acceptance 1: `pip install .` in a fresh venv, then `edgegw --help`,
    `edgegw-cloud --help` and `edgegw check -c` on every example config."""
    for tool in ("edgegw", "edgegw-cloud"):
        done = run([fresh_venv / "bin" / tool, "--help"])
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
    examples = sorted(
        p for p in (Path(REPO) / "examples").rglob("*.yaml")
        if "custom_driver" not in p.parts and "grafana" not in p.parts  # not gateway configs
    )
    assert len(examples) >= 8
    for path in examples:
        done = run(
            [fresh_venv / "bin" / "edgegw", "check", "-c", path],
            # the camera and CoAP examples take their secrets from the environment
            extra_env={"CAM_PASSWORD": "example-secret",
                       "THERM_A_OSCORE_SECRET": secrets.token_hex(16),
                       "THERM_B_OSCORE_SECRET": secrets.token_hex(16)},
        )
        assert done.returncode == 0, f"{path}: {done.stdout}{done.stderr}"


def test_edgegw_drivers_lists_the_plugin(fresh_venv: Path) -> None:
    done = run([fresh_venv / "bin" / "edgegw", "drivers"])
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:] if line}
    assert rows["weather"][:4] == ["weather", "edgegw-weather", "0.1.0", "ok"], done.stdout
    assert rows["rtsp"][1] == "edgegw"  # built-ins come through the same entry points


def test_example_tests_pass_in_the_fresh_venv(fresh_venv: Path) -> None:
    done = run(
        [fresh_venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


@pytest.fixture
def station(fresh_venv: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The example's simulator command, installed by pip, on a free port (--port 0)."""
    proc = subprocess.Popen(
        [str(fresh_venv / "bin" / "edgegw-weather-sim"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("weather station simulator on http://"), first
    try:
        yield first.split()[-1], proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_check_and_run_poll_the_station(
    fresh_venv: Path, station: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, sim = station
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway: {id: weather-test, state_dir: ./state}\n"
        "metrics: {enabled: false}\n"
        "devices:\n"
        "  - id: roof-station\n"
        "    driver: weather\n"
        "    poll: 500ms\n"
        "    options:\n"
        "      url: ${STATION_URL}\n"
        "      points: [temperature, humidity, heater]\n"
    )
    edgegw = fresh_venv / "bin" / "edgegw"
    env = {"STATION_URL": url}
    checked = run([edgegw, "check", "-c", config], extra_env=env)
    assert checked.returncode == 0, checked.stderr
    assert "OK (1 device" in checked.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("[temperature,", "[temprature,"))
    refused = run([edgegw, "check", "-c", bad], extra_env=env)
    assert refused.returncode != 0
    assert "bad.yaml:" in refused.stderr and "temprature" in refused.stderr

    ran = run([edgegw, "run", "-c", config, "--for", "3"], cwd=tmp_path, timeout=60, extra_env=env)
    assert ran.returncode == 0, ran.stderr[-4000:]

    sim.send_signal(signal.SIGTERM)
    out, _ = sim.communicate(timeout=10)
    served = out.strip().splitlines()[-1]
    assert served.startswith("requests served:"), out
    polls = int(served.split("'GET /api/v1/current': ")[1].split("}")[0].split(",")[0])
    assert polls >= 3, served  # 500 ms polls during 3 s of `edgegw run`

    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["gateway_id"] == "weather-test"
    assert status["stats"]["pipeline"]["readings_in"] >= 3 * 3  # 3 points per poll
