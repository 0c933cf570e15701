"""The ``edgegw`` command line: check/schema/drivers, plugin commands, unavailable commands.

A throw-away distribution (a real ``*.dist-info`` folder on ``PYTHONPATH``) registers the test
driver, a driver whose module does not exist, and plugin commands through entry points, exactly
as an installed package would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cfgtest_helpers import FIXTURES

from edgegw import cli

HERE = Path(__file__).parent
EDGEGW = Path(sys.executable).parent / "edgegw"

ENTRY_POINTS = """\
[edgegw.drivers]
demo = cfgtest_drivers:DemoDriver
cfgbroken = cfgtest_no_such_module:Driver

[edgegw.commands]
hello = cfgtest_hello_cmd
ghost = cfgtest_ghost_module
broken = cfgtest_broken_cmd
"""

HELLO = '''"""Say hello (a plugin command)."""
def add_arguments(parser):
    parser.add_argument("--name", required=True)
def run(args):
    print(f"hello {args.name} verbose={args.verbose} level={args.log_level}")
    return 7
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    info = root / "cfgtest_plugin-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cfgtest-plugin\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (root / "cfgtest_hello_cmd.py").write_text(HELLO)
    (root / "cfgtest_broken_cmd.py").write_text('raise RuntimeError("boom at import")\n')
    return root


def edgegw(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CFGTEST_", "EDGEGW_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE)])
    return subprocess.run(
        [str(EDGEGW), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_check_good_file(site: Path) -> None:
    path = FIXTURES / "good" / "main.yaml"
    res = edgegw(site, "check", "-c", str(path))
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout == f"{path}: OK (4 devices, 1 rule)\n"


def test_check_bad_file_prints_every_issue(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "gateway:\n"
        "  id: gw1\n"
        "devices:\n"
        "  - id: d1\n"
        "    driver: dmeo\n"
        "    options: {host: h}\n"
        "  - id: d1\n"
        "    driver: demo\n"
        "    options: {host: h, prot: 502}\n"
    )
    res = edgegw(site, "check", "-c", str(path))
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        f"{path}:5:13: devices.0.driver: unknown driver 'dmeo' (hint: did you mean 'demo'?)",
        f"{path}:7:9: devices.1.id: duplicate device id 'd1' (first defined at line 4) "
        "(hint: device ids must be unique within a gateway)",
        f"{path}:9:24: devices.1.options.prot: unknown key 'prot' (hint: did you mean 'port'?)",
        f"{path}: 3 errors, 0 warnings",
    ]


def test_check_syntax_error_and_warnings(site: Path, tmp_path: Path) -> None:
    bad = tmp_path / "syntax.yaml"
    bad.write_text("gateway: {id: gw1\n")
    res = edgegw(site, "check", "-c", str(bad))
    assert res.returncode == 1
    first, summary = res.stderr.splitlines()
    assert first.startswith(f"{bad}:2:1: YAML syntax error: ")
    assert summary == f"{bad}: 1 error"

    warn = tmp_path / "warn.yaml"
    warn.write_text("gateway: {id: gw1}\ndevices:\n  - {id: x, driver: cfgbroken}\n")
    res = edgegw(site, "check", "-c", str(warn))
    assert res.returncode == 0
    assert res.stdout == f"{warn}: OK (1 device, 0 rules, 1 warning)\n"
    assert res.stderr.startswith(f"{warn}:3:21: devices.0.driver: warning: driver 'cfgbroken' is")
    assert "ModuleNotFoundError" in res.stderr
    assert edgegw(site, "check", "--strict", "-c", str(warn)).returncode == 1


def test_help_lists_builtin_and_plugin_commands(site: Path) -> None:
    res = edgegw(site, "--help")
    assert res.returncode == 0
    for name in ("run", "check", "status", "drivers", "schema", "enroll", "model", "hello"):
        assert f"\n    {name} " in res.stdout
    assert "(from cfgtest-plugin)" in res.stdout


def test_drivers_table(site: Path) -> None:
    res = edgegw(site, "drivers")
    rows = {line.split()[0]: line.split(None, 3) for line in res.stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    assert rows["demo"] == ["demo", "cfgtest-plugin", "0.3.0", "ok"]
    assert rows["cfgbroken"][3].startswith("error: ModuleNotFoundError")
    assert res.returncode == 1  # a driver failed to load
    listed = json.loads(edgegw(site, "drivers", "--json").stdout)
    assert {
        "name": "demo",
        "distribution": "cfgtest-plugin",
        "version": "0.3.0",
        "target": "cfgtest_drivers:DemoDriver",
        "status": "ok",
    } in listed


def test_schema_command_includes_installed_driver_options(site: Path, tmp_path: Path) -> None:
    res = edgegw(site, "schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "driver.demo" in schema["$defs"]
    out = tmp_path / "s.json"
    assert edgegw(site, "schema", "--no-drivers", "-o", str(out)).returncode == 0
    assert "driver.demo" not in json.loads(out.read_text())["$defs"]


def test_plugin_command_gets_global_options_before_or_after(site: Path) -> None:
    res = edgegw(site, "-v", "hello", "--name", "ann", "--log-level", "ERROR")
    assert (res.returncode, res.stdout) == (7, "hello ann verbose=1 level=error\n")
    res = edgegw(site, "hello", "-vv", "--name", "bob")
    assert (res.returncode, res.stdout) == (7, "hello bob verbose=2 level=None\n")


def test_missing_or_broken_command_module_fails_only_that_command(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(site))
    assert cli.main(["ghost"]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err == (
        "edgegw: command 'ghost' is unavailable: its module cfgtest_ghost_module is not installed\n"
    )
    assert cli.main(["broken"]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "importing cfgtest_broken_cmd failed: RuntimeError: boom at import" in err
    # the other commands still work in the same installation
    assert cli.main(["hello", "--name", "x"]) == 7
    assert capsys.readouterr().out == "hello x verbose=0 level=None\n"


def test_registered_command_without_entry_points(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "half", cli.Command("edgegw.units", "not a command"))
    assert cli.main(["half"]) == cli.EXIT_UNAVAILABLE
    assert "module edgegw.units has no add_arguments() or run()" in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: edgegw" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == cli.EXIT_USAGE
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
    assert cli.main(["check"]) == cli.EXIT_USAGE  # -c is required without $EDGEGW_CONFIG
    assert "-c/--config" in capsys.readouterr().err
