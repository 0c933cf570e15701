"""Run one coverage-guided fuzzer (atheris, libFuzzer options after the target name).

    python fuzz/run.py TARGET [libFuzzer options] [corpus dirs]
    python fuzz/run.py codec -max_total_time=60 fuzz/corpus/codec
    make fuzz            # every target, FUZZ_SECONDS each (default 60)

Targets are in fuzz/fuzz_targets.py. New inputs found are written to the FIRST corpus dir
given (libFuzzer's behaviour): run with a scratch dir first (``make fuzz`` does) and commit only
small, interesting ones. A crash writes ``crash-<sha1>``: fix the cause, then move the file into
``fuzz/corpus/TARGET/`` as a regression input (tests/test_fuzz.py replays every file there).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

# instrument the code under test (edgegw, its drivers, the cloud side, the parsers they use)
with atheris.instrument_imports(include=["edgegw", "edgegw_cloud", "pymodbus", "cbor2", "yaml"]):
    import fuzz_targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in fuzz_targets.TARGETS:
        print(f"usage: {sys.argv[0]} TARGET [libFuzzer options] [corpus dirs]; targets: "
              f"{', '.join(fuzz_targets.TARGETS)}", file=sys.stderr)
        raise SystemExit(2)
    target = fuzz_targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
