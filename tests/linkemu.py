"""A weak-link emulator: a userspace TCP proxy with a rate, a one-way delay and a modem buffer.

The kernel's netem is not available on these machines, so the link is emulated in userspace,
between the gateway and the broker (both on loopback). Each direction is one shared link:

- **rate** (bytes/s): a byte leaves the link's queue only after the bytes before it were
  serialised at that rate (all connections of a direction share it, as on a real modem link);
- **delay** (s, one way): each chunk arrives ``delay`` after its last byte was serialised;
- **buffer** (bytes): the modem's queue. While it holds ``buffer`` unserialised bytes the proxy
  stops reading from the sender, so the sender's TCP window closes, as behind a full modem;
- no loss, no reordering; TCP payload bytes are counted per direction (``up`` = towards the
  target). ``cut()`` drops every connection and refuses new ones until ``restore()``.

It runs its own event loop in a thread (``start()``/``stop()``), so a test or bench can put it in
front of any TCP server: ``LinkEmulator(target_port, rate=8000, delay=0.15, buffer=65536)``.
Also a command: ``python tests/linkemu.py --target-port P --rate-kbit 64 --rtt-ms 300``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Direction:
    rate: float  # bytes per second
    delay: float
    buffer: int
    bytes: int = 0
    chunks: int = 0
    free_at: float = 0.0  # loop time at which the link finishes what it holds
    queue: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def backlog(self, now: float) -> int:
        q = self.queue
        while q and q[0][0] <= now:
            q.popleft()
        return sum(size for _, size in q)


class LinkEmulator:
    """TCP proxy 127.0.0.1:``port`` -> ``target_host``:``target_port`` through a weak link."""

    def __init__(
        self,
        target_port: int,
        *,
        rate: float,
        delay: float,
        buffer: int = 64 * 1024,
        rate_down: float | None = None,
        target_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if rate <= 0 or delay < 0 or buffer < 1:
            raise ValueError("rate must be > 0, delay >= 0, buffer >= 1")
        self.target = (target_host, target_port)
        self.up = _Direction(rate, delay, buffer)
        self.down = _Direction(rate_down or rate, delay, buffer)
        self.port = listen_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self._ready = threading.Event()
        self.connections = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LinkEmulator:
        self._thread = threading.Thread(target=self._run, name="linkemu", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("link emulator did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> None:
        """Drop every connection and refuse new ones (a dead link)."""
        self._cut = True
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)

    def restore(self) -> None:
        self._cut = False

    def counters(self) -> dict[str, int]:
        return {"up_bytes": self.up.bytes, "down_bytes": self.down.bytes,
                "up_chunks": self.up.chunks, "down_chunks": self.down.chunks,
                "connections": self.connections}

    # ------------------------------------------------------------------ internals
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        loop.run_until_complete(boot())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all()

    async def _close_all(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()
        for t in list(self._tasks):
            t.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, t_writer}
        pair = (writer, t_writer)
        for src, dst, d in ((reader, t_writer, self.up), (t_reader, writer, self.down)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst, d, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, d: _Direction,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                room = d.buffer - d.backlog(now)
                if room <= 0:  # modem buffer full: stop reading, the sender's window closes
                    await asyncio.sleep(max(0.001, d.queue[0][0] - now))
                    continue
                data = await src.read(min(room, 16384))
                if not data:
                    break
                now = loop.time()
                start = max(now, d.free_at)
                d.free_at = start + len(data) / d.rate
                d.queue.append((d.free_at, len(data)))
                d.bytes += len(data)
                d.chunks += 1
                loop.call_at(d.free_at + d.delay, self._deliver, dst, data)
            # the sender closed: close after the last byte arrived
            loop.call_at(max(loop.time(), d.free_at) + d.delay, self._close, dst)
        except (ConnectionError, OSError):
            pass
        finally:
            if src.at_eof() is False:
                for w in pair:
                    self._close(w)

    def _deliver(self, dst: asyncio.StreamWriter, data: bytes) -> None:
        if not dst.is_closing():
            dst.write(data)

    def _close(self, w: asyncio.StreamWriter) -> None:
        self._writers.discard(w)
        with contextlib.suppress(Exception):
            if w.can_write_eof():
                w.write_eof()
            else:
                w.close()


def _main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target-port", type=int, required=True)
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--rate-kbit", type=float, default=64.0)
    p.add_argument("--rtt-ms", type=float, default=300.0)
    p.add_argument("--buffer", type=int, default=64 * 1024)
    a = p.parse_args()
    emu = LinkEmulator(a.target_port, rate=a.rate_kbit * 1000 / 8, delay=a.rtt_ms / 2000,
                       buffer=a.buffer, listen_port=a.listen_port).start()
    print(f"listening on 127.0.0.1:{emu.port}", flush=True)
    try:
        while True:
            time.sleep(5)
            print(emu.counters(), flush=True)
    except KeyboardInterrupt:
        emu.stop()


if __name__ == "__main__":
    _main()
