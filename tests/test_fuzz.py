"""The fuzzers of fuzz/ in CI: every committed input (seeds and regression inputs of past
crashes) replays cleanly, and each coverage-guided fuzzer runs a few seconds over its corpus
plus the new inputs it generates without finding a crash (issue 9, "fuzzing in the tree").

The short run is a smoke test of the harness and a cheap chance at a shallow bug; the long runs
are `make fuzz` (FUZZ_SECONDS per target)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_targets  # noqa: E402

SECONDS = 2


@pytest.mark.parametrize("target", sorted(fuzz_targets.TARGETS))
def test_committed_inputs_replay(target: str) -> None:
    corpus = FUZZ / "corpus" / target
    assert fuzz_targets.replay(target, corpus) >= 2  # seeds exist for every target


@pytest.mark.parametrize("target", sorted(fuzz_targets.TARGETS))
def test_fuzzer_runs_without_a_crash(target: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, work)
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), target, f"-max_total_time={SECONDS}",
         "-rss_limit_mb=1024", "-timeout=10", f"-artifact_prefix={tmp_path}/", str(work)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-",
                                                                              "timeout-")))
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-3000:])
    assert "Done" in proc.stderr  # libFuzzer's final line: it really ran
