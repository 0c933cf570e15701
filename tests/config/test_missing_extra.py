"""A missing optional extra (ml) is a config error naming the extra: `edgegw check` fails and the
daemon refuses to start (exit 2), instead of silently running without the detector.

The TFLite runtimes are installed here (extra ``ml``), so their absence is simulated: the CLI runs
in a subprocess whose ``sys.modules`` blocks ``ai_edge_litert`` and ``tflite_runtime`` (an import
then raises ModuleNotFoundError, exactly as on a gateway without the extra).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_ML = (
    "import sys; sys.modules['ai_edge_litert'] = None; sys.modules['tflite_runtime'] = None; "
    "from edgegw.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_ML, *args], capture_output=True, text=True, timeout=120
    )


def test_model_detector_without_the_ml_extra_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "models", tmp_path / "models")
    text = (ROOT / "examples" / "edge.yaml").read_text()
    assert "    fallback: zscore" in text
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(text.replace("    fallback: zscore", "    # no fallback"))
    checked = _edgegw("check", "-c", str(cfg))
    assert checked.returncode == 1
    assert "no TFLite runtime" in checked.stderr and "edgegw[ml]" in checked.stderr
    ran = _edgegw("run", "-c", str(cfg), "--for", "1")
    assert ran.returncode == 2 and "edgegw[ml]" in ran.stderr, ran.stderr
    # with the fallback the same config is accepted: the detector degrades, it is not dropped
    assert _edgegw("check", "-c", str(ROOT / "examples" / "edge.yaml")).returncode == 0
