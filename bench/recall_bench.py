"""Recall benchmarks, measured side by side in one run; prints ratios, writes JSON.

1. **Replay**: a SQLite catalog log holding ``--items`` upserts (clustered random unit
   vectors, 384 dims, in the bundle's embedding version) is replayed by a real recall
   replica start-up (bundle load + log replay + self-check), against a start-up with an
   empty log: the difference is the replay time.
2. **Quality**: recall@10 of the HNSW index (the bundle's M, ef_construction, ef_search)
   against exact brute-force search over the same live items, on ``--queries`` queries.
3. **Throughput**: single-query vs batched search, in process (``ItemIndex.search``) and
   over gRPC (``Recall`` one by one vs ``RecallBatch``), with the same queries and params.

Usage: ``python -m bench.recall_bench [--bundle bundles] [--items 100000] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import clustered, ensure_bundle
from recall_service.catalog_log import UPSERT, LogWrite, open_log
from recall_service.index import SearchSpec
from recall_service.replica import Replica
from recall_service.server import serve
from recstack.core.config import RecallOptions, ServerOptions
from recstack.core.vectors import F32Array, l2_normalize, pack
from recstack.models.ort import SessionOptions
from recstack.v1 import recall_pb2, recall_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "recall.json"
DIM = 384


def fill_log(path: Path, vectors: F32Array, version: str) -> None:
    log = open_log(str(path))
    batch = 1000
    for start in tqdm(range(0, len(vectors), batch), desc="writing log", unit="k items"):
        log.append(
            [
                LogWrite(UPSERT, f"bench-{i}", f"item {i}", "", {}, vectors[i], version)
                for i in range(start, min(start + batch, len(vectors)))
            ]
        )
    log.close()


def timed_load(bundle: str, state: Path) -> tuple[float, Replica]:
    options = RecallOptions(
        bundle=bundle, state_dir=str(state), bundle_poll_s=0.0, snapshot_every=0
    )
    replica = Replica(options, SessionOptions(device="cpu"))
    started = time.perf_counter()
    replica.load()
    return time.perf_counter() - started, replica


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recall_bench", description=__doc__)
    parser.add_argument("--bundle", default="bundles")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    bundle = ensure_bundle(args.bundle)
    rng = np.random.default_rng(0)
    centers = l2_normalize(rng.standard_normal((200, bundle.dim)))
    vectors = clustered(args.items, rng, centers)
    queries = clustered(args.queries, np.random.default_rng(1), centers)
    results: dict[str, Any] = {
        "machine": platform.platform(),
        "items": args.items,
        "queries": args.queries,
        "bundle": bundle.version,
    }
    with tempfile.TemporaryDirectory(prefix="recall-bench-") as tmp:
        base_s, base = timed_load(str(bundle.root), Path(tmp) / "empty")
        base.close()
        fill_log(Path(tmp) / "full" / "catalog.db", vectors, bundle.version)
        full_s, replica = timed_load(str(bundle.root), Path(tmp) / "full")
        results["replay_seconds"] = full_s - base_s
        results["startup_empty_log_seconds"] = base_s
        core = replica.versions.primary()
        index = core.index

        specs = [SearchSpec(k=10)] * len(queries)
        t0 = time.perf_counter()
        with index.lock.read():
            single = [index.search(q[None, :], specs[:1])[0] for q in queries]
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with index.lock.read():
            batched = index.search(queries, specs, num_threads=2)
        batch_s = time.perf_counter() - t0
        exact = [index._exact(q, SearchSpec(k=10), None) for q in queries]
        recall = float(
            np.mean(
                [
                    len({h[0] for h in a} & {h[0] for h in e}) / 10
                    for a, e in zip(single, exact, strict=True)
                ]
            )
        )
        assert [[h[0] for h in r] for r in batched] == [[h[0] for h in r] for r in single]
        results.update(
            recall_at_10_vs_exact=recall,
            inprocess_single_qps=per_second(len(queries), single_s),
            inprocess_batched_qps=per_second(len(queries), batch_s),
        )

        replica.snapshot()  # the server below starts from it instead of replaying again
        running = serve(
            ServerOptions(port=0),
            RecallOptions(
                bundle=str(bundle.root),
                state_dir=str(Path(tmp) / "full"),
                bundle_poll_s=0.0,
                snapshot_every=0,
            ),
        )
        running.wait_ready(600)
        import grpc

        stub = recall_pb2_grpc.RecallServiceStub(
            grpc.insecure_channel(
                f"127.0.0.1:{running.port}", options=ServerOptions().grpc_options()
            )
        )
        requests = [
            recall_pb2.RecallRequest(query_vector=pack(q), k=10, omit_vectors=True) for q in queries
        ]
        stub.Recall(requests[0])  # warm the channel
        t0 = time.perf_counter()
        for r in requests:
            stub.Recall(r)
        rpc_single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, len(requests), 100):
            stub.RecallBatch(recall_pb2.RecallBatchRequest(requests=requests[start : start + 100]))
        rpc_batch_s = time.perf_counter() - t0
        running.stop(0)
        replica.close()
        results.update(
            rpc_single_qps=per_second(len(queries), rpc_single_s),
            rpc_batched_qps=per_second(len(queries), rpc_batch_s),
        )

    rows = [
        (
            "replay of logged upserts",
            f"{args.items} items",
            f"{results['replay_seconds']:.1f} s",
            f"{per_second(args.items, results['replay_seconds']):.0f} items/s",
        ),
        ("HNSW recall@10 vs exact", f"{args.queries} queries", f"{recall:.4f}", ""),
        (
            "in-process search",
            "single vs batched",
            f"{results['inprocess_single_qps']:.0f} vs {results['inprocess_batched_qps']:.0f} q/s",
            f"x{results['inprocess_batched_qps'] / results['inprocess_single_qps']:.2f}",
        ),
        (
            "gRPC Recall vs RecallBatch(100)",
            "single vs batched",
            f"{results['rpc_single_qps']:.0f} vs {results['rpc_batched_qps']:.0f} q/s",
            f"x{results['rpc_batched_qps'] / results['rpc_single_qps']:.2f}",
        ),
        (
            "gRPC vs in-process",
            "single query",
            f"{results['rpc_single_qps']:.0f} vs {results['inprocess_single_qps']:.0f} q/s",
            f"x{results['inprocess_single_qps'] / results['rpc_single_qps']:.2f} overhead",
        ),
    ]
    print(f"\nrecall bench on {results['machine']} ({args.items} live items, dim {DIM})")
    print(f"{'measure':34} {'setting':22} {'result':28} ratio")
    for row in rows:
        print(f"{row[0]:34} {row[1]:22} {row[2]:28} {row[3]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
