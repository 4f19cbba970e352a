"""Request batching: concurrent requests become one model call, run off the event loop on one worker thread.

Each request `submit`s its texts with its search options (beam_size, n_best). One consumer task on the event loop
takes the oldest waiting request, waits until `max_batch_size` texts with the same options are waiting or until
`max_wait_ms` after that request arrived, then hands all of them (oldest first, at most `max_batch_size` texts, but
always the whole of the first request) to the worker thread as one `translate` call, and gives each request its own
slice of the results. Requests with other options wait for a later batch, so a batch never mixes search options.

While the worker is busy, new requests queue up; when it is free, the oldest of them has usually waited past its
`max_wait_ms` already, so the next batch forms at once from everything waiting. Under load, batches fill by
themselves. `max_batch_size=1` turns batching off (one request per call, as they come).

Waiting only pays when more requests are on their way. The app counts them in `incoming` (requests that reached the
server and have not yet been submitted: their bodies are being read or validated); when it is 0, a batch goes at once
instead of waiting, so one client alone gets the latency of no batching. With `incoming` left None (a batcher used
outside the app), the batcher always waits up to `max_wait_ms`.

If a batched call fails, each of its requests is retried alone, so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

log = logging.getLogger("attnmt.serve")


class BatcherClosed(RuntimeError):
    """The server is shutting down: no more requests are taken."""


class QueueFull(RuntimeError):
    """Too many texts wait for the model already; the client should retry later."""


@dataclass
class _Job:
    key: tuple
    options: dict[str, Any]
    texts: list[str]
    future: asyncio.Future
    enqueued: float


@dataclass
class BatcherStats:
    requests: int = 0  # requests that reached the model
    texts: int = 0
    model_calls: int = 0  # `translate` calls (batches)
    largest_batch: int = 0  # texts
    failed_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        mean = self.texts / self.model_calls if self.model_calls else 0.0
        return {"requests": self.requests, "texts": self.texts, "model_calls": self.model_calls,
                "mean_batch_texts": round(mean, 2), "largest_batch_texts": self.largest_batch,
                "failed_calls": self.failed_calls}


@dataclass
class Batcher:
    """Gathers `submit`ted texts into batched calls of `translate(texts, **options) -> list` (one result per text)."""

    translate: Callable[..., Sequence[Any]]
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queued_texts: int = 4096
    thread_initializer: Callable[[], None] | None = None
    stats: BatcherStats = field(default_factory=BatcherStats)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        self._pending: list[_Job] = []
        self._queued_texts = 0
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.incoming: int | None = None  # requests on their way to `submit` (None: unknown, always wait)

    # ---- life cycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer on the running event loop (the app's lifespan calls this; `submit` does if needed)."""
        loop = asyncio.get_running_loop()
        self._closed = False
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a consumer left on a loop that is gone (tests that reuse an app)
        self._fail_pending(BatcherClosed("the event loop changed"))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnmt-model",
                                                initializer=self.thread_initializer)
        self._loop = loop
        self._arrived = asyncio.Event()
        self._task = loop.create_task(self._consume(), name="attnmt-batcher")

    async def close(self) -> None:
        """Stop taking requests; requests still waiting get BatcherClosed."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if self._loop is asyncio.get_running_loop():  # a consumer on a loop that is gone cannot be awaited
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._fail_pending(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _fail_pending(self, error: Exception) -> None:
        for job in self._pending:
            if not job.future.done():
                try:
                    job.future.set_exception(error)
                except RuntimeError:  # its loop is closed
                    pass
        self._pending.clear()
        self._queued_texts = 0

    def expect(self, change: int) -> None:
        """The app's count of requests on their way: +1 when one reaches the server, -1 when it submits or is
        rejected. A drop wakes the consumer, which may then stop waiting."""
        self.incoming = max(0, (self.incoming or 0) + change)
        if change < 0 and self._arrived is not None and self._task is not None and not self._task.done():
            self._arrived.set()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    # ---- requests -------------------------------------------------------------------------------------------------

    async def submit(self, texts: list[str], **options: Any) -> list[Any]:
        """Translate `texts` with `options`, batched with other requests that use the same options."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self.start()
        if self._queued_texts + len(texts) > self.max_queued_texts:
            raise QueueFull(f"{self._queued_texts} texts are waiting for the model already")
        job = _Job(key=tuple(sorted(options.items())), options=options, texts=list(texts),
                   future=loop.create_future(), enqueued=loop.time())
        self._pending.append(job)
        self._queued_texts += len(job.texts)
        self._arrived.set()
        return await job.future

    # ---- the consumer ---------------------------------------------------------------------------------------------

    def _waiting_texts(self, key: tuple) -> int:
        return sum(len(job.texts) for job in self._pending if job.key == key and not job.future.done())

    def _take(self, key: tuple) -> list[_Job]:
        """Remove and return the oldest live jobs with `key`, up to max_batch_size texts (at least one job)."""
        taken: list[_Job] = []
        kept: list[_Job] = []
        size = 0
        for job in self._pending:
            if job.future.done():  # cancelled: the client went away
                self._queued_texts -= len(job.texts)
            elif job.key == key and (not taken or size + len(job.texts) <= self.max_batch_size):
                taken.append(job)
                size += len(job.texts)
                self._queued_texts -= len(job.texts)
            else:
                kept.append(job)
        self._pending = kept
        return taken

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.max_wait_ms / 1000
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._pending[0]
            deadline = first.enqueued + wait
            while self.max_batch_size > 1 and self._waiting_texts(first.key) < self.max_batch_size:
                if self.incoming is not None and self.incoming <= 0:
                    break  # nobody else is on the way: waiting would only add latency
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs = self._take(first.key)
            if jobs:
                try:
                    await self._run(jobs)
                except asyncio.CancelledError:
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(BatcherClosed("the server is shutting down"))
                    raise
                except Exception:  # never let the consumer die: that would hang every later request
                    log.exception("batch dispatch failed")

    def _drop_cancelled(self) -> None:
        live = []
        for job in self._pending:
            if job.future.done():
                self._queued_texts -= len(job.texts)
            else:
                live.append(job)
        self._pending = live

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for job in jobs for text in job.texts]
        self.stats.model_calls += 1
        self.stats.requests += len(jobs)
        self.stats.texts += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        try:
            results = await loop.run_in_executor(self._executor, partial(self.translate, texts, **jobs[0].options))
            if len(results) != len(texts):
                raise RuntimeError(f"translate returned {len(results)} results for {len(texts)} texts")
        except Exception as error:
            self.stats.failed_calls += 1
            if len(jobs) > 1:  # find the culprit: each request alone
                self.stats.requests -= len(jobs)
                self.stats.texts -= len(texts)
                for job in jobs:
                    if not job.future.done():
                        await self._run([job])
                return
            log.error("translating %d text(s) failed: %r", len(texts), error)
            if not jobs[0].future.done():
                jobs[0].future.set_exception(error)
            return
        start = 0
        for job in jobs:
            part = list(results[start:start + len(job.texts)])
            start += len(job.texts)
            if not job.future.done():
                job.future.set_result(part)
