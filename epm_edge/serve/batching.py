"""Dynamic batching: the pairs of concurrent requests are scored together on one model thread.

A batch opens with the oldest waiting request and closes when it holds `max_batch` pairs or
`max_wait` seconds have passed since it opened. Scores do not depend on what else is in a batch
(engine.py), so batching changes only speed. The queue is bounded in pairs: a request that would
overflow it is refused at once (QueueFull, HTTP 503) instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

from epm_edge.serve.engine import Engine


class QueueFull(Exception):
    """More pairs are waiting than the service accepts (--max-queue)."""


@dataclass
class _Job:
    pairs: list[tuple[dict, dict]]
    explain: list[bool]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 32, max_wait: float = 0.01, max_queue: int = 1024,
                 on_batch=None):
        """`on_batch(n_pairs, n_requests, seconds)` is called after each batch is scored."""
        self.engine, self.max_batch, self.max_wait, self.max_queue = engine, max_batch, max_wait, max_queue
        self.on_batch = on_batch
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0  # pairs queued and not yet in a batch
        self._thread = threading.Thread(target=self._run, name="epm-edge-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Finish what is queued, then end the model thread."""
        self._jobs.put(None)
        self._thread.join()

    async def score(self, pairs: list[tuple[dict, dict]], explain: bool = False) -> list[dict]:
        with self._lock:
            if self.waiting + len(pairs) > self.max_queue:
                raise QueueFull(f"{self.waiting} pairs are waiting; the queue holds {self.max_queue}")
            self.waiting += len(pairs)
        loop = asyncio.get_running_loop()
        job = _Job(pairs, [explain] * len(pairs), loop.create_future(), loop)
        self._jobs.put(job)
        return await job.future

    def _next_batch(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """(the batch opened by `first`, a job that did not fit and opens the next one, whether the
        stop signal came)."""
        batch, size = [first], len(first.pairs)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._jobs.get(timeout=max(deadline - time.perf_counter(), 0))
            except queue.Empty:
                break
            if job is None:
                return batch, None, True
            if size + len(job.pairs) > self.max_batch:
                return batch, job, False
            batch.append(job)
            size += len(job.pairs)
        return batch, None, False

    def _run(self) -> None:
        carry, stopping = None, False
        while True:
            first = carry or (None if stopping else self._jobs.get())
            if first is None:
                return
            batch, carry, stop = self._next_batch(first)
            stopping = stopping or stop
            with self._lock:
                self.waiting -= sum(len(j.pairs) for j in batch)
            batch = [j for j in batch if not j.future.cancelled()]  # timed out while waiting
            if not batch:
                continue
            pairs = [p for j in batch for p in j.pairs]
            start = time.perf_counter()
            try:
                results, error = self.engine.score(pairs, [e for j in batch for e in j.explain]), None
            except Exception as e:  # reaches every request of the batch, the service goes on
                results, error = None, e
            if self.on_batch:
                self.on_batch(len(pairs), len(batch), time.perf_counter() - start)
            lo = 0
            for j in batch:
                part = None if error else results[lo:lo + len(j.pairs)]
                lo += len(j.pairs)
                j.loop.call_soon_threadsafe(_settle, j.future, part, error)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the request timed out meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
