"""A one-thread inference worker for AnomalyStage tests: it records which threads ran the jobs
and keeps every future, so a test can wait for the batches in flight and check where they ran."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class RecordingWorker:
    """``submit`` is what ``AnomalyStage.start`` takes; threads are named ``infer...``."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.futures: list[Future[Any]] = []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="infer")

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        def job() -> Any:
            self.threads.add(threading.current_thread().name)
            return fn(*args)

        self.futures.append(self.pool.submit(job))
        return self.futures[-1]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
