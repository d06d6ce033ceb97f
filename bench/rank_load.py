"""Rank servers as subprocesses and a closed-loop Rank load (no torch: also for the GPU
check, which runs where only the serving dependencies are installed)."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from recstack.core.bundle import Bundle
from recstack.core.features import candidate_features
from recstack.core.vectors import pack
from recstack.tools.procs import ServiceProcess, free_port
from recstack.v1 import rank_pb2, rank_pb2_grpc


class RankProcess:
    """A rank server subprocess (the shared launcher, :class:`recstack.tools.procs.ServiceProcess`)
    with a metrics port, SERVING before __enter__ returns."""

    def __init__(self, bundle: Path, extra: list[str], workdir: Path, name: str) -> None:
        self.metrics_port = free_port()
        self.service = ServiceProcess(
            "rank_service",
            "--bundle", str(bundle), "--metrics-port", str(self.metrics_port),
            "--log-level", "WARNING", "--bundle-poll-s", "0", *extra,
            workdir=workdir,
            name=name,
        )  # fmt: skip
        self.port = 0

    def __enter__(self) -> RankProcess:
        try:
            self.port = self.service.wait_serving("", 120).port
        except BaseException:
            self.service.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop(30)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ).read()
        for line in text.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def drive(port: int, bundle: Bundle, clients: int, candidates: int, seconds: float) -> dict:
    """Closed loop: ``clients`` threads each send Rank back to back for ``seconds``."""
    vectors = bundle.load_vectors()
    ids = [i.id for i in bundle.iter_catalog()]
    rng = np.random.default_rng(1)
    reqs = []
    for _ in range(64):
        pick = rng.integers(0, len(ids), size=candidates)
        user = vectors[int(rng.integers(len(ids)))]
        names = tuple(bundle.section("ranker").get("side_features", ()))
        feats = (
            pack(candidate_features(vectors[pick] @ user, np.zeros(candidates), 10, names=names))
            if names
            else b""
        )
        reqs.append(
            rank_pb2.RankRequest(
                user_vector=pack(user),
                candidate_ids=[f"{ids[p]}#{k}" for k, p in enumerate(pick)],
                candidate_vectors=pack(vectors[pick]),
                embedding_version=bundle.version,
                top_k=10,
                candidate_features=feats,
            )
        )
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [rank_pb2_grpc.RankServiceStub(c) for c in channels]
    for s in stubs:  # connect + warm up
        for r in reqs[:8]:
            s.Rank(r, timeout=10)
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]

    def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        mine = latencies[i]
        start.wait()
        k = i
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                stub.Rank(reqs[k % len(reqs)], timeout=10)
            except grpc.RpcError:
                errors[0] += 1
                continue
            mine.append(time.perf_counter() - t)
            k += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    for c in channels:
        c.close()
    flat = np.array([x for lat in latencies for x in lat])
    return {
        "requests": int(flat.size),
        "errors": errors[0],
        "seconds": round(elapsed, 2),
        "rps": round(flat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(flat, 50)) * 1000, 2),
        "p95_ms": round(float(np.percentile(flat, 95)) * 1000, 2),
    }
