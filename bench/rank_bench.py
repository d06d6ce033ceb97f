"""Rank benchmarks, measured side by side in one run; prints ratios, writes JSON.

1. **ORT vs torch eager** on the same ranker weights: the bundle's ``ranker/model.onnx`` run
   by ONNX Runtime, and ``training.ranker.FusionRanker`` with its weights loaded from that
   ONNX file's initializers (checked to agree to 1e-5), for 1, 100 and 500 candidates,
   both with the same thread count. Median latency per call, timed alternately in rounds
   so that background load hits both equally.
2. **Dynamic batching on vs off**: two real rank servers (subprocesses, ``--port 0``), one
   with ``--batching`` and one with ``--no-batching``, each driven in turn by the same
   closed-loop load: ``--clients`` concurrent clients (default 32) sending Rank requests of
   ``--candidates`` candidates. Throughput, p50 and p95 latency, and the mean merged batch
   read from the server's own Prometheus metrics.

Usage: ``python -m bench.rank_bench [--bundle bundles] [--seconds 8] [--out FILE]``. Without
a bundle at ``--bundle`` the tiny one is trained into a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from bench.common import ensure_bundle, median_ms
from bench.rank_load import RankProcess, drive
from recstack.core.bundle import Bundle
from recstack.core.features import candidate_features
from recstack.tools.procs import free_port
from training.ranker import FusionRanker

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "rank.json"


# ---------------------------------------------------------------- bundle


# ---------------------------------------------------------------- ORT vs torch


def torch_ranker_from_onnx(model_path: Path, dim: int) -> FusionRanker:
    """FusionRanker with the ONNX file's weights (initializer names are state_dict keys)."""
    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
        for t in onnx.load(str(model_path)).graph.initializer
    }
    layers = sorted(  # Linear layers only (2-D weights; the LayerNorm's is 1-D)
        {
            int(k.split(".")[1])
            for k, w in weights.items()
            if k.startswith("mlp.") and k.endswith("weight") and w.ndim == 2
        }
    )
    hidden = tuple(int(weights[f"mlp.{i}.weight"].shape[0]) for i in layers[:-1])
    features = int(weights["f_mean"].shape[0]) if "f_mean" in weights else 0
    model = FusionRanker(dim, hidden, features=features)
    model.load_state_dict(weights, strict=True)
    model.eval()
    return model


def ort_vs_torch(bundle: Bundle, threads: int, budget_s: float) -> list[dict[str, Any]]:
    spec = bundle.section("ranker")
    path = bundle.path(spec["model"])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    torch.set_num_threads(threads)
    model = torch_ranker_from_onnx(path, bundle.dim)
    rng = np.random.default_rng(0)
    rows = []
    for n in (1, 100, 500):
        user = rng.standard_normal((1, bundle.dim)).astype(np.float32)
        items = rng.standard_normal((n, bundle.dim)).astype(np.float32)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        users = np.repeat(user / np.linalg.norm(user), n, axis=0)
        feeds = {"user": users, "item": items}
        if model.features:
            feeds["features"] = candidate_features(
                items @ users[0], np.zeros(n), 10, names=spec.get("side_features", ())
            )
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def run_ort(feeds: dict[str, np.ndarray] = feeds) -> np.ndarray:
            return session.run([spec["output"]], feeds)[0]

        def run_torch(t: dict[str, torch.Tensor] = tensors) -> np.ndarray:
            with torch.inference_mode():
                return model(t["user"], t["item"], t.get("features")).numpy()

        diff = float(np.max(np.abs(run_ort().reshape(-1) - run_torch().reshape(-1))))
        if diff > 1e-5:
            raise SystemExit(f"torch and ORT rankers disagree by {diff:.3g} at n={n}")
        for _ in range(20):
            run_ort()
            run_torch()
        ort_ms, torch_ms = [], []
        for _ in range(5):  # alternate rounds: both see the same background load
            ort_ms.append(median_ms(run_ort, 20, budget_s / 10))
            torch_ms.append(median_ms(run_torch, 20, budget_s / 10))
        o, t = statistics.median(ort_ms), statistics.median(torch_ms)
        rows.append(
            {
                "candidates": n,
                "ort_ms": round(o, 4),
                "torch_ms": round(t, 4),
                "torch_over_ort": round(t / o, 2),
                "max_abs_diff": diff,
            }
        )
    return rows


# ---------------------------------------------------------------- batching on vs off


