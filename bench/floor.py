"""The in-process floor of Recommend: the gateway's servicer and core over in-process recall
and rank (``gateway.local.LocalPipeline``), loaded by closed-loop threads, no RPC at all.

It runs exactly the stages the three servers run (protobuf request -> profile -> user tower
-> HNSW -> side features -> ranker -> details -> protobuf response), with the services'
default options (ORT and BLAS threads included), on requests drawn from the bundle by the
load generator's own workload code (``loadtest.workload``, same mix and seed). What it
cannot include is what RPC costs: that difference is what ``bench.stack_bench`` measures.

Usage (normally started by ``bench.stack_bench``, one process per measurement):
``python -m bench.floor --bundle bundles --concurrency 8 --duration 8 --out floor.json``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from gateway.local import LocalPipeline
from gateway.servicer import RecommendServicer
from loadtest.workload import BundleData, Generator, WorkloadOptions, parse_mix
from recstack.core.bundle import Bundle
from recstack.core.config import ServerOptions
from recstack.core.errors import RecstackError
from recstack.runtime.server import CoreRef


class _Context:
    """The part of a gRPC servicer context the servicer reads: the caller's deadline."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def time_remaining(self) -> float:
        return self.timeout_s


def run_floor(
    bundle: str, concurrency: int, duration: float, mix: str | None, timeout_s: float = 2.0
) -> dict[str, Any]:
    """Closed loop over the in-process pipeline; throughput, latency and CPU per request."""
    # The servers apply this at start-up (ServerOptions.blas_threads); so does the floor.
    threadpool_limits(ServerOptions().blas_threads, user_api="blas")
    opened = Bundle.open(bundle)
    generator = Generator(
        "recommend", BundleData.load(opened), parse_mix("recommend", mix), WorkloadOptions()
    )
    pool = [r.message for r in generator.pool()]
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        pipeline = LocalPipeline(str(opened.root), tmp)
        ref: CoreRef[Any] = CoreRef("gateway")
        ref.set(pipeline.core)
        servicer = RecommendServicer(ref)
        context = _Context(timeout_s)
        for message in pool[:50]:  # warm-up, unrecorded (the load generator sends 20+)
            servicer.Recommend(message, context)  # type: ignore[arg-type]
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        errors = [0] * concurrency
        stop = time.perf_counter() + duration

        def worker(n: int) -> None:
            i = n
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    servicer.Recommend(pool[i % len(pool)], context)  # type: ignore[arg-type]
                except RecstackError:
                    errors[n] += 1
                latencies[n].append(time.perf_counter() - started)
                i += concurrency

        cpu0, t0 = os.times(), time.perf_counter()
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, cpu1 = time.perf_counter() - t0, os.times()
        pipeline.close()
    done = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "achieved_rps": len(done) / elapsed,
        "p50_ms": float(np.percentile(done, 50)),
        "p99_ms": float(np.percentile(done, 99)),
        "requests": len(done),
        "errors": sum(errors),
        "cpu_ms_per_request": {"floor": cpu / len(done) * 1000},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--bundle", default="bundles")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--mix", default=None, help="recommend mix, as loadtest --mix")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run_floor(args.bundle, args.concurrency, args.duration, args.mix)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
