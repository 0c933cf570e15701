"""A scripted serial sensor on the far end of a socat pty pair (a real peer for the driver tests).

Run as ``python sensor.py PORT``. It opens PORT with pyserial and obeys JSON commands on stdin,
one per line, answering one line on stdout when a command is done:

- ``{"write": ["hex", ...], "pause": 0.02}`` writes each chunk, drains it to the pty and pauses
  between chunks (so a frame split into chunks reaches the driver in separate reads); -> ``ok``.
- ``{"respond": [{"request": "hex", "reply": ["hex", ...] | null}, ...], "pause": 0.02}``
  answers the listed requests in order (``null``: stay silent, the driver must time out);
  -> ``ok`` once every request of the plan has been seen.
- ``{"quit": true}`` (or EOF) exits.
"""

from __future__ import annotations

import json
import sys
import time

import serial


def write_chunks(port: serial.Serial, chunks: list[str], pause: float) -> None:
    for i, chunk in enumerate(chunks):
        port.write(bytes.fromhex(chunk))
        port.flush()
        if pause and i < len(chunks) - 1:
            time.sleep(pause)  # pacing of a slow sensor, not synchronisation


def respond(port: serial.Serial, plan: list[dict], pause: float) -> None:
    buf = b""
    for step in plan:
        want = bytes.fromhex(step["request"])
        while want not in buf:
            buf += port.read(max(1, port.in_waiting))
        buf = buf[buf.index(want) + len(want) :]
        if step.get("reply") is not None:
            write_chunks(port, step["reply"], pause)


def main() -> int:
    port = serial.Serial(sys.argv[1], baudrate=115200, timeout=0.05)
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("quit"):
                break
            pause = float(cmd.get("pause", 0.0))
            if "write" in cmd:
                write_chunks(port, cmd["write"], pause)
            elif "respond" in cmd:
                respond(port, cmd["respond"], pause)
            print("ok", flush=True)
    except serial.SerialException as exc:  # the pty pair was killed under us
        print(f"port lost: {exc}", flush=True)
        return 1
    finally:
        port.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
