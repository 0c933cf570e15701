"""End to end: a 2.04 from the real daemon means the reading is in the outbox, even after SIGKILL.

Runs ``edgegw run -c cfg.yaml`` (uplink disabled) with a CoAP device, POSTs one OSCORE-protected
reading with aiocoap, SIGKILLs the daemon the moment the 2.04 arrives, and reads the outbox
back with ``edgegw.runtime.outbox_reader.read_outbox_samples``. (File named ``zz`` to run last.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from coap_harness import (
    AiocoapClient,
    free_udp_port,
    oscore_device,
    wait_serving,
    write_client_context,
)

from edgegw.runtime.outbox_reader import read_outbox_samples

EDGEGW = Path(sys.executable).with_name("edgegw")


async def test_sigkill_right_after_changed_keeps_the_reading(tmp_path: Path) -> None:
    port = free_udp_port()
    dev = oscore_device("therm", 7)
    state = tmp_path / "state"
    cfg = {
        "gateway": {"id": "gw-kill-test", "state_dir": str(state)},
        "metrics": {"enabled": False},
        "uplink": {"enabled": False},
        "devices": [
            {"id": "coap-server", "driver": "coap",
             "options": {"listen": f"127.0.0.1:{port}", "devices": [dev]}},
        ],
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    proc = await asyncio.create_subprocess_exec(
        str(EDGEGW), "run", "-c", str(cfg_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_serving(port, proc)
        client_dir = write_client_context(tmp_path / "client", dev)
        ts = 1_790_000_000_777
        async with AiocoapClient.connect(port, client_dir) as client:
            reply = await client.post(
                "/d/therm", json.dumps({"ts": ts, "values": {"kill_marker": 42.5}}).encode()
            )
            assert reply.code.dotted == "2.04"
            proc.send_signal(signal.SIGKILL)  # no chance to flush anything after the ack
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    stored = [s for s in read_outbox_samples(state) if s.metric == "kill_marker"]
    assert [(s.device, s.ts_ms, s.value) for s in stored] == [("therm", ts, 42.5)]
