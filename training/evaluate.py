"""Offline evaluation through the exported artifacts (what serving will actually compute).

Protocol (RecBole ``LS`` + ``TO`` + ``full``): per user, interactions in time order
(ties keep file order), the last one is the test item, the second-to-last the validation
item, the rest train. Every user with a held-out item gets the **whole catalog** ranked;
the items of the history that served as input are excluded from the ranking, exactly as
RecBole masks ``history_item`` for general recommenders:

- validation: input history = train, excluded = train items;
- test: input history = train + validation, excluded = train + validation items.

The user vector is the serving :class:`~recstack.encoder.TextEncoder`'s vector of the text
the recall service builds from that history (most recent first). Users without a held-out
item (fewer than 3 interactions) are not evaluated. With one relevant item per user,
Recall@k = Hit@k, NDCG@k = ``1 / log2(rank + 2)`` and MRR@k = ``1 / (rank + 1)`` for a hit
at 0-based ``rank < k``, else 0; metrics are means over evaluated users.

Ties in a score-based ranking are broken by catalog order (stable sort), so every list is
deterministic; the lists themselves never contain ties, so the metric code is exact.

Pipelines: ``exact`` (brute-force inner product over the catalog), ``hnsw`` (the index's
top-k, what recall serves), ``ranked`` (the ONNX ranker reorders the HNSW top-``N``: the
served path), and baselines ``most_popular`` (counts over the input history of all users)
and ``zero_shot`` (the same evaluation with the encoder before fine-tuning).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.text import UserTextSpec
from training.data import Dataset, Split

KS = (10, 20)
METRIC_NAMES = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "hit@10")


def hit_rank(ranked: Sequence[str], target: str, k: int) -> int | None:
    """0-based position of ``target`` within the first ``k`` of ``ranked``, else None."""
    for pos, item in enumerate(ranked[:k]):
        if item == target:
            return pos
    return None


def _pairs(
    ranked_lists: Sequence[Sequence[str]], targets: Sequence[str | None]
) -> list[tuple[Sequence[str], str]]:
    if len(ranked_lists) != len(targets):
        raise ValueError("ranked_lists and targets differ in length")
    # Users with no held-out item are not evaluated (RecBole drops them too).
    return [(r, t) for r, t in zip(ranked_lists, targets, strict=True) if t is not None]


def recall_at_k(
    ranked_lists: Sequence[Sequence[str]], targets: Sequence[str | None], k: int
) -> float:
    """Mean over evaluated users of 1 if the single held-out item is in the top k, else 0."""
    pairs = _pairs(ranked_lists, targets)
    if not pairs:
        return 0.0
    return sum(hit_rank(r, t, k) is not None for r, t in pairs) / len(pairs)


hit_at_k = recall_at_k  # one relevant item per user: Hit@k == Recall@k


def ndcg_at_k(
    ranked_lists: Sequence[Sequence[str]], targets: Sequence[str | None], k: int
) -> float:
    """Mean NDCG@k with one relevant item (ideal DCG = 1)."""
    pairs = _pairs(ranked_lists, targets)
    if not pairs:
        return 0.0
    total = 0.0
    for ranked, target in pairs:
        pos = hit_rank(ranked, target, k)
        if pos is not None:
            total += 1.0 / math.log2(pos + 2)
    return total / len(pairs)


def mrr_at_k(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str | None], k: int) -> float:
    """Mean reciprocal rank of the held-out item, 0 when it is not in the top k."""
    pairs = _pairs(ranked_lists, targets)
    if not pairs:
        return 0.0
    total = 0.0
    for ranked, target in pairs:
        pos = hit_rank(ranked, target, k)
        if pos is not None:
            total += 1.0 / (pos + 1)
    return total / len(pairs)


def all_metrics(
    ranked_lists: Sequence[Sequence[str]], targets: Sequence[str | None]
) -> dict[str, float]:
    """Recall@10/20, NDCG@10/20, MRR@10, Hit@10 (keys in ``METRIC_NAMES``)."""
    return {
        "recall@10": recall_at_k(ranked_lists, targets, 10),
        "recall@20": recall_at_k(ranked_lists, targets, 20),
        "ndcg@10": ndcg_at_k(ranked_lists, targets, 10),
        "ndcg@20": ndcg_at_k(ranked_lists, targets, 20),
        "mrr@10": mrr_at_k(ranked_lists, targets, 10),
        "hit@10": hit_at_k(ranked_lists, targets, 10),
    }


def top_k_from_scores(
    scores: np.ndarray, item_ids: Sequence[str], exclude: set[str], k: int
) -> list[str]:
    """Ids of the ``k`` best scores, excluded ids removed; ties keep catalog order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out: list[str] = []
    for j in order:
        item = item_ids[int(j)]
        if item in exclude:
            continue
        out.append(item)
        if len(out) == k:
            break
    return out