def batching_on_off(bundle: Bundle, args: argparse.Namespace) -> dict[str, Any]:
    common = ["--max-workers", str(args.clients + 4), "--max-concurrent-rpcs", "512",
              "--max-candidates", str(max(args.candidates, 2000))]  # fmt: skip
    configs = {
        "off": ["--no-batching"],
        "on": ["--batching", "--max-queue-delay-ms", str(args.max_queue_delay_ms)],
    }
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in configs.items():
            with RankProcess(bundle.root, common + extra, Path(tmp), name) as server:
                res = drive(server.port, bundle, args.clients, args.candidates, args.seconds)
                count = server.metric("recstack_rank_batch_requests_count")
                total = server.metric("recstack_rank_batch_requests_sum")
                res["mean_requests_per_run"] = round(total / count, 2) if count else 1.0
                out[name] = res
                print(f"  batching {name}: {res}", flush=True)
    out["throughput_on_over_off"] = round(out["on"]["rps"] / out["off"]["rps"], 2)
    out["p95_off_over_on"] = round(out["off"]["p95_ms"] / out["on"]["p95_ms"], 2)
    return out


def processes_one_vs_two(bundle: Bundle, args: argparse.Namespace) -> dict[str, Any]:
    """The same load against 1 process and 2 SO_REUSEPORT workers (batching on in both)."""
    common = ["--max-workers", str(args.clients + 4), "--max-concurrent-rpcs", "512",
              "--max-candidates", str(max(args.candidates, 2000))]  # fmt: skip
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            extra = ["--processes", str(n), "--port", str(free_port())] if n > 1 else []
            with RankProcess(bundle.root, common + extra, Path(tmp), f"p{n}") as server:
                time.sleep(3 if n > 1 else 0)  # let every worker finish loading
                out[str(n)] = drive(
                    server.port, bundle, args.clients, args.candidates, args.seconds
                )
                print(f"  processes {n}: {out[str(n)]}", flush=True)
    out["throughput_2_over_1"] = round(out["2"]["rps"] / out["1"]["rps"], 2)
    out["p95_1_over_2"] = round(out["1"]["p95_ms"] / out["2"]["p95_ms"], 2)
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rank_bench", description=__doc__)
    parser.add_argument("--bundle", default="bundles", help="bundle dir or root with CURRENT")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads for ORT and torch in part 1")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=3.0, help="timing budget per size")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration per server")
    parser.add_argument("--max-queue-delay-ms", type=float, default=1.0)
    parser.add_argument("--skip-servers", action="store_true")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    bundle = ensure_bundle(args.bundle)
    print(f"bundle {bundle.version} ({bundle.root}); {os.cpu_count()} CPUs", flush=True)
    print("ORT vs torch eager (same weights, CPU)...", flush=True)
    kernels = ort_vs_torch(bundle, args.threads, args.budget_s)
    serving = None if args.skip_servers else batching_on_off(bundle, args)
    workers = None if args.skip_servers else processes_one_vs_two(bundle, args)

    print(f"\nRanker, one call (median ms; CPU, {args.threads} threads)")
    print(f"{'candidates':>10} {'ORT ms':>9} {'torch ms':>9} {'torch/ORT':>10}")
    for r in kernels:
        print(
            f"{r['candidates']:>10} {r['ort_ms']:>9.3f} {r['torch_ms']:>9.3f} "
            f"{r['torch_over_ort']:>9.2f}x"
        )
    if serving:
        print(
            f"\nRank server, {args.clients} concurrent clients, {args.candidates} candidates/"
            f"request, {args.seconds:g}s each"
        )
        print(f"{'batching':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/run':>8}")
        for name in ("off", "on"):
            s = serving[name]
            print(
                f"{name:>8} {s['rps']:>8.1f} {s['p50_ms']:>8.2f} {s['p95_ms']:>8.2f} "
                f"{s['mean_requests_per_run']:>8.2f}"
            )
        print(
            f"throughput on/off: {serving['throughput_on_over_off']:.2f}x, "
            f"p95 off/on: {serving['p95_off_over_on']:.2f}x"
        )
    if workers:
        print(f"\nRank server, 1 process vs 2 SO_REUSEPORT workers ({args.clients} clients)")
        for n in ("1", "2"):
            w = workers[n]
            print(f"{n:>8} {w['rps']:>8.1f} {w['p50_ms']:>8.2f} {w['p95_ms']:>8.2f}")
        print(
            f"throughput 2/1: {workers['throughput_2_over_1']:.2f}x, "
            f"p95 1/2: {workers['p95_1_over_2']:.2f}x"
        )
    result = {
        "bundle_version": bundle.version,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "providers": ort.get_available_providers(),
        },
        "args": vars(args),
        "ort_vs_torch": kernels,
        "batching": serving,
        "processes": workers,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
