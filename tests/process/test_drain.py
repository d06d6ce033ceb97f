"""Graceful drain: SIGTERM while Rank RPCs are in flight.

The rank service runs with a long ``--max-queue-delay-ms`` (QUEUE_DELAY_S), so a Rank waits
that long in the batcher before it runs. The test does not assume how far its RPCs got: it
reads the service's own queue-depth gauge (``--metrics-port``) until all of them are queued,
then sends SIGTERM; the long window leaves the signal, the health change and the refusals
seconds of margin, and every wait that runs out fails naming what did not happen.
Expected (invariant 6): a health ``Watch`` stream sees NOT_SERVING while those RPCs are
still running, an RPC sent after the server stopped accepting work is refused with
UNAVAILABLE, every in-flight RPC completes OK with its own candidates ranked, and the
process exits 0 within ``--grace-seconds``.
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from recstack.core.vectors import l2_normalize
from recstack.tools.procs import free_port
from recstack.v1 import rank_pb2, rank_pb2_grpc
from tests.process.helpers import Proc
from tests.unit.test_rank_core import rank_request as request_for

pytestmark = pytest.mark.process
RANK = "recstack.v1.RankService"
QUEUE_DELAY_S = 6.0  # the batcher window: how long the test has between queueing and runs
GRACE_S = 30  # well past the window: the in-flight RPCs complete inside it
WAIT_S = 30.0  # the test's own bound on each step
IN_FLIGHT = 6
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def queue_depth(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "recstack_rank_queue_depth":
            return float(family.samples[0].value)
    raise AssertionError("no recstack_rank_queue_depth in /metrics")


def next_event(events: queue.Queue[tuple[str, object]], what: str) -> tuple[str, object]:
    try:
        return events.get(timeout=WAIT_S)
    except queue.Empty:
        raise AssertionError(f"no event within {WAIT_S}s: expected {what}") from None


def rank_request(bundle, n: int, seed: int) -> rank_pb2.RankRequest:
    rng = np.random.default_rng(seed)
    return request_for(
        bundle,
        [f"s{seed}-c{i}" for i in range(n)],
        l2_normalize(rng.standard_normal((n, bundle.dim))),
        l2_normalize(rng.standard_normal(bundle.dim)),
    )


def test_sigterm_drains_in_flight_rank_rpcs(bundle_dir, bundle, tmp_path):
    metrics_port = free_port()
    server = Proc(
        "rank_service",
        "--bundle",
        str(bundle_dir),
        "--bundle-poll-s",
        "0",
        "--max-queue-delay-ms",
        str(int(QUEUE_DELAY_S * 1000)),
        "--grace-seconds",
        str(GRACE_S),
        "--metrics-port",
        str(metrics_port),
        workdir=tmp_path,
        name="rank",
    ).wait_serving(RANK)
    channel = server.channel()
    stub = rank_pb2_grpc.RankServiceStub(channel)
    events: queue.Queue[tuple[str, object]] = queue.Queue()

    # A Watch stream on its own channel, reporting every status change.
    watch_channel = server.channel()
    watch = health_pb2_grpc.HealthStub(watch_channel).Watch(
        health_pb2.HealthCheckRequest(service=RANK)
    )

    def watcher() -> None:
        try:
            for update in watch:
                events.put(("health", update.status))
        except grpc.RpcError as err:
            events.put(("watch-ended", err.code()))

    threading.Thread(target=watcher, daemon=True).start()
    assert next_event(events, "SERVING") == ("health", SERVING)

    pool = ThreadPoolExecutor(IN_FLIGHT)
    requests = [rank_request(bundle, 3 + i, i) for i in range(IN_FLIGHT)]

    def call(i: int) -> rank_pb2.RankResponse:
        response = stub.Rank(requests[i], timeout=GRACE_S + QUEUE_DELAY_S)
        events.put(("done", i))
        return response

    futures = [pool.submit(call, i) for i in range(IN_FLIGHT)]
    # Wait for the exact point: every RPC is queued in the batcher (its window still open).
    until = time.monotonic() + WAIT_S
    while (depth := queue_depth(metrics_port)) < IN_FLIGHT:
        assert not any(f.done() for f in futures), [f.exception() for f in futures if f.done()]
        assert time.monotonic() < until, f"only {depth:.0f} of {IN_FLIGHT} RPCs were queued"
        time.sleep(0.02)
    assert not any(f.done() for f in futures), "RPCs finished before the signal"
    server.proc.terminate()  # SIGTERM

    # Health flips to NOT_SERVING before any in-flight RPC has completed.
    first = next_event(events, "NOT_SERVING")
    assert first == ("health", NOT_SERVING), f"first event after SIGTERM: {first}"

    # The server turns NOT_SERVING, then stops accepting RPCs: wait for that exact point
    # (a cheap GetInfo on a new channel is refused) instead of sleeping past it.
    until = time.monotonic() + WAIT_S
    while True:
        with server.channel() as probe:
            try:
                rank_pb2_grpc.RankServiceStub(probe).GetInfo(
                    rank_pb2.RankServiceGetInfoRequest(), timeout=5
                )
            except grpc.RpcError as err:
                # A probe that slipped in just before the listener closed is cancelled by
                # the shutdown: not yet the steady state, probe again.
                if err.code() == grpc.StatusCode.CANCELLED:
                    continue
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                break
        assert time.monotonic() < until, "the server kept accepting new RPCs after the signal"
        time.sleep(0.02)

    # New RPCs after the signal are refused: on the existing channel and on a new one.
    refused = []
    for ch in (channel, server.channel()):
        with pytest.raises(grpc.RpcError) as err:
            rank_pb2_grpc.RankServiceStub(ch).Rank(rank_request(bundle, 2, 99), timeout=5)
        refused.append(err.value.code())
    assert refused == [grpc.StatusCode.UNAVAILABLE] * 2, refused

    # Every in-flight RPC completes OK with its own candidates.
    completed = 0
    for i, f in enumerate(futures):
        response = f.result(timeout=GRACE_S + 5)
        assert {s.id for s in response.items} == set(requests[i].candidate_ids)
        assert response.bundle_version == bundle.version
        completed += 1
    code = server.proc.wait(timeout=GRACE_S + 5)
    server.log.close()
    assert code == 0, f"exit status {code}"
    watch_channel.close()
    channel.close()
    pool.shutdown()
    print(f"\ndrain: {completed}/{IN_FLIGHT} in-flight RPCs completed OK; exit status {code}")
