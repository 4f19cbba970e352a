"""Request batching: concurrent requests become model calls, run off the event loop on one worker thread, and
requests share the worker fairly.

Each request `submit`s its texts with its search options (beam_size, n_best, attention). The queue holds requests in
turn order. One consumer task on the event loop takes the request at the head of the queue, waits until
`max_batch_size` texts with the same options are waiting or until `max_wait_ms` after that request arrived, then
hands up to `max_batch_size` texts to the worker thread as one `translate` call: the head request's, then those of
the requests behind it with the same options, in turn order. A request whose texts do not all fit goes back to the end
of the queue with the rest when that call is done (behind the requests that came meanwhile), so a request of many
texts is translated in several calls, taking turns (round-robin) with the requests that came after it: one heavy
request delays the others by one model call at a time, never by the whole of its work. Requests with other options
wait for a later call, so a call never mixes search options. Each request gets its results, in its own order, once
all its texts are translated.

While the worker is busy, new requests queue up; when it is free, the oldest of them has usually waited past its
`max_wait_ms` already, so the next batch forms at once from everything waiting. Under load, batches fill by
themselves. `max_batch_size=1` turns batching off (one text per call, as they come).

Waiting only pays when more requests are on their way. The app counts them in `incoming` (requests that reached the
server and have not yet been submitted: their bodies are being read or validated); when it is 0, a batch goes at once
instead of waiting, so one client alone gets the latency of no batching. With `incoming` left None (a batcher used
outside the app), the batcher always waits up to `max_wait_ms`.

A request cancelled while it waits (its client went away, or its deadline passed) loses its place: its texts not yet
translated never reach the model. If a call of several requests' texts fails, each request's part is retried alone,
so one bad request cannot fail its neighbours; a request whose part fails gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
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


@dataclass(eq=False)  # one object per request: compared by identity
class _Job:
    """One request: its texts, how many of them went to the model, and the results that came back."""

    key: tuple
    options: dict[str, Any]
    texts: list[str]
    future: asyncio.Future
    enqueued: float
    sent: int = 0  # texts handed to the model so far (in order)
    done: int = 0  # results received
    results: list[Any] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        """Texts not yet handed to the model."""
        return len(self.texts) - self.sent

    def deliver(self, start: int, results: Sequence[Any]) -> None:
        if self.future.done():  # cancelled: nobody waits for these
            return
        if not self.results:
            self.results = [None] * len(self.texts)
        self.results[start:start + len(results)] = results
        self.done += len(results)
        if self.done == len(self.texts):
            self.future.set_result(self.results)


@dataclass
class _Slice:
    """Texts start .. start + count of a job, in one model call."""

    job: _Job
    start: int
    count: int

    @property
    def texts(self) -> list[str]:
        return self.job.texts[self.start:self.start + self.count]


@dataclass
class BatcherStats:
    requests: int = 0  # requests that reached the model
    texts: int = 0
    model_calls: int = 0  # `translate` calls (batches)
    largest_batch: int = 0  # texts
    failed_calls: int = 0
    failure_streak: int = 0  # model calls failed in a row, up to now (0 after a call succeeds)

    def as_dict(self) -> dict[str, Any]:
        mean = self.texts / self.model_calls if self.model_calls else 0.0
        return {"requests": self.requests, "texts": self.texts, "model_calls": self.model_calls,
                "mean_batch_texts": round(mean, 2), "largest_batch_texts": self.largest_batch,
                "failed_calls": self.failed_calls}


@dataclass
class Batcher:
    """Gathers `submit`ted texts into batched calls of `translate(texts, **options) -> list` (one result per text),
    taking requests in turn."""

    translate: Callable[..., Sequence[Any]]
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queued_texts: int = 4096
    thread_initializer: Callable[[], None] | None = None
    stats: BatcherStats = field(default_factory=BatcherStats)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        self._pending: deque[_Job] = deque()  # requests with texts not yet sent, in turn order
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
        """Texts waiting for the model (of requests still waiting for them)."""
        return self._queued_texts

    # ---- requests -------------------------------------------------------------------------------------------------

    def enqueue(self, texts: list[str], **options: Any) -> asyncio.Future:
        """Queue `texts` with `options` at once (no await, so the caller knows the request has joined the queue): the
        future of their results, batched with other requests that use the same options. Cancelling the future drops
        the texts not yet sent to the model. QueueFull if too many texts wait already."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        if not texts:
            done = loop.create_future()
            done.set_result([])
            return done
        if self._task is None or self._task.done() or self._loop is not loop:
            self.start()
        if self._queued_texts + len(texts) > self.max_queued_texts:
            raise QueueFull(f"{self._queued_texts} texts are waiting for the model already")
        job = _Job(key=tuple(sorted(options.items())), options=options, texts=list(texts),
                   future=loop.create_future(), enqueued=loop.time())
        self._pending.append(job)
        self._queued_texts += len(job.texts)
        self._arrived.set()
        return job.future

    async def submit(self, texts: list[str], **options: Any) -> list[Any]:
        """Translate `texts` with `options` (see `enqueue`); cancelling the call drops the texts not yet sent."""
        return await self.enqueue(texts, **options)

    # ---- the consumer ---------------------------------------------------------------------------------------------

    def _waiting_texts(self, key: tuple) -> int:
        return sum(job.waiting for job in self._pending if job.key == key and not job.future.done())

    def _take(self, key: tuple) -> list[_Slice]:
        """Up to max_batch_size waiting texts of the live jobs with `key`, from the head of the queue on; they leave
        the queue (`_requeue` puts a job with texts left over back at its end). Cancelled jobs leave it too."""
        taken: list[_Slice] = []
        kept: list[_Job] = []
        room = self.max_batch_size
        for job in self._pending:
            if job.future.done():  # cancelled: the client went away, or its deadline passed
                self._queued_texts -= job.waiting
            elif job.key == key and room > 0:
                count = min(room, job.waiting)
                if job.sent == 0:
                    self.stats.requests += 1
                taken.append(_Slice(job, job.sent, count))
                job.sent += count
                room -= count
                self._queued_texts -= count
            else:
                kept.append(job)
        self._pending = deque(kept)
        return taken

    def _requeue(self, slices: list[_Slice]) -> None:
        """After its call, a job with texts left over goes to the back of the queue, behind the requests that arrived
        meanwhile: its turn is over (round-robin)."""
        for part in slices:  # (one slice per job)
            if part.job.waiting:
                self._pending.append(part.job)

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
            slices = self._take(first.key)
            if slices:
                try:
                    await self._run(slices)
                except asyncio.CancelledError:
                    for part in slices:
                        if not part.job.future.done():
                            part.job.future.set_exception(BatcherClosed("the server is shutting down"))
                    raise
                except Exception:  # never let the consumer die: that would hang every later request
                    log.exception("batch dispatch failed")
                self._requeue(slices)

    def _drop_cancelled(self) -> None:
        live: deque[_Job] = deque()
        for job in self._pending:
            if job.future.done():
                self._queued_texts -= job.waiting
            else:
                live.append(job)
        self._pending = live

    async def _run(self, slices: list[_Slice]) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for part in slices for text in part.texts]
        self.stats.model_calls += 1
        try:
            results = await loop.run_in_executor(self._executor,
                                                 partial(self.translate, texts, **slices[0].job.options))
            if len(results) != len(texts):
                raise RuntimeError(f"translate returned {len(results)} results for {len(texts)} texts")
        except Exception as error:
            self.stats.failed_calls += 1
            self.stats.failure_streak += 1
            if len(slices) > 1:  # find the culprit: each request's part alone
                for part in slices:
                    if not part.job.future.done():
                        await self._run([part])
                return
            log.error("translating %d text(s) failed: %r", len(texts), error)
            if not slices[0].job.future.done():
                slices[0].job.future.set_exception(error)
            return
        self.stats.failure_streak = 0
        self.stats.texts += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        start = 0
        for part in slices:
            part.job.deliver(part.start, results[start:start + part.count])
            start += part.count