@dataclass
class EvalCase:
    user_id: str
    text: str
    seen: set[str]
    target: str


def eval_cases(
    dataset: Dataset, split: Split, spec: UserTextSpec, phase: str = "test"
) -> list[EvalCase]:
    """One case per user with a held-out item of ``phase`` ("valid" or "test")."""
    if phase not in ("valid", "test"):
        raise ValueError(f"phase must be 'valid' or 'test', not {phase!r}")
    titles = {it.id: it.title for it in dataset.items}
    cases = []
    held = split.test if phase == "test" else split.valid
    for user in sorted(held):
        before = list(split.train[user])
        if phase == "test":
            before.append(split.valid[user])
        text = spec.build([titles[i] for i in before[::-1][: spec.max_history]])
        cases.append(EvalCase(user, text, set(before), held[user]))
    return cases


def popularity_order(split: Split, phase: str = "test") -> list[str]:
    """Item ids by count over every user's input history for ``phase`` (ties by id)."""
    counts: Counter[str] = Counter()
    for user, seq in split.train.items():
        counts.update(seq)
        if phase == "test" and user in split.valid:
            counts[split.valid[user]] += 1
    return [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def most_popular_lists(
    split: Split, cases: Sequence[EvalCase], k: int, phase: str = "test"
) -> list[list[str]]:
    order = popularity_order(split, phase)
    out = []
    for case in cases:
        lst: list[str] = []
        for i in order:
            if i not in case.seen:
                lst.append(i)
                if len(lst) == k:
                    break
        out.append(lst)
    return out


def exact_lists(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    cases: Sequence[EvalCase],
    item_ids: Sequence[str],
    k: int,
) -> list[list[str]]:
    """Brute-force inner-product top-``k`` over the whole catalog, seen items excluded."""
    scores = user_vecs @ item_vecs.T
    return [
        top_k_from_scores(row, item_ids, case.seen, k)
        for row, case in zip(scores, cases, strict=True)
    ]


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


def encode_texts(encoder: Any, texts: Sequence[str], dim: int) -> np.ndarray:
    parts = [encoder.encode(texts[i : i + 256]) for i in range(0, len(texts), 256)]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def evaluate_pipelines(
    cases: Sequence[EvalCase],
    user_vecs: np.ndarray,
    item_ids: Sequence[str],
    item_vecs: np.ndarray,
    index: Any | None,
    ranker: Any | None,
    rerank_n: int,
) -> dict[str, dict[str, float]]:
    """Metrics of ``exact`` (always), ``hnsw`` (with an index) and ``ranked`` (with both)."""
    targets: list[str | None] = [c.target for c in cases]
    k = max(KS)
    out = {"exact": all_metrics(exact_lists(user_vecs, item_vecs, cases, item_ids, k), targets)}
    if index is not None:
        recalled = recall_lists(index, user_vecs, cases, item_ids, max(k, rerank_n))
        out["hnsw"] = all_metrics(recalled, targets)
        out["hnsw"][f"recall@{rerank_n}"] = recall_at_k(recalled, targets, rerank_n)
        if ranker is not None:
            item_pos = {i: n for n, i in enumerate(item_ids)}
            reranked = rerank_lists(ranker, user_vecs, recalled, item_vecs, item_pos)
            out["ranked"] = all_metrics(reranked, targets)
    return out


def baseline_most_popular(split: Split, cases: Sequence[EvalCase], phase: str) -> dict[str, float]:
    lists = most_popular_lists(split, cases, max(KS), phase)
    return all_metrics(lists, [c.target for c in cases])
