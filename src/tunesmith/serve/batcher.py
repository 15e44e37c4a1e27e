"""Micro-batching: rows of concurrent requests share one model call.

The event loop never runs the model. Requests put their rows on a queue; one batching task
takes whatever is queued when the model becomes free (whole requests, up to
``max_batch_size`` rows) and runs it on the single model thread. At concurrency 1 a request
runs at once: the batch waits up to ``max_wait_ms`` for more rows only while other admitted
requests are still on their way (read, parsed, not yet queued), so waiting can pay off.

Results are split back per request. A request whose deadline passed before its batch
started is skipped, not computed, and the queue is bounded in rows so overload is answered
at once (:class:`QueueFull`) instead of by ever longer waits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tunesmith.errors import DataError

logger = logging.getLogger(__package__)  # one logger for the whole server: tunesmith.serve
T = TypeVar("T")
Row = Mapping[str, Any] | str


class _Answerable(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class ServedModel(Protocol):
    """What the batcher and the server need of a model: a text predictor
    (:class:`~tunesmith.export.runtime.Predictor`) or a recommender
    (:class:`~tunesmith.serve.recommend.RecommenderPredictor`).
    """

    version: str
    backend: str
    precision: str

    def predict_rows(self, rows: Sequence[Any], *, probabilities: bool = True) -> Sequence[_Answerable]: ...

    def rows_to_texts(self, rows: Sequence[Any], *, where: str = "inputs") -> list[Any]: ...

    def warmup(self) -> None: ...

    def metadata(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's CPU priority by ``increment`` nice steps (Linux; elsewhere a no-op).

    Threads started by this thread later (ONNX Runtime's and OpenMP's pools) inherit it. On
    Linux the nice value is per thread, so the event loop keeps its priority and the scheduler
    runs it as soon as it has work, however busy the model keeps the cores.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))


def call_with_lower_priority(fn: Callable[[], T], increment: int) -> T:
    """``fn()`` on a new thread of lowered priority (see :func:`lower_thread_priority`).

    For loading a model: the compute threads its runtime starts inherit the lower priority.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(increment)
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="tunesmith-load", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class QueueFull(Exception):
    """The queue has no room for the request's rows; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the prediction queue is full; retry in {retry_after}s")


class DeadlineExceeded(Exception):
    """The request's deadline passed before its prediction was done."""


class ShuttingDown(Exception):
    """The server is draining and takes no new predictions."""


class ClientGone(Exception):
    """The client closed the connection before its prediction was done."""


@dataclass(frozen=True)
class Answer:
    """Predictions for one request and the model that made them."""

    predictions: list[dict[str, Any]]
    model_version: str
    backend: str
    precision: str


