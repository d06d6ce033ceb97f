"""Dynamic batcher (recstack.models.batcher) with a numpy stand-in for the model run.

The batcher is model-agnostic (it concatenates row-aligned arrays and splits one output
vector back), so a deterministic per-row function checks merging and splitting exactly.
Slow runs are made with the ``before_run`` hook, and every wait is on an event, never on
elapsed time. Every bounded wait that runs out fails the test naming what did not happen.
"""

import threading
import time

import numpy as np
import pytest

from rank_service.core import RANK_BATCH_METRICS
from recstack.core.deadline import Deadline
from recstack.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from recstack.models.batcher import Batcher

WAIT = 30.0


def row_fn(inputs):
    """Per-row 'model': a different value for every row content."""
    user, item = inputs
    return (user * item).sum(axis=1) + item[:, 0] * 1000.0


class Gate:
    """before_run hook: records batch sizes; blocks runs while closed."""

    def __init__(self, blocked=False):
        self.open = threading.Event()
        if not blocked:
            self.open.set()
        self.entered = threading.Event()
        self.batches = []
        self.lock = threading.Lock()

    def __call__(self, requests, rows):
        with self.lock:
            self.batches.append((requests, rows))
        self.entered.set()
        assert self.open.wait(WAIT), "the test never opened the gate"


def request(rng, n, dim=8):
    user = rng.standard_normal(dim).astype(np.float32)
    items = rng.standard_normal((n, dim)).astype(np.float32)
    return (np.repeat(user[None], n, axis=0), items)


def wait_until(predicate, what):
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"{what}: not reached within {WAIT}s")


def joined(t, what):
    """Join ``t``; a thread still running after WAIT fails the test naming ``what``."""
    t.join(WAIT)
    assert not t.is_alive(), f"{what} never returned"


class QueuedFirst(Deadline):
    """A real, short deadline that ``submit``'s up-front check never refuses.

    ``Deadline.after(0.05)`` created here and checked in a freshly started thread could
    already have passed on a slow machine; the request would then be refused before it
    was queued and the test would wait for a queue that never fills. With the check
    skipped, the request is always queued, and its deadline then passes while it waits
    (``submit`` waits ``remaining()``, which may be <= 0: it gives up at once).
    """

    def check(self, stage):
        pass


def run_in_thread(batcher, inputs, deadline=None):
    box = {}

    def target():
        try:
            box["result"] = batcher.submit(inputs, deadline or Deadline.none())
        except Exception as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, box


def test_concurrent_requests_are_merged_and_split_exactly():
    gate = Gate(blocked=True)
    batcher = Batcher(
        row_fn,
        max_batch_rows=10_000,
        max_queue_delay_s=0.0,
        max_queue_requests=100,
        metrics=RANK_BATCH_METRICS,
        before_run=gate,
    )
    rng = np.random.default_rng(0)
    try:
        first = request(rng, 3)
        t0, box0 = run_in_thread(batcher, first)
        assert gate.entered.wait(WAIT)  # worker holds the first batch; the rest queue up
        reqs = [request(rng, int(n)) for n in rng.integers(1, 40, size=12)]
        threads = [run_in_thread(batcher, r) for r in reqs]
        wait_until(lambda: batcher.queued == len(reqs), "all requests queued")
        gate.open.set()
        for (t, box), r in zip(threads, reqs, strict=True):
            joined(t, "a queued request")
            np.testing.assert_array_equal(box["result"], row_fn(r).astype(np.float32))
        joined(t0, "the first request")
        np.testing.assert_array_equal(box0["result"], row_fn(first).astype(np.float32))
        assert gate.batches[0] == (1, 3)
        assert gate.batches[1] == (len(reqs), sum(r[0].shape[0] for r in reqs))
    finally:
        gate.open.set()
        batcher.close(WAIT)


def test_max_batch_rows_splits_batches_in_fifo_order():
    gate = Gate(blocked=True)
    batcher = Batcher(
        row_fn,
        max_batch_rows=10,
        max_queue_delay_s=0.0,
        max_queue_requests=100,
        metrics=RANK_BATCH_METRICS,
        before_run=gate,
    )
    rng = np.random.default_rng(1)
    try:
        _t0, _ = run_in_thread(batcher, request(rng, 1))
        assert gate.entered.wait(WAIT)
        sizes = [4, 4, 4, 25, 2]  # 25 > max_batch_rows runs alone
        threads = []
        for n in sizes:  # one at a time, so FIFO order is the order of this list
            threads.append(run_in_thread(batcher, request(rng, n)))
            expected = len(threads)
            wait_until(lambda e=expected: batcher.queued == e, f"{expected} requests queued")
        gate.open.set()
        for t, box in threads:
            joined(t, "a queued request")
            assert "result" in box, box
        assert [rows for _, rows in gate.batches[1:]] == [8, 4, 25, 2]
    finally:
        gate.open.set()
        batcher.close(WAIT)


