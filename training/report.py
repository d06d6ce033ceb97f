"""Cold-start measurements and the PNG plots of the training report.

Cold items: a seeded ``fraction`` of the items that some user holds out (validation or
test), so that there are users who "later interacted with them". Every interaction with
them is removed from training: anchors whose history or positives contain one are
dropped, and the projection head is re-trained on what is left, with the cold items left
out of the softmax's catalog (they are unknown then; the transformer itself is
the untrained base model in the quick/full profiles, so it never saw an interaction).
The items then enter the catalog by their text alone; for each held-out event on a cold
item the user's history text ranks the full catalog (input history excluded) and we count
Recall@20 of that item, next to the random expectation ``20 / (catalog - history)`` and to
the same events under the warm model (trained with those items).

Query-only users: every test user is served as if new, from a short query made of the
genre they watched most in train (``metadata.genres`` or ``metadata.topic``), with nothing
excluded; Recall@20 / NDCG@10 of their test item vs most-popular and random.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstack.text import UserTextSpec
from training import evaluate as ev
from training.data import Dataset, Split


def _project(vecs: np.ndarray, weight: np.ndarray) -> np.ndarray:
    out = vecs @ weight
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _genres(meta: dict[str, Any]) -> list[str]:
    g = meta.get("genres")
    if isinstance(g, list):
        return [str(x) for x in g]
    t = meta.get("topic")
    return [str(t)] if t else []


def cold_start(
    dataset: Dataset,
    split: Split,
    spec: UserTextSpec,
    anchors: Any,
    body_anchors: np.ndarray,
    body_items: np.ndarray,
    body_encoder: Any,
    warm_weight: np.ndarray,
    served_encoder: Any,
    served_items: np.ndarray,
    head_config: Any,
    fraction: float,
    seed: int,
    k: int = 20,
) -> dict[str, Any]:
    from training.two_tower import train_head

    item_ids = [it.id for it in dataset.items]
    n = len(item_ids)
    titles = {it.id: it.title for it in dataset.items}
    held = sorted({*split.valid.values(), *split.test.values()})
    rng = random.Random(seed)
    n_cold = max(1, round(fraction * n))
    cold_ids = set(rng.sample(held, min(n_cold, len(held))))
    cold_idx = {dataset.item_index[i] for i in cold_ids}

    keep_u: list[int] = []
    keep_p: list[int] = []
    for a, (hist, pos) in enumerate(zip(anchors.histories, anchors.positives, strict=True)):
        if cold_idx.intersection(hist):
            continue
        for p in pos:
            if p not in cold_idx:
                keep_u.append(a)
                keep_p.append(p)
    # The cold items do not exist at training time: they are neither positives nor
    # negatives of the softmax (otherwise it learns to push exactly those items down).
    catalog = np.asarray([j for j in range(n) if j not in cold_idx], dtype=np.int64)
    head = train_head(
        body_anchors,
        np.asarray(keep_u),
        np.asarray(keep_p),
        body_items,
        head_config,
        seed,
        catalog=catalog,
    )
    cold_items = _project(body_items, head.weight)

    # Held-out events on cold items: (history before it, target).
    cases: list[ev.EvalCase] = []
    for user in sorted(split.test):
        for phase, target in (("valid", split.valid[user]), ("test", split.test[user])):
            if target not in cold_ids:
                continue
            before = list(split.train[user]) + ([split.valid[user]] if phase == "test" else [])
            text = spec.build([titles[i] for i in before[::-1][: spec.max_history]])
            cases.append(ev.EvalCase(user, text, set(before), target))
    result: dict[str, Any] = {
        "cold_items": len(cold_ids),
        "events": len(cases),
        "train_examples_kept": len(keep_p),
    }
    if cases:
        body_users = ev.encode_texts(body_encoder, [c.text for c in cases], body_items.shape[1])
        targets: list[str | None] = [c.target for c in cases]
        cold_lists = ev.exact_lists(
            _project(body_users, head.weight), cold_items, cases, item_ids, k
        )
        warm_lists = ev.exact_lists(
            _project(body_users, warm_weight), _project(body_items, warm_weight), cases, item_ids, k
        )
        result["recall@20_cold_model"] = ev.recall_at_k(cold_lists, targets, k)
        result["recall@20_warm_model"] = ev.recall_at_k(warm_lists, targets, k)
        result["recall@20_random"] = float(np.mean([k / (n - len(c.seen)) for c in cases]))
        # How often a cold item shows up at all in the top-20 of users (exposure).
        result["cold_share_of_top20"] = float(
            np.mean([sum(i in cold_ids for i in lst) / max(1, len(lst)) for lst in cold_lists])
        )

    # Query-only users.
    q_cases: list[ev.EvalCase] = []
    queries: list[str] = []
    for user in sorted(split.test):
        counts: Counter[str] = Counter()
        for i in split.train[user]:
            counts.update(_genres(dataset.items[dataset.item_index[i]].metadata))
        if not counts:
            continue
        genre = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        query = spec.build([], query=genre)
        queries.append(query)
        q_cases.append(ev.EvalCase(user, query, set(), split.test[user]))
    if q_cases:
        uv = ev.encode_texts(served_encoder, queries, served_items.shape[1])
        q_targets: list[str | None] = [c.target for c in q_cases]
        lists = ev.exact_lists(uv, served_items, q_cases, item_ids, k)
        pop = ev.popularity_order(split, "test")[:k]
        result["query_users"] = {
            "users": len(q_cases),
            "example_query": queries[0],
            "model": {
                "recall@20": ev.recall_at_k(lists, q_targets, k),
                "ndcg@10": ev.ndcg_at_k(lists, q_targets, 10),
            },
            "most_popular": {
                "recall@20": ev.recall_at_k([pop] * len(q_cases), q_targets, k),
                "ndcg@10": ev.ndcg_at_k([pop] * len(q_cases), q_targets, 10),
            },
            "random": {"recall@20": k / n},
        }
    return result


def write_plots(out_dir: Path, report: dict[str, Any]) -> list[Path]:
    """loss_curves.png, metrics.png (test, every pipeline and baseline), cold_start.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    losses = report["losses"]
    panels = [(n, v) for n, v in losses.items() if v]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    labels = {
        "two_tower": ("transformer fine-tuning InfoNCE", "step"),
        "head": ("projection head, full-catalog softmax", "epoch"),
        "ranker": ("ranker BCE", "epoch"),
    }
    for ax, (name, values) in zip(axes[0], panels, strict=True):
        title, xl = labels.get(name, (name, "step"))
        ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) < 50 else None)
        ax.set(title=title, xlabel=xl, ylabel="train loss")
    fig.tight_layout()
    paths.append(out_dir / "loss_curves.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    test = report["results"]["test"]
    names = [n for n in ("ranked", "hnsw", "exact", "zero_shot", "most_popular") if n in test]
    shown = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    x = np.arange(len(shown))
    for j, name in enumerate(names):
        ax.bar(x + j * width, [test[name][m] for m in shown], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, shown)
    ax.set(title=f"test split, {test['users']} users, full-catalog ranking", ylabel="value")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "metrics.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    cold = report["cold_start"]
    bars: list[tuple[str, float]] = []
    if "recall@20_cold_model" in cold:
        bars += [
            ("cold items:\nwarm model", cold["recall@20_warm_model"]),
            ("cold items:\ntext only", cold["recall@20_cold_model"]),
            ("cold items:\nrandom", cold["recall@20_random"]),
        ]
    if "query_users" in cold:
        q = cold["query_users"]
        bars += [
            ("query-only user:\nmodel", q["model"]["recall@20"]),
            ("query-only user:\nmost popular", q["most_popular"]["recall@20"]),
            ("query-only user:\nrandom", q["random"]["recall@20"]),
        ]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    if bars:
        ax.bar(range(len(bars)), [b[1] for b in bars], color="tab:blue")
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set(title="cold start: Recall@20", ylabel="Recall@20")
    fig.tight_layout()
    paths.append(out_dir / "cold_start.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def summary_rows(results: dict[str, Any], names: Sequence[str]) -> list[str]:
    """Markdown table rows of ``names`` (pipelines/baselines) over ``ev.METRIC_NAMES``."""
    rows = []
    for name in names:
        if name in results:
            vals = " | ".join(f"{results[name][m]:.4f}" for m in ev.METRIC_NAMES)
            rows.append(f"| {name} | {vals} |")
    return rows
