"""Graceful drain: SIGTERM while Rank RPCs are in flight.

The rank service runs with a long ``--max-queue-delay-ms`` (1500), so a Rank waits about
1.5 s in the batcher before it runs: several RPCs are reliably in flight when SIGTERM
arrives. Expected (invariant 6): a health ``Watch`` stream sees NOT_SERVING while those
RPCs are still running, an RPC sent after the signal is refused with UNAVAILABLE, every
in-flight RPC completes OK with its own candidates ranked, and the process exits 0 within
``--grace-seconds``.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.v1 import rank_pb2, rank_pb2_grpc
from recstack.vectors import l2_normalize, pack
from tests.process.helpers import Proc

pytestmark = pytest.mark.process
RANK = "recstack.v1.RankService"
GRACE_S = 10
IN_FLIGHT = 6
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def rank_request(bundle, n: int, seed: int) -> rank_pb2.RankRequest:
    rng = np.random.default_rng(seed)
    return rank_pb2.RankRequest(
        user_vector=pack(l2_normalize(rng.standard_normal(bundle.dim))),
        candidate_ids=[f"s{seed}-c{i}" for i in range(n)],
        candidate_vectors=pack(l2_normalize(rng.standard_normal((n, bundle.dim)))),
        embedding_version=bundle.version,
    )


def test_sigterm_drains_in_flight_rank_rpcs(bundle_dir, bundle, tmp_path):
    server = Proc(
        "rank_service",
        "--bundle",
        str(bundle_dir),
        "--bundle-poll-s",
        "0",
        "--max-queue-delay-ms",
        "1500",
        "--grace-seconds",
        str(GRACE_S),
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
    assert events.get(timeout=10) == ("health", SERVING)

    pool = ThreadPoolExecutor(IN_FLIGHT)
    requests = [rank_request(bundle, 3 + i, i) for i in range(IN_FLIGHT)]

    def call(i: int) -> rank_pb2.RankResponse:
        response = stub.Rank(requests[i], timeout=30)
        events.put(("done", i))
        return response

    futures = [pool.submit(call, i) for i in range(IN_FLIGHT)]
    time.sleep(0.3)  # the RPCs are now queued in the batcher (1.5 s window)
    assert not any(f.done() for f in futures), "RPCs finished before the signal"
    server.proc.terminate()  # SIGTERM

    # Health flips to NOT_SERVING before any in-flight RPC has completed.
    first = events.get(timeout=GRACE_S)
    assert first == ("health", NOT_SERVING), f"first event after SIGTERM: {first}"

    # New RPCs after the signal are refused: on the existing channel and on a new one.
    time.sleep(0.2)
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