class Ticket:
    """An admitted request that has not reached the queue yet (see :meth:`Batcher.arrive`)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = True


@dataclass(eq=False)
class _Job:
    rows: Sequence[Row]
    probabilities: bool
    future: asyncio.Future[Answer]
    deadline: float  # time.monotonic()
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = len(self.rows)


BatchHook = Callable[[int, int, float], None]


class Batcher:
    """Gathers rows of concurrent requests into model calls on one dedicated thread.

    Create it, then ``await start()`` inside the running event loop. ``predictor`` may be
    swapped at any time (:meth:`swap`): each batch uses the predictor that is current when the
    batch starts, so a reload never fails a request. ``nice`` lowers the model thread's CPU
    priority (see :func:`lower_thread_priority`).
    """

    def __init__(
        self,
        predictor: ServedModel,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        on_batch: BatchHook | None = None,
        nice: int = 0,
    ) -> None:
        self._predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self.queued_rows = 0
        self.incoming = 0
        self.busy_rows = 0
        self._busy_since = 0.0
        # Seconds per row of recent batches: the basis of Retry-After. Start pessimistic-ish
        # (1 ms/row); the warm-up and the first batches correct it.
        self._row_seconds = 1e-3
        # Jobs taken from the queue for the batch being gathered or run: no longer queued,
        # not answered yet.
        self._inflight: list[_Job] = []
        self._draining = False
        self._closing = False
        # One thread: predictors are not safe to call concurrently, and one model call at a
        # time is what makes batching pay off.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="tunesmith-model",
            initializer=lower_thread_priority,
            initargs=(nice,),
        )
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching task on the running loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="tunesmith-batcher")

    @property
    def predictor(self) -> ServedModel:
        """The predictor the next batch will use."""
        return self._predictor

    def swap(self, predictor: ServedModel) -> ServedModel:
        """Make ``predictor`` serve from the next batch on; returns the previous one.

        The previous predictor is closed on the model thread after the batch it may be
        running, so no batch loses its model mid-call.
        """
        old, self._predictor = self._predictor, predictor
        if old is not predictor:
            self._executor.submit(old.close)
        return old

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread (warm-up, timing) and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def refuse_new(self) -> None:
        """Refuse requests admitted from now on; admitted and queued ones still run."""
        self._draining = True

    def _busy(self) -> bool:
        return bool(self._queue or self._inflight or self.busy_rows or self.incoming)

    async def drain(self, timeout: float) -> bool:
        """Refuse new work and wait up to ``timeout`` seconds for admitted work to finish.

        Admitted work: requests still on their way to the queue, queued rows, and the batch
        being gathered or run.
        """
        self._draining = True
        until = time.monotonic() + timeout
        while self._busy() and time.monotonic() < until:
            await asyncio.sleep(0.005)
        return not self._busy()

    async def close(self) -> None:
        """Stop the batching task, fail what is left and release the model thread.

        Every request still waiting gets :class:`ShuttingDown` at once, also those of a batch
        cut off mid-run, so no client waits for its own timeout.
        """
        self._draining = True
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            # wait_for cancels the task when it is not done within the second.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=1.0)
        for job in (*self._inflight, *self._queue):
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server is shutting down"))
        self._inflight = []
        self._queue.clear()
        self.queued_rows = 0
        self._executor.submit(self._predictor.close)
        self._executor.shutdown(wait=False, cancel_futures=False)

    # --- admission ---------------------------------------------------------------------------

    def arrive(self) -> Ticket:
        """Count a request that is on its way (body not yet read) so batches may wait for it."""
        self.incoming += 1
        return Ticket()

    def leave(self, ticket: Ticket) -> None:
        """The request reached the queue or gave up; stop counting it as on its way."""
        if ticket.pending:
            ticket.pending = False
            self.incoming -= 1

    def full(self) -> bool:
        """No room for even one more row."""
        return self.queued_rows >= self.max_queue

    def has_room(self, n: int) -> bool:
        """Room for ``n`` more rows; a request larger than the whole queue fits only an empty one."""
        return self.queued_rows + n <= self.max_queue or self.queued_rows == 0

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained (at least 1)."""
        left = (self.queued_rows + self.busy_rows) * self._row_seconds
        if self.busy_rows:
            left -= time.monotonic() - self._busy_since
        return max(1, math.ceil(left))

    @property
    def draining(self) -> bool:
        return self._draining

    async def submit(
        self,
        rows: Sequence[Row],
        *,
        probabilities: bool = True,
        deadline: float,
        ticket: Ticket | None = None,
        gone: asyncio.Future[Any] | None = None,
    ) -> Answer:
        """Queue ``rows`` and wait for their predictions until ``deadline`` (``time.monotonic()``).

        ``gone`` is a future that completes when the client disconnects; the rows are then
        dropped from the queue like those of a request past its deadline.

        Raises:
            QueueFull: no room for the rows; nothing was queued.
            ShuttingDown: the server is draining.
            DeadlineExceeded: the deadline passed; the rows are skipped if not started yet.
            ClientGone: ``gone`` completed first; the rows are skipped if not started yet.
            DataError: a row the model cannot read (unknown field, no text, ...).
        """
        admitted = ticket is not None and ticket.pending
        if ticket is not None:
            self.leave(ticket)
        # A request admitted before draining began still runs; a new one is refused.
        if self._closing or (self._draining and not admitted):
            raise ShuttingDown("the server is shutting down")
        if not self.has_room(len(rows)):
            raise QueueFull(self.retry_after())
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request timed out before it was queued")
        assert self._wake is not None, "call start() first"
        job = _Job(rows, probabilities, asyncio.get_running_loop().create_future(), deadline)
        self._queue.append(job)
        self.queued_rows += job.n
        self._wake.set()
        if gone is None:
            try:
                return await asyncio.wait_for(job.future, timeout=left)
            except asyncio.TimeoutError:
                # wait_for cancelled the future: the batch loop skips it if it has not started.
                raise DeadlineExceeded("the prediction did not finish before the request timeout") from None
        try:
            await asyncio.wait((job.future, gone), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.future.done():
                job.future.cancel()  # skipped by the batch loop if its batch has not started
        if not job.future.cancelled():
            return job.future.result()
        if gone.done():
            raise ClientGone("the client disconnected")
        raise DeadlineExceeded("the prediction did not finish before the request timeout")

    # --- the batching task -------------------------------------------------------------------

    def _take(self, jobs: list[_Job], rows: int) -> int:
        """Move whole jobs from the queue into ``jobs`` while they fit; returns the row count."""
        now = time.monotonic()
        queue = self._queue
        while queue:
            job = queue[0]
            if job.future.done() or job.deadline <= now:
                queue.popleft()
                self.queued_rows -= job.n
                if not job.future.done():
                    job.future.set_exception(DeadlineExceeded("the request timed out in the queue"))
                continue
            if jobs and rows + job.n > self.max_batch_size:
                break
            queue.popleft()
            self.queued_rows -= job.n
            jobs.append(job)
            rows += job.n
        return rows

    async def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            if not self._queue:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
                continue
            jobs: list[_Job] = []
            self._inflight = jobs
            try:
                await self._run_batch(jobs)
            except asyncio.CancelledError:
                # close() gave up waiting for this batch: its requests are answered now.
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(ShuttingDown("the server is shutting down"))
                raise
            except Exception as exc:
                # A bug here must not leave every later request waiting for its timeout.
                logger.exception("tunesmith: the batch loop failed; its requests get a 500")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                self._inflight = []

    async def _run_batch(self, jobs: list[_Job]) -> None:
        assert self._wake is not None
        wake = self._wake
        loop = asyncio.get_running_loop()
        rows = self._take(jobs, 0)
        if not jobs:
            return
        if self.max_wait_s > 0 and rows < self.max_batch_size and self.incoming > 0:
            # Requests are on their way: a short wait turns them into one model call instead
            # of several. Nobody on the way means nobody worth waiting for.
            until = loop.time() + self.max_wait_s
            while rows < self.max_batch_size and self.incoming > 0 and not self._closing:
                left = until - loop.time()
                if left <= 0:
                    break
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=left)
                rows = self._take(jobs, rows)
        predictor = self._predictor
        self.busy_rows = rows
        self._busy_since = started = time.monotonic()
        try:
            outcomes = await loop.run_in_executor(self._executor, _compute, predictor, jobs)
        except Exception as exc:  # the executor itself failed (shut down): fail the batch
            outcomes = [exc] * len(jobs)
        finally:
            self.busy_rows = 0
        seconds = time.monotonic() - started
        self._row_seconds = 0.7 * self._row_seconds + 0.3 * (seconds / max(rows, 1))
        if self._on_batch is not None:
            self._on_batch(rows, len(jobs), seconds)
        answer_of = (predictor.version, predictor.backend, predictor.precision)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():  # timed out while running: its client has its 504
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(Answer(outcome, *answer_of))


