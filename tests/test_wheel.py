"""The wheel built from the tree: only the project's namespaces, and self-sufficient.

A wheel is built from this checkout (pip, the project's own build backend), installed with its
dependencies into a fresh virtualenv (from the machine's configured package index/mirrors), and
then, from a directory outside the repository: ``edgegw init`` writes the starter config from the
package data and ``edgegw check`` accepts it; a shipped example and the systemd units come out of
the wheel too.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.srctree import copy_project

ROOT = Path(__file__).resolve().parents[1]


def _run(
    *cmd: str | Path,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> str:
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow
def test_wheel_installs_only_the_namespaces_and_init_check_work(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    src = copy_project(tmp_path / "src")  # pip builds in place: never in the shared checkout
    _run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-q", "-w", dist)
    (wheel,) = dist.glob("edgegw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"edgegw", "edgegw_cloud", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert "edgegw/share/examples/starter.yaml.in" in names
    assert "edgegw/share/systemd/edgegw.service" in names
    assert not [n for n in names if n.startswith("edgegw/share/examples/demo")]

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, timeout=600)
    record = (
        next((venv / "lib").glob("python3*/site-packages/edgegw-*.dist-info")) / "RECORD"
    ).read_text()
    installed_top = {
        line.split("/")[0] for line in record.splitlines() if not line.startswith("../")
    }
    assert installed_top == top

    work = tmp_path / "work"  # outside the repository: nothing can come from the checkout
    work.mkdir()
    edgegw = venv / "bin" / "edgegw"
    _run(edgegw, "init", "--id", "wheel-gw", cwd=work)
    text = (work / "gateway.yaml").read_text()
    assert "id: wheel-gw" in text and text.lstrip().startswith("#")
    assert "OK (1 device, 1 rule)" in _run(edgegw, "check", "-c", "gateway.yaml", cwd=work)
    _run(edgegw, "init", "--example", "coap", "-o", "coap.yaml", cwd=work)
    # the CoAP example takes its OSCORE secrets from the environment only (issue 9 #9)
    env = {**os.environ, "THERM_A_OSCORE_SECRET": secrets.token_hex(16),
           "THERM_B_OSCORE_SECRET": secrets.token_hex(16)}
    assert "OK" in _run(edgegw, "check", "-c", "coap.yaml", cwd=work, env=env)
    _run(edgegw, "init", "--systemd", "units", cwd=work)
    assert (work / "units" / "edgegw.service").read_text() == (
        ROOT / "systemd" / "edgegw.service"
    ).read_text()
    # and it is the wheel's code that ran, not the checkout's
    where = _run(venv / "bin" / "python", "-c", "import edgegw; print(edgegw.__file__)", cwd=work)
    assert str(venv) in where and str(ROOT) not in where
