"""Recall at catalog scale: synthetic 384-d catalogs of 10k, 100k and 1M items in 1, 2 and 4
shards, through the recall service's own index (``recall_service.index.ItemIndex``).

Vectors are clustered unit vectors (``bench.common.clustered``: top-1 cosine about 0.4,
like text embeddings; isotropic random vectors would make any ANN index look broken).
Items go to shards by ``recstack.core.sharding.shard_of`` as in serving. Per catalog size and
shard count:

- build time (all shards, ``add_items`` on every core, the bundle builder's path) and the
  memory the shards hold: hnswlib's index (graph and its copy of the vectors, measured as
  its saved size) plus the recall index's own vector table (``N x dim`` float32);
- search latency of one query, k = 10, p50 and p99 over ``--queries`` queries: per shard
  (``ItemIndex.search``, one thread) and the merged answer as a gateway fanning out in
  parallel sees it (the slowest shard; the merge itself is microseconds);
- recall@10 of the merged answer against exact search over the whole catalog.

A plot of build time, memory and p99 latency against catalog size, one line per shard
count, goes to ``bench/results/scale.png``; raw numbers to ``bench/results/scale.json``.

Usage: ``python -m bench.scale_bench [--sizes 10000,100000,1000000] [--shards 1,2,4]``.
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

from bench.common import clustered
from recall_service.index import IndexParams, ItemIndex, SearchSpec
from recstack.core.bundle import CatalogItem
from recstack.core.sharding import shard_of
from recstack.core.vectors import l2_normalize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DIM = 384
PARAMS = IndexParams(DIM, "ip", 16, 200, 64)  # the bundle builder's defaults


def _index_bytes(index: ItemIndex) -> int:
    """hnswlib's saved size (graph + its vectors) plus the item index's vector table."""
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        path = Path(tmp) / "index.bin"
        index._hnsw.save_index(str(path))
        return path.stat().st_size + index._vectors.nbytes


def _build_shard(ids: list[str], vectors: np.ndarray) -> ItemIndex:
    hnsw = ItemIndex._new_hnsw(PARAMS, len(ids))
    hnsw.add_items(vectors, np.arange(len(ids)), num_threads=-1)
    items: list[CatalogItem | None] = [CatalogItem(i, "", "", {}) for i in ids]
    return ItemIndex(PARAMS, hnsw, items, vectors, 0, exact_threshold=0)


def measure(n: int, shard_count: int, queries: np.ndarray, data: np.ndarray) -> dict[str, Any]:
    ids = [f"item-{i}" for i in range(n)]
    owner = np.array([shard_of(i, shard_count) for i in ids])
    t0 = time.perf_counter()
    shards = []
    for s in range(shard_count):
        rows = np.flatnonzero(owner == s)
        shards.append((rows, _build_shard([ids[r] for r in rows], data[rows])))
    build_s = time.perf_counter() - t0
    memory_mib = sum(_index_bytes(index) for _, index in shards) / 2**20
    per_shard: list[list[float]] = [[] for _ in shards]
    found = []
    for q in queries:
        hits = []
        for s, (rows, index) in enumerate(shards):
            t = time.perf_counter()
            labels, scores = index.search(q[None, :], [SearchSpec(k=10)])[0]
            per_shard[s].append(time.perf_counter() - t)
            hits += [(float(sc), int(rows[lab])) for lab, sc in zip(labels, scores, strict=True)]
        found.append({r for _, r in sorted(hits, reverse=True)[:10]})
    # Exact top-10 in query chunks (a 1M catalog's full score matrix would not fit twice).
    exact = np.concatenate(
        [
            np.argpartition(-(queries[c : c + 50] @ data.T), 10, axis=1)[:, :10]
            for c in range(0, len(queries), 50)
        ]
    )
    recall = float(
        np.mean([len(f & set(e.tolist())) / 10 for f, e in zip(found, exact, strict=True)])
    )
    slowest = np.max(np.asarray(per_shard), axis=0) * 1000  # parallel fan-out: the slowest shard
    shard_ms = np.asarray(per_shard) * 1000
    del shards
    return {
        "items": n,
        "shards": shard_count,
        "build_s": build_s,
        "memory_mib": memory_mib,
        "shard_p50_ms": float(np.percentile(shard_ms, 50)),
        "shard_p99_ms": float(np.percentile(shard_ms, 99)),
        "merged_p50_ms": float(np.percentile(slowest, 50)),
        "merged_p99_ms": float(np.percentile(slowest, 99)),
        "recall@10": recall,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        ("build_s", "build time (s)"),
        ("memory_mib", "index memory (MiB)"),
        ("merged_p99_ms", "search p99, k=10 (ms)"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for shards in sorted({r["shards"] for r in rows}):
            mine = [r for r in rows if r["shards"] == shards]
            ax.plot(
                [r["items"] for r in mine], [r[key] for r in mine], "o-", label=f"{shards} shard(s)"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalog size (items)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("recall index cost against catalog size (384-d, HNSW M=16, ef_c=200, ef=64)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the --out file's rows of other (items, shards) pairs and re-plot them all "
        "(to add a size without re-running the others)",
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    shard_counts = [int(x) for x in args.shards.split(",")]
    rng = np.random.default_rng(0)
    centers = l2_normalize(rng.standard_normal((1000, DIM)))
    queries = clustered(args.queries, np.random.default_rng(1), centers).astype(np.float32)
    rows = []
    print(
        f"{'items':>9} {'shards':>6} {'build s':>8} {'MiB':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'shard p99':>9} {'recall@10':>9}"
    )
    for n in sizes:
        data = clustered(n, np.random.default_rng(2), centers).astype(np.float32)
        for shards in shard_counts:
            row = measure(n, shards, queries, data)
            rows.append(row)
            print(
                f"{n:>9} {shards:>6} {row['build_s']:>8.1f} {row['memory_mib']:>7.0f} "
                f"{row['merged_p50_ms']:>7.3f} {row['merged_p99_ms']:>7.3f} "
                f"{row['shard_p99_ms']:>9.3f} {row['recall@10']:>9.4f}",
                flush=True,
            )
        del data
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        mine = {(r["items"], r["shards"]) for r in rows}
        kept = [
            r for r in json.loads(out.read_text())["rows"] if (r["items"], r["shards"]) not in mine
        ]
        rows = sorted(kept + rows, key=lambda r: (r["items"], r["shards"]))
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