def _compute(predictor: ServedModel, jobs: list[_Job]) -> list[list[dict[str, Any]] | Exception]:
    """Predictions (or the error) per job; one model call for all of them when all are valid."""
    try:
        return list(_predict(predictor, jobs))
    except DataError as exc:
        if len(jobs) == 1:
            return [exc]
    except Exception as exc:
        if len(jobs) == 1:
            return [exc]
        # Not a data error: run each request alone so one bad request fails only itself.
        return [_one(predictor, job) for job in jobs]
    # A row the model cannot read fails its own request only: check each request's rows (cheap,
    # no model), then predict the valid ones together.
    outcomes: list[list[dict[str, Any]] | Exception | None] = []
    good: list[_Job] = []
    for job in jobs:
        try:
            predictor.rows_to_texts(job.rows)
        except DataError as exc:
            outcomes.append(exc)
            continue
        outcomes.append(None)
        good.append(job)
    try:
        results = iter(_predict(predictor, good) if good else [])
        return [next(results) if o is None else o for o in outcomes]
    except Exception:
        return [o if o is not None else _one(predictor, job) for o, job in zip(outcomes, jobs, strict=True)]


def _one(predictor: ServedModel, job: _Job) -> list[dict[str, Any]] | Exception:
    try:
        return _predict(predictor, [job])[0]
    except Exception as exc:
        return exc


def _predict(predictor: ServedModel, jobs: list[_Job]) -> list[list[dict[str, Any]]]:
    rows: Sequence[Row] = jobs[0].rows if len(jobs) == 1 else [r for job in jobs for r in job.rows]
    predictions = predictor.predict_rows(rows, probabilities=True)
    out: list[list[dict[str, Any]]] = []
    start = 0
    for job in jobs:
        part = [p.to_dict() for p in predictions[start : start + job.n]]
        if not job.probabilities:
            for d in part:
                d.pop("probabilities", None)
        out.append(part)
        start += job.n
    return out
