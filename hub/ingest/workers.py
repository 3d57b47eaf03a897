"""Normalization workers: threads in the hub process, or a separate ``yilian ingest worker``.

Each worker loops: claim a batch of due messages (:meth:`IngestService.process`), normalize,
commit; when the queue is empty it sleeps until woken (work queued in this process) or for
``poll_s`` (work queued by another process or machine). Any number of workers, in any number of
processes on any number of machines, share the one queue in the database.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("yilian.ingest")


class WorkerPool:
    def __init__(self, service, count: int, *, poll_s: float = 0.5, name: str = "ingest-worker"):
        self.service = service
        self.count = count
        self.poll_s = poll_s
        self.name = name
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.count):
            t = threading.Thread(target=self._run, args=(f"{self.service.name}:{self.name}-{i}",),
                                 name=f"{self.name}-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, worker: str) -> None:
        while not self._stop.is_set():
            try:
                done = self.service.process(worker=worker)
            except Exception as e:  # database down or similar: keep the worker alive, try again later
                # by class only: a database error's text can quote statement parameters (message content)
                log.error("ingest worker %s: processing round failed (%s); retrying", worker, type(e).__name__)
                done = []
            if not done:
                self.service.queued.wait(self.poll_s)
                self.service.queued.clear()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.service.queued.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()


def run_worker(service, *, threads: int = 1, poll_s: float = 0.5, once: bool = False) -> int:
    """The body of ``yilian ingest worker``: run until interrupted (or, with ``once``, until the
    queue holds nothing due). Returns how many messages were processed with ``once``."""
    if once:
        return service.drain()
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # finish the batch in hand, then exit
    pool = WorkerPool(service, threads, poll_s=poll_s)
    pool.start()
    try:
        stop.wait()
    finally:
        pool.stop()
    return 0