def test_full_queue_is_resource_exhausted():
    gate = Gate(blocked=True)
    batcher = Batcher(
        row_fn,
        max_batch_rows=100,
        max_queue_delay_s=0.0,
        max_queue_requests=2,
        metrics=RANK_BATCH_METRICS,
        before_run=gate,
    )
    rng = np.random.default_rng(2)
    try:
        t0, box0 = run_in_thread(batcher, request(rng, 2))
        assert gate.entered.wait(WAIT)
        waiting = [run_in_thread(batcher, request(rng, 2)) for _ in range(2)]
        wait_until(lambda: batcher.queued == 2, "2 requests queued")
        with pytest.raises(ResourceExhausted, match="queue full"):
            batcher.submit(request(rng, 2), Deadline.none())
        gate.open.set()
        for t, box in [(t0, box0), *waiting]:
            joined(t, "a held or queued request")
            assert "result" in box, box
        batcher.submit(request(rng, 2), Deadline.none())  # room again
    finally:
        gate.open.set()
        batcher.close(WAIT)


def test_expired_requests_are_dropped_before_running():
    gate = Gate(blocked=True)
    ran_rows = []

    def recording(inputs):
        ran_rows.append(inputs[1].copy())
        return row_fn(inputs)

    batcher = Batcher(
        recording,
        max_batch_rows=100,
        max_queue_delay_s=0.0,
        max_queue_requests=10,
        metrics=RANK_BATCH_METRICS,
        before_run=gate,
    )
    rng = np.random.default_rng(3)
    try:
        _t0, _ = run_in_thread(batcher, request(rng, 1))
        assert gate.entered.wait(WAIT)
        doomed = request(rng, 5)
        expires = QueuedFirst(time.monotonic() + 0.05)
        t1, box1 = run_in_thread(batcher, doomed, expires)
        kept = request(rng, 2)
        t2, box2 = run_in_thread(batcher, kept)
        # both stay queued: the worker is held, and an abandoned request is only dropped
        # when the worker takes it
        wait_until(lambda: batcher.queued == 2, "both requests queued")
        joined(t1, "the request with the short deadline")  # its caller gives up...
        assert isinstance(box1.get("error"), DeadlineExceeded), box1
        gate.open.set()
        joined(t2, "the request without a deadline")
        np.testing.assert_array_equal(box2["result"], row_fn(kept).astype(np.float32))
        # ...and the worker never ran its rows
        assert not any(
            r.shape == doomed[1].shape and np.array_equal(r, doomed[1]) for r in ran_rows
        )
        assert all(r.shape[0] != 7 for r in ran_rows)
        with pytest.raises(DeadlineExceeded):
            batcher.submit(request(rng, 1), Deadline.after(-1))
    finally:
        gate.open.set()
        batcher.close(WAIT)


def test_a_failing_run_fails_only_its_batch_and_the_worker_survives():
    calls = []

    def flaky(inputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return row_fn(inputs)

    batcher = Batcher(
        flaky,
        max_batch_rows=100,
        max_queue_delay_s=0.0,
        max_queue_requests=10,
        metrics=RANK_BATCH_METRICS,
    )
    rng = np.random.default_rng(4)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(request(rng, 2), Deadline.none())
        r = request(rng, 3)
        np.testing.assert_array_equal(batcher.submit(r, Deadline.none()), row_fn(r))
    finally:
        batcher.close(WAIT)


def test_close_finishes_queued_work_then_refuses():
    gate = Gate(blocked=True)
    batcher = Batcher(
        row_fn,
        max_batch_rows=100,
        max_queue_delay_s=0.0,
        max_queue_requests=10,
        metrics=RANK_BATCH_METRICS,
        before_run=gate,
    )
    rng = np.random.default_rng(5)
    t0, box0 = run_in_thread(batcher, request(rng, 1))
    assert gate.entered.wait(WAIT)
    t1, box1 = run_in_thread(batcher, request(rng, 1))
    wait_until(lambda: batcher.queued == 1, "the second request queued")
    closer = threading.Thread(target=batcher.close, args=(WAIT,))
    closer.start()
    gate.open.set()
    joined(closer, "close()")
    # close(timeout) returns when its join times out too: the worker must really be gone
    assert not batcher._worker.is_alive(), "close() returned with the worker still running"
    joined(t0, "the held request")
    joined(t1, "the queued request")
    assert "result" in box0 and "result" in box1, (box0, box1)
    with pytest.raises(Unavailable):
        batcher.submit(request(rng, 1), Deadline.none())


def test_mismatched_rows_and_bad_options():
    with pytest.raises(ValueError):
        Batcher(
            row_fn,
            max_batch_rows=0,
            max_queue_delay_s=0.0,
            max_queue_requests=1,
            metrics=RANK_BATCH_METRICS,
        )
    batcher = Batcher(
        row_fn,
        max_batch_rows=10,
        max_queue_delay_s=0.0,
        max_queue_requests=1,
        metrics=RANK_BATCH_METRICS,
    )
    try:
        with pytest.raises(ValueError, match="same number of rows"):
            batcher.submit(
                (np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32)), Deadline.none()
            )
    finally:
        batcher.close(WAIT)
