"""Long power-cut run: the real Outbox and CloudStore on the LazyFS layer, cut N times at
random points (tests/reliability/powercut.py). Prints JSON; exit 1 if anything durable was lost,
a database needed salvage, or a sequence went back.

    .venv/bin/python bench/power_cut.py --cycles 200 [--seed 1]   (make powercut)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from reliability.powercut import LazyMount, run_cycles


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgegw-powercut-"))
    mount = LazyMount(root)
    t0 = time.monotonic()
    try:
        led = run_cycles(mount, args.cycles, args.seed)
        fs = mount.stats()
    finally:
        mount.close()
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "cycles": led.cycles,
        "seconds": round(time.monotonic() - t0, 1),
        "outbox_batches_reported_durable": len(led.durable),
        "outbox_batches_settled": len(led.delivered),
        "store_batches_acked": len(led.acked),
        "lost_durable": led.lost_durable,
        "lost_acked": led.lost_acked,
        "seq_regressions": led.seq_regressions,
        "salvages": led.salvages,
        "unclean_stops_seen": led.unclean_gaps,
        "fs_cuts": fs["cuts"],
        "fs_dropped_unsynced_bytes": fs["dropped_bytes"],
        "fs_fsyncs": fs["fsyncs"],
    }
    print(json.dumps(out, indent=1))
    return 0 if not (led.lost_durable or led.lost_acked or led.seq_regressions
                     or led.salvages) else 1


if __name__ == "__main__":
    raise SystemExit(main())
