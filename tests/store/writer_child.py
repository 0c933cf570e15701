"""Child process of the SIGKILL test: appends in a tight loop, prints each seq after COMMIT.

Usage: python writer_child.py DB_PATH KEY_HEX SEED
Prints "ready" once the outbox is open, then one committed seq per line (flushed).
"""

from __future__ import annotations

import random
import sys

from edgegw.model import Lane, Quality, Sample
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer
from edgegw.store import Outbox


def main() -> None:
    path, key_hex, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    ob = Outbox(path, max_bytes=64 << 20, sealer=Sealer(bytes.fromhex(key_hex), 3, "gw-kill"),
                first_seq=1)
    print("ready", flush=True)
    i = 0
    while True:
        lane = rng.choice([Lane.ALERT, Lane.TELEMETRY, Lane.TELEMETRY, Lane.BULK])
        n = rng.randint(1, 300)
        ts0 = 1_700_000_000_000 + seed * 1_000_000 + i * 1000
        samples = [Sample("plc", f"hr{k % 20}", ts0 + k, round(rng.random() * 100, 2),
                          Quality.GOOD) for k in range(n)]
        seq = ob.append(lane, encode_batch(samples), count=n, first_ts_ms=ts0,
                        last_ts_ms=ts0 + n - 1)
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    main()
