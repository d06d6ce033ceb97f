"""Offline evaluation through the exported artifacts (what serving will actually compute).

Protocol: leave-last-out. For every user with a test item, the user text is built from all
items before it (train + validation, most recent first, as serving does), encoded by the
serving :class:`~recstack.encoder.TextEncoder`, and the HNSW index ranks the full catalog;
items the user has already interacted with are excluded. With one relevant item per user,
Recall@k is the hit rate and NDCG@k is ``1 / log2(rank + 2)`` for a hit at 0-based rank.

Reported: recall-only metrics, the same after the ONNX ranker reorders the top
``rerank_n`` recall candidates, and a most-popular baseline (popularity counted over the
interactions before each user's test item, i.e. train + validation).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from recstack.encoder import TextEncoder
from recstack.text import UserTextSpec
from training.data import Dataset, Split


def hit_rank(ranked: Sequence[str], target: str, k: int) -> int | None:
    """0-based position of ``target`` within the first ``k`` of ``ranked``, else None."""
    for pos, item in enumerate(ranked[:k]):
        if item == target:
            return pos
    return None


def recall_at_k(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Mean over users of 1 if the single held-out item is in the top k, else 0."""
    if len(ranked_lists) != len(targets):
        raise ValueError("ranked_lists and targets differ in length")
    if not targets:
        return 0.0
    hits = sum(hit_rank(r, t, k) is not None for r, t in zip(ranked_lists, targets, strict=True))
    return hits / len(targets)


def ndcg_at_k(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Mean NDCG@k with one relevant item (ideal DCG = 1)."""
    if len(ranked_lists) != len(targets):
        raise ValueError("ranked_lists and targets differ in length")
    if not targets:
        return 0.0
    total = 0.0
    for ranked, target in zip(ranked_lists, targets, strict=True):
        pos = hit_rank(ranked, target, k)
        if pos is not None:
            total += 1.0 / math.log2(pos + 2)
    return total / len(targets)


@dataclass
class EvalCase:
    user_id: str
    text: str
    seen: set[str]
    target: str


def eval_cases(dataset: Dataset, split: Split, spec: UserTextSpec) -> list[EvalCase]:
    """One case per user with a test item: history text, seen items, held-out target."""
    titles = {it.id: it.title for it in dataset.items}
    cases = []
    for user in sorted(split.test):
        before = [*split.train[user], split.valid[user]]
        text = spec.build([titles[i] for i in before[::-1][: spec.max_history]])
        cases.append(EvalCase(user, text, set(before), split.test[user]))
    return cases


def most_popular_lists(split: Split, cases: Sequence[EvalCase], k: int) -> list[list[str]]:
    counts: Counter[str] = Counter()
    for user, seq in split.train.items():
        counts.update(seq)
        if user in split.valid:
            counts[split.valid[user]] += 1
    # Ties broken by id so the baseline is deterministic.
    order = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    out = []
    for case in cases:
        out.append([i for i in order if i not in case.seen][:k])
    return out


def recall_lists(
    index: Any, user_vecs: np.ndarray, cases: Sequence[EvalCase], item_ids: Sequence[str], n: int
) -> list[list[str]]:
    """Top-``n`` unseen item ids per user from the HNSW index."""
    out: list[list[str]] = []
    total = len(item_ids)
    for vec, case in zip(user_vecs, cases, strict=True):
        # Ask for enough neighbours that n survive the removal of seen items.
        want = min(total, n + len(case.seen))
        labels, _ = index.knn_query(vec[None, :], k=want)
        ids = [item_ids[int(j)] for j in labels[0]]
        out.append([i for i in ids if i not in case.seen][:n])
    return out


def rerank_lists(
    ranker: Any,
    user_vecs: np.ndarray,
    candidates: Sequence[Sequence[str]],
    item_vecs: np.ndarray,
    item_pos: dict[str, int],
) -> list[list[str]]:
    """Candidates reordered by the ONNX ranker's score (stable for equal scores)."""
    out: list[list[str]] = []
    for vec, cands in zip(user_vecs, candidates, strict=True):
        if not cands:
            out.append([])
            continue
        items = item_vecs[[item_pos[c] for c in cands]]
        users = np.repeat(vec[None, :], len(cands), axis=0).astype(np.float32)
        scores = ranker.run(["score"], {"user": users, "item": items})[0]
        order = np.argsort(-scores, kind="stable")
        out.append([cands[int(j)] for j in order])
    return out


def evaluate(
    dataset: Dataset,
    split: Split,
    spec: UserTextSpec,
    encoder: TextEncoder,
    index: Any,
    item_vecs: np.ndarray,
    ranker: Any,
    k: int = 10,
    rerank_n: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics dict for the manifest (keys ``recall@k``, ``ndcg@k``, ranked, most_popular)."""
    cases = eval_cases(dataset, split, spec)
    item_ids = [it.id for it in dataset.items]
    item_pos = {i: n for n, i in enumerate(item_ids)}
    targets = [c.target for c in cases]
    texts = [c.text for c in cases]
    chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    vec_parts = [
        encoder.encode(c)
        for c in tqdm(chunks, desc="eval users", disable=not progress, unit="chunk")
    ]
    user_vecs = (
        np.concatenate(vec_parts) if vec_parts else np.zeros((0, item_vecs.shape[1]), np.float32)
    )
    recalled = recall_lists(index, user_vecs, cases, item_ids, max(k, rerank_n))
    reranked = rerank_lists(ranker, user_vecs, recalled, item_vecs, item_pos)
    popular = most_popular_lists(split, cases, k)
    return {
        f"recall@{k}": recall_at_k(recalled, targets, k),
        f"ndcg@{k}": ndcg_at_k(recalled, targets, k),
        f"ranked_recall@{k}": recall_at_k(reranked, targets, k),
        f"ranked_ndcg@{k}": ndcg_at_k(reranked, targets, k),
        f"recall@{rerank_n}": recall_at_k(recalled, targets, rerank_n),
        "most_popular": {
            f"recall@{k}": recall_at_k(popular, targets, k),
            f"ndcg@{k}": ndcg_at_k(popular, targets, k),
        },
        "eval_users": len(cases),
    }
