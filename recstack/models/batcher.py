"""Dynamic batching: concurrent requests merged into one model run (no grpc here).

Triton-style: a request is a tuple of row-aligned arrays, every array with the request's N
rows, and the model computes each row independently, so merging requests is concatenating
their arrays row-wise and splitting the output back is slicing its first axis at the same
offsets. Two users: the rank service (rows = candidates: the user vector tiled per
candidate, the candidate vectors, optionally side features; output one score per row) and
the recall service's query encoder (rows = texts, one object array; output one vector per
text). Each passes its own :class:`BatchMetrics`.

Invariants:

* **One worker thread owns the run.** Only ``_worker`` calls ``run``; handler threads only
  enqueue and wait. The runner's staging buffers (IO binding) are therefore never shared.
* **A request only sees its own rows.** Offsets are computed from the same ordered list that
  was concatenated, and each waiter receives a copy of exactly ``out[off:off + n]``.
* **Bounded queue.** At most ``max_queue_requests`` requests wait; one more is refused at
  once with ResourceExhausted instead of adding unbounded latency.
* **Expired work is dropped.** Before a batch runs, requests whose deadline has passed (or
  whose caller gave up waiting) are answered DeadlineExceeded and left out of the run.
* **Batch formation.** The worker takes the oldest request, then waits at most
  ``max_queue_delay_s`` after that request was enqueued for more to arrive, stopping early
  once ``max_batch_rows`` is reached; it then takes requests in FIFO order while their rows
  fit (a single request larger than ``max_batch_rows`` runs alone).

All queue state (``_queue``, ``_queued_rows``, ``_closed``) is guarded by ``_cond``'s lock;
a ``_Pending``'s result is written by the worker before its event is set, and read by the
waiter only after the event is set (the event is the happens-before edge).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge, Histogram

from recstack.core.deadline import Deadline
from recstack.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from recstack.core.vectors import F32Array

log = logging.getLogger(__name__)

Inputs = tuple[npt.NDArray[Any], ...]
RunFn = Callable[[Inputs], F32Array]
# Called by the worker just before each run with the number of requests and rows in it.
BeforeRunHook = Callable[[int, int], None]


class BatcherClosed(Unavailable):
    """The batcher was closed (shutdown or hot swap); the work was not queued."""


@dataclass(frozen=True)
class BatchMetrics:
    """Where one batcher reports: rows and requests per run, queue delay, depth, drops
    (labelled ``queue_full`` or ``deadline``)."""

    rows: Histogram
    requests: Histogram
    queue_delay: Histogram
    queue_depth: Gauge
    dropped: Counter


@dataclass(eq=False)
class _Pending:
    """One queued request; ``done`` is set once ``result`` or ``error`` is written."""

    inputs: Inputs
    rows: int
    deadline: Deadline
    enqueued_at: float
    done: threading.Event = field(default_factory=threading.Event)
    result: F32Array | None = None
    error: BaseException | None = None
    abandoned: bool = False  # the caller stopped waiting (deadline); skip it


class Batcher:
    """Queue + one worker thread that merges requests into runs of ``run``."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_rows: int,
        max_queue_delay_s: float,
        max_queue_requests: int,
        metrics: BatchMetrics,
        before_run: BeforeRunHook | None = None,
        name: str = "batcher",
        what: str = "the model",
    ) -> None:
        """``what`` names the model in error messages ("the ranker", "the encoder")."""
        if max_batch_rows < 1 or max_queue_requests < 1 or max_queue_delay_s < 0:
            raise ValueError(
                "max_batch_rows and max_queue_requests must be >= 1, max_queue_delay >= 0"
            )
        self._run = run
        self.max_batch_rows = max_batch_rows
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_requests = max_queue_requests
        self._before_run = before_run
        self._metrics = metrics
        self._what = what
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # ---- caller side (gRPC handler threads) ----

    def submit(self, inputs: Sequence[npt.NDArray[Any]], deadline: Deadline) -> F32Array:
        """Queue one request's row-aligned arrays; block until its own output rows are ready."""
        rows = int(inputs[0].shape[0])
        if any(int(a.shape[0]) != rows for a in inputs):
            raise ValueError("all inputs of one request must have the same number of rows")
        deadline.check(f"queueing for {self._what}")
        pending = _Pending(tuple(inputs), rows, deadline, time.monotonic())
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self._what} is shutting down")
            if len(self._queue) >= self.max_queue_requests:
                self._metrics.dropped.labels("queue_full").inc()
                raise ResourceExhausted(
                    f"{self._what}'s queue full ({self.max_queue_requests} requests "
                    "waiting); retry later",
                    reason="QUEUE_FULL",
                    metadata={"queue": self._what, "limit": str(self.max_queue_requests)},
                )
            self._queue.append(pending)
            self._queued_rows += rows
            self._metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        if not pending.done.wait(deadline.remaining()):
            # Our deadline passed while queued or running. Mark it so that the worker skips
            # it if it has not started yet; a run already in progress just discards our rows.
            pending.abandoned = True
            if not pending.done.is_set():
                raise DeadlineExceeded(f"deadline passed while waiting for {self._what}")
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, let the worker finish everything queued, then join it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    # ---- worker side (the one thread that runs the model) ----

    def _take_batch(self) -> list[_Pending] | None:
        """Block for the next batch (FIFO, within max_batch_rows); None once closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0]
            window_ends = first.enqueued_at + self.max_queue_delay_s
            while not self._closed and self._queued_rows < self.max_batch_rows:
                left = window_ends - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Pending] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_rows):
                p = self._queue.popleft()
                self._queued_rows -= p.rows
                rows += p.rows
                batch.append(p)
            self._metrics.queue_depth.set(len(self._queue))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never let the worker die: fail this batch only
                log.exception("batch failed", extra={"batcher": self._worker.name})
                for p in batch:
                    if not p.done.is_set():
                        p.error = exc
                        p.done.set()

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        live: list[_Pending] = []
        for p in batch:
            left = p.deadline.remaining()
            if p.abandoned or (left is not None and left <= 0):
                self._metrics.dropped.labels("deadline").inc()
                p.error = DeadlineExceeded(f"deadline passed while queued for {self._what}")
                p.done.set()
            else:
                self._metrics.queue_delay.observe(started - p.enqueued_at)
                live.append(p)
        if not live:
            return
        rows = sum(p.rows for p in live)
        if self._before_run is not None:
            self._before_run(len(live), rows)
        self._metrics.requests.observe(len(live))
        self._metrics.rows.observe(rows)
        if len(live) == 1:
            merged = live[0].inputs
        else:
            merged = tuple(
                np.concatenate([p.inputs[i] for p in live], axis=0)
                for i in range(len(live[0].inputs))
            )
        out = np.asarray(self._run(merged), dtype=np.float32)
        if out.ndim == 0 or out.shape[0] != rows:
            raise RuntimeError(f"{self._what} returned {out.shape} outputs for {rows} rows")
        offset = 0
        for p in live:
            p.result = out[offset : offset + p.rows].copy()
            offset += p.rows
            p.done.set()
