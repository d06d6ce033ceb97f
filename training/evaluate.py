"""Offline evaluation through the exported artifacts (what serving will actually compute).

Protocol (RecBole ``LS`` + ``TO`` + ``full``): per user, interactions in time order
(ties keep file order), the last one is the test item, the second-to-last the validation
item, the rest train. Every user with a held-out item gets the **whole catalog** ranked;
the items of the history that served as input are excluded from the ranking, exactly as
RecBole masks ``history_item`` for general recommenders:

- validation: input history = train, excluded = train items;
- test: input history = train + validation, excluded = train + validation items.

The user vector is the serving :class:`~recstack.models.user_tower.UserTower`'s vector of the
history's item vectors (the call the recall service makes). Users without a held-out
item (fewer than 3 interactions) are not evaluated. With one relevant item per user,
Recall@k = Hit@k, NDCG@k = ``1 / log2(rank + 2)`` and MRR@k = ``1 / (rank + 1)`` for a hit
at 0-based ``rank < k``, else 0; metrics are means over evaluated users.

Ties in a score-based ranking are broken by catalog order (stable sort), so every list is
deterministic; the lists themselves never contain ties, so the metric code is exact.

Pipelines: ``exact`` (brute-force inner product over the catalog), ``hnsw`` (the index's
top-k, what recall serves), ``ranked`` (the ONNX ranker reorders the HNSW top-``N`` with
the gateway's side features: the served path), and baselines ``most_popular`` (counts over
the input history of all users) and ``zero_shot`` (mean of the untrained encoder's vectors
of the history items, exact search).

Uncertainty: every metric gets a 95% bootstrap interval over users (1,000 resamples), and
pipelines are compared *paired* (the same resampled users for both), see
:func:`bootstrap_ci` and :func:`paired_difference`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.core.config import RecallOptions
from recstack.core.features import (
    RANKER_FEATURES,
    candidate_features,
    fuse_recent,
    history_similarities,
    join_recent,
)
from training.data import Dataset, Split

KS = (10, 20)
BOOTSTRAP = 1000
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
    """A user's input history (item ids, oldest first), what is masked, the held-out item.

    ``query`` (a free text) replaces or extends the history for query-user protocols."""

    user_id: str
    history: list[str]
    seen: set[str]
    target: str
    query: str = ""
    # When the request is made: as the user acts, i.e. the held-out interaction's time
    # (recency counts only what came strictly before it); the time split's cut there.
    time: int = 0
    # The newest history interaction's time (0: unknown, as for an explicit history).
    last_time: int = 0

    @property
    def gap_s(self) -> int | None:
        """Seconds from the newest history interaction to the request (None: unknown)."""
        if not self.history or not self.last_time or not self.time:
            return None
        return max(0, self.time - self.last_time)


def case_at(dataset: Dataset, user: str, before: list[str], target: str) -> EvalCase:
    """The user asked for ``target`` right after the interactions ``before`` (the first
    ``len(before)`` of their sequence), as they act: at the target's time, with their newest
    history item's time (leave-last-out cases, cold-start cases, ranker training lists)."""
    seq = dataset.user_interactions[user]
    last = seq[len(before) - 1].timestamp if before else 0
    return EvalCase(
        user, before, set(before), target, time=seq[len(before)].timestamp, last_time=last
    )


def eval_cases(dataset: Dataset, split: Split, phase: str = "test") -> list[EvalCase]:
    """One case per user with a held-out item of ``phase`` ("valid" or "test")."""
    if phase not in ("valid", "test"):
        raise ValueError(f"phase must be 'valid' or 'test', not {phase!r}")
    cases = []
    held = split.test if phase == "test" else split.valid
    for user in sorted(held):
        before = list(split.train[user])
        if phase == "test":
            before.append(split.valid[user])
        cases.append(case_at(dataset, user, before, held[user]))
    return cases


def _genres(meta: dict[str, Any]) -> list[str]:
    g = meta.get("genres")
    if isinstance(g, list):
        return [str(x) for x in g]
    t = meta.get("topic")
    return [str(t)] if t else []


def top_genre(dataset: Dataset, items: Sequence[str]) -> str | None:
    """The genre (``metadata.genres`` or ``topic``) most frequent among ``items`` (ties by
    name); None when they have none. The query a query-only user is simulated with."""
    counts: Counter[str] = Counter()
    for i in items:
        counts.update(_genres(dataset.items[dataset.item_index[i]].metadata))
    if not counts:
        return None
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def search_genre(dataset: Dataset, user: str, target: str) -> str | None:
    """One of ``target``'s genres, drawn with a seed of the user and the item (so a user's
    validation and test queries are independent draws, and every run draws the same); None
    when it has none. The query of a *search*: the user says what they want now."""
    genres = sorted(set(_genres(dataset.items[dataset.item_index[target]].metadata)))
    if not genres:
        return None
    return random.Random(f"search:{user}:{target}").choice(genres)


# The query-only protocols (``query_cases``): "taste", the genre the user watched most
# (a new user stating a preference: it carries little beyond popularity), and "search",
# one of the held-out item's own genres (a caller asking for what they want now: a list
# that ignores the text fails it).
QUERY_KINDS = ("taste", "search")


def query_cases(
    dataset: Dataset, split: Split, phase: str = "test", kind: str = "taste"
) -> list[EvalCase]:
    """Query-only users: each user with a held-out item of ``phase``, served as new from a
    query (:data:`QUERY_KINDS`): ``taste``, the genre they watched most in train
    (:func:`top_genre`); ``search``, one of the held-out item's genres
    (:func:`search_genre`). Nothing excluded; users without such a genre are left out."""
    if kind not in QUERY_KINDS:
        raise ValueError(f"kind must be one of {QUERY_KINDS}, not {kind!r}")
    held = split.test if phase == "test" else split.valid
    cases = []
    for user in sorted(held):
        genre = (
            top_genre(dataset, split.train[user])
            if kind == "taste"
            else search_genre(dataset, user, held[user])
        )
        if genre is not None:
            n = len(split.train[user]) + (1 if phase == "test" else 0)
            when = dataset.user_interactions[user][n].timestamp
            cases.append(EvalCase(user, [], set(), held[user], query=genre, time=when))
    return cases


def floor_margin(model: np.ndarray, floor: np.ndarray) -> float:
    """By how much per-user figures clear a baseline's on the same users beyond their
    noise: the mean of ``model - floor`` minus one standard error of that mean (>= 0: the
    model is above the floor by at least one standard error)."""
    d = np.asarray(model, np.float64) - np.asarray(floor, np.float64)
    if len(d) < 2:
        return float(d.mean()) if len(d) else 0.0
    return float(d.mean() - d.std(ddof=1) / np.sqrt(len(d)))


def pick_query_weight(curve: Sequence[dict[str, float]], constrained: bool = False) -> float:
    """The ``weight`` of the ``curve`` point (per weight: each protocol's validation
    figure and their ``mean``) with the best mean; ``constrained``: only among points whose
    ``taste_margin`` (:func:`floor_margin` of the taste figures over the popularity floor)
    is >= 0, or, when none is, among those with the best ``taste``. Ties: the smaller
    weight."""
    eligible = list(curve)
    if constrained:
        eligible = [p for p in curve if p["taste_margin"] >= 0]
        if not eligible:
            top = max(p["taste"] for p in curve)
            eligible = [p for p in curve if p["taste"] == top]
    return max(eligible, key=lambda p: (p["mean"], -p["weight"]))["weight"]


def genre_popular_lists(
    dataset: Dataset, split: Split, cases: Sequence[EvalCase], phase: str, k: int = 20
) -> list[list[str]]:
    """Per query-only case, the ``k`` most popular items (:func:`popularity_order`) whose
    genres include the case's query: the metadata baseline of a genre query (it reads the
    genre labels, which the served path never sees; it sees only the query's text)."""
    order = popularity_order(split, phase)
    by_genre: dict[str, list[str]] = {}
    for item in order:
        for g in _genres(dataset.items[dataset.item_index[item]].metadata):
            lst = by_genre.setdefault(g, [])
            if len(lst) < k:
                lst.append(item)
    return [list(by_genre.get(c.query, [])) for c in cases]


def user_vectors(
    tower: Any,
    cases: Sequence[EvalCase],
    item_vecs: np.ndarray,
    item_index: dict[str, int],
    query_vecs: np.ndarray | None = None,
    user_prior: bool = True,
) -> np.ndarray:
    """The served user vectors: ``tower.encode`` over each history's item vectors (most
    recent ``tower.max_len``) and, if given, the case's query vector (``user_prior``: as
    the gateway's Recommend asks for it)."""
    out = []
    dim = item_vecs.shape[1]
    for s in range(0, len(cases), 512):
        chunk = cases[s : s + 512]
        histories = [
            item_vecs[[item_index[i] for i in c.history[-tower.max_len :]]].reshape(-1, dim)
            for c in chunk
        ]
        queries = None if query_vecs is None else list(query_vecs[s : s + 512])
        out.append(tower.encode(histories, queries, [user_prior] * len(chunk)))
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def mean_vectors(
    cases: Sequence[EvalCase], vecs: np.ndarray, item_index: dict[str, int], last: int = 50
) -> np.ndarray:
    """Normalised mean of the vectors of each history's ``last`` items (zero-shot user)."""
    out = np.zeros((len(cases), vecs.shape[1]), np.float32)
    for n, case in enumerate(cases):
        if case.history:
            out[n] = vecs[[item_index[i] for i in case.history[-last:]]].mean(axis=0)
    norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return (out / norms).astype(np.float32)


def input_counts(split: Split, phase: str = "test") -> Counter[str]:
    """Per item, how many users have it in their input history for ``phase`` (a user
    counts once, as the gateway's popularity counts its seed profiles)."""
    counts: Counter[str] = Counter()
    for user, seq in split.train.items():
        items = set(seq)
        if phase == "test" and user in split.valid:
            items.add(split.valid[user])
        counts.update(items)
    return counts


def popularity_order(split: Split, phase: str = "test") -> list[str]:
    """Item ids by count over every user's input history for ``phase`` (ties by id)."""
    counts = input_counts(split, phase)
    return [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def unseen_lists(order: Sequence[str], cases: Sequence[EvalCase], k: int) -> list[list[str]]:
    """Per case, the first ``k`` ids of one global ``order`` that the case has not seen."""
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


def most_popular_lists(
    split: Split, cases: Sequence[EvalCase], k: int, phase: str = "test"
) -> list[list[str]]:
    return unseen_lists(popularity_order(split, phase), cases, k)


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
) -> list[tuple[list[str], list[float]]]:
    """Top-``n`` unseen (item ids, inner-product scores) per user, searched as the recall
    service searches: a catalog of at most ``RecallOptions.full_scan_threshold`` items by
    scanning every vector (exact), a larger one through the HNSW index."""
    out: list[tuple[list[str], list[float]]] = []
    total = len(item_ids)
    if total <= RecallOptions().full_scan_threshold:
        vectors = np.asarray(index.get_items(list(range(total))), np.float32)
        pos = {i: j for j, i in enumerate(item_ids)}
        for row, case in zip(user_vecs @ vectors.T, cases, strict=True):
            top = top_k_from_scores(row, item_ids, case.seen, n)
            out.append((top, [float(row[pos[i]]) for i in top]))
        return out
    for vec, case in zip(user_vecs, cases, strict=True):
        # Ask for enough neighbours that n survive the removal of seen items.
        want = min(total, n + len(case.seen))
        labels, dist = index.knn_query(vec[None, :], k=want)
        kept = [
            (item_ids[int(j)], 1.0 - float(d))  # hnswlib "ip" distance is 1 - dot
            for j, d in zip(labels[0], dist[0], strict=True)
            if item_ids[int(j)] not in case.seen
        ][:n]
        out.append(([i for i, _ in kept], [sc for _, sc in kept]))
    return out


def with_recent(
    recalled: Sequence[tuple[list[str], list[float]]],
    user_vecs: np.ndarray,
    cases: Sequence[EvalCase],
    recent: Sequence[Sequence[str]],
    item_vecs: np.ndarray,
    item_pos: dict[str, int],
    n: int,
) -> list[tuple[list[str], list[float]]]:
    """Recall's top-``n`` per case joined with the case's recent-popularity items
    (``recent[b]``, most first), as the recall service joins them for ``include_recent``:
    the unseen recent items are always kept, scored by inner product with the user
    vector, the best others fill up to ``n`` (:func:`recstack.core.features.join_recent`)."""
    out: list[tuple[list[str], list[float]]] = []
    for vec, case, (ids, scores), top in zip(user_vecs, cases, recalled, recent, strict=True):
        ids, scores = ids[:n], scores[:n]
        known, wanted = set(ids), set(top)
        extra = [i for i in dict.fromkeys(top) if i not in case.seen and i not in known]
        extra_scores = item_vecs[[item_pos[i] for i in extra]].reshape(-1, len(vec)) @ vec
        flags = np.asarray([i in wanted for i in ids] + [True] * len(extra), bool)
        all_ids = list(ids) + extra
        all_scores = np.concatenate(
            [np.asarray(scores, np.float32), extra_scores.astype(np.float32)]
        )
        keep = join_recent(all_scores, flags, n)
        out.append(([all_ids[j] for j in keep], [float(all_scores[j]) for j in keep]))
    return out


def rerank_lists(
    ranker: Any,
    user_vecs: np.ndarray,
    recalled: Sequence[tuple[list[str], list[float]]],
    item_vecs: np.ndarray,
    item_pos: dict[str, int],
    counts: Counter[str],
    histories: Sequence[np.ndarray],
    history_lengths: Sequence[int],
    recent: Sequence[np.ndarray | None] | None = None,
    gaps: Sequence[float | None] | None = None,
    feature_names: Sequence[str] = RANKER_FEATURES,
) -> list[list[str]]:
    """Candidates reordered by the ONNX ranker's score (stable for equal scores), with the
    side features the gateway sends (:func:`recstack.core.features.candidate_features`);
    ``histories`` are the vectors the user vector was built from (for the similarities);
    ``recent[b]`` the catalog's [N_items, 3] recency counts at case b's time (or None);
    ``gaps[b]`` seconds since case b's newest history interaction (None: unknown);
    ``feature_names`` the ranker's declared side features (its bundle's
    ``ranker.side_features``)."""
    names = {i.name for i in ranker.get_inputs()}
    out: list[list[str]] = []
    recents = list(recent) if recent is not None else [None] * len(recalled)
    gap_list = list(gaps) if gaps is not None else [None] * len(recalled)
    for vec, (cands, scores), hist, n_hist, counts_now, gap in zip(
        user_vecs, recalled, histories, history_lengths, recents, gap_list, strict=True
    ):
        if not cands:
            out.append([])
            continue
        items = item_vecs[[item_pos[c] for c in cands]]
        feed = {
            "user": np.repeat(vec[None, :], len(cands), axis=0).astype(np.float32),
            "item": items,
        }
        if "features" in names:
            pops = np.asarray([counts[c] for c in cands])
            rows = [item_pos[c] for c in cands]
            feed["features"] = candidate_features(
                np.asarray(scores),
                pops,
                n_hist,
                history_similarities(items, hist),
                names=feature_names,
                recent_counts=None if counts_now is None else counts_now[rows],
                gap_s=gap,
            )
        ranked = ranker.run(["score"], feed)[0]
        order = np.argsort(-ranked, kind="stable")
        out.append([cands[int(j)] for j in order])
    return out


def history_matrix(
    case: EvalCase, item_vecs: np.ndarray, item_index: dict[str, int], window: int
) -> np.ndarray:
    """[n, D] vectors of the case's last ``window`` history items (oldest first)."""
    rows = [item_index[i] for i in case.history[-window:]]
    return item_vecs[rows].reshape(len(rows), item_vecs.shape[1])


def per_user(
    ranked_lists: Sequence[Sequence[str]], targets: Sequence[str | None], k: int, kind: str
) -> np.ndarray:
    """Per evaluated user: NDCG@k (``kind="ndcg"``) or Recall@k (``"recall"``) contribution."""
    vals = []
    for ranked, target in _pairs(ranked_lists, targets):
        pos = hit_rank(ranked, target, k)
        if pos is None:
            vals.append(0.0)
        else:
            vals.append(1.0 / math.log2(pos + 2) if kind == "ndcg" else 1.0)
    return np.asarray(vals, dtype=np.float64)


def bootstrap_ci(values: np.ndarray, seed: int = 0, n: int = BOOTSTRAP) -> list[float]:
    """95% percentile bootstrap interval of the mean over users."""
    if len(values) == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def group_bootstrap_ratio(
    num: np.ndarray, den: np.ndarray, groups: Sequence[str], seed: int = 0, n: int = BOOTSTRAP
) -> list[float]:
    """95% percentile bootstrap interval of ``sum(num) / sum(den)`` when whole groups are
    resampled (e.g. the events of one cold item together: the item draw, not the users, is
    what such a figure depends on most). ``den`` of ones gives the interval of the mean."""
    keys = sorted(set(groups))
    if not keys:
        return [0.0, 0.0]
    at = {g: i for i, g in enumerate(keys)}
    which = np.asarray([at[g] for g in groups], dtype=np.int64)
    g_num = np.bincount(which, weights=np.asarray(num, np.float64), minlength=len(keys))
    g_den = np.bincount(which, weights=np.asarray(den, np.float64), minlength=len(keys))
    pick = np.random.default_rng(seed).integers(0, len(keys), size=(n, len(keys)))
    ratios = g_num[pick].sum(axis=1) / np.maximum(g_den[pick].sum(axis=1), 1e-12)
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def paired_difference(
    a: np.ndarray, b: np.ndarray, seed: int = 0, n: int = BOOTSTRAP
) -> dict[str, Any]:
    """Mean of ``a - b`` over the same users, its 95% bootstrap interval, and whether the
    interval excludes 0 (``a`` better / worse) or not ("no difference")."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    lo, hi = bootstrap_ci(d, seed, n)
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "no difference"
    return {"mean": float(d.mean()) if len(d) else 0.0, "ci95": [lo, hi], "verdict": verdict}


def compare_served(new: dict[str, Any], old: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Two bundles' served NDCG@10 compared *paired* over the users both evaluated, per
    phase: ``new`` and ``old`` are their reports' ``per_user_served`` sections
    (``{phase: {"users": [...], "ndcg@10": [...]}}``). Per phase present in both: the
    number of common users, each side's mean over them and :func:`paired_difference`
    (new - old). Raises ValueError when no phase has users in common."""
    out: dict[str, dict[str, Any]] = {}
    for phase in sorted(set(new) & set(old)):
        a = dict(zip(new[phase]["users"], new[phase]["ndcg@10"], strict=True))
        b = dict(zip(old[phase]["users"], old[phase]["ndcg@10"], strict=True))
        users = sorted(set(a) & set(b))
        if not users:
            continue
        x = np.asarray([a[u] for u in users], np.float64)
        y = np.asarray([b[u] for u in users], np.float64)
        out[phase] = {
            "users": len(users),
            "new": float(x.mean()),
            "old": float(y.mean()),
            "new_minus_old": paired_difference(x, y),
        }
    if not out:
        raise ValueError("the two reports share no evaluated users")
    return out


def with_intervals(
    lists: Sequence[Sequence[str]], targets: Sequence[str | None], seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`all_metrics` plus ``ci95`` for NDCG@10 and Recall@20; also the per-user
    arrays, for paired comparisons."""
    m: dict[str, Any] = dict(all_metrics(lists, targets))
    arrays = {
        "ndcg@10": per_user(lists, targets, 10, "ndcg"),
        "recall@20": per_user(lists, targets, 20, "recall"),
    }
    m["ci95"] = {name: bootstrap_ci(v, seed) for name, v in arrays.items()}
    return m, arrays


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
    counts: Counter[str] | None = None,
    per_user_out: dict[str, dict[str, np.ndarray]] | None = None,
    window: int = 50,
    recency: Callable[[int], np.ndarray] | None = None,
    recent_top: Callable[[int], Sequence[str]] | None = None,
    lists_out: dict[str, list[list[str]]] | None = None,
    feature_names: Sequence[str] = RANKER_FEATURES,
) -> dict[str, dict[str, Any]]:
    """Metrics (with intervals) of ``exact`` (always), ``hnsw`` (with an index) and
    ``ranked`` (with both; ``counts`` give the popularity feature). ``per_user_out``, when
    given, receives each pipeline's per-user arrays (for paired comparisons). ``window``:
    the user tower's history length (the similarity features read the same items).
    ``recency(time)``: the catalog's [N_items, 3] recency counts at a case's time;
    ``recent_top(time)``: the recent-popularity candidate ids joined to the ranked
    pipeline's candidates at a case's time (:func:`with_recent`; None: none).
    ``lists_out``, when given, receives the ranked and recall-only pipelines' lists
    (``"ranked"``, ``"hnsw"``);
    ``feature_names``: the ranker's declared side features."""
    targets: list[str | None] = [c.target for c in cases]
    k = max(KS)
    out: dict[str, dict[str, Any]] = {}
    store = per_user_out if per_user_out is not None else {}
    out["exact"], store["exact"] = with_intervals(
        exact_lists(user_vecs, item_vecs, cases, item_ids, k), targets
    )
    if index is not None:
        recalled = recall_lists(index, user_vecs, cases, item_ids, max(k, rerank_n))
        out["hnsw"], store["hnsw"] = with_intervals([ids for ids, _ in recalled], targets)
        if lists_out is not None:
            lists_out["hnsw"] = [list(ids) for ids, _ in recalled]
        out["hnsw"][f"recall@{rerank_n}"] = recall_at_k(
            [ids for ids, _ in recalled], targets, rerank_n
        )
        if ranker is not None:
            item_pos = {i: n for n, i in enumerate(item_ids)}
            candidates = [(ids[:rerank_n], sc[:rerank_n]) for ids, sc in recalled]
            if recent_top is not None:
                tops = [recent_top(c.time) for c in cases]
                candidates = with_recent(
                    candidates, user_vecs, cases, tops, item_vecs, item_pos, rerank_n
                )
            reranked = rerank_lists(
                ranker,
                user_vecs,
                candidates,
                item_vecs,
                item_pos,
                counts or Counter(),
                [history_matrix(c, item_vecs, item_pos, window) for c in cases],
                [len(c.history) for c in cases],
                None if recency is None else [recency(c.time) for c in cases],
                [c.gap_s for c in cases],
                feature_names,
            )
            out["ranked"], store["ranked"] = with_intervals(reranked, targets)
            if lists_out is not None:
                lists_out["ranked"] = [list(x) for x in reranked]
    return out


def served_query_only(
    cases: Sequence[EvalCase],
    query_vecs: np.ndarray,
    tower: Any,
    item_ids: Sequence[str],
    item_vecs: np.ndarray,
    item_index: dict[str, int],
    index: Any,
    ranker: Any,
    rerank_n: int,
    counts: Counter[str],
    window: int,
    recency: Callable[[int], np.ndarray] | None,
    recent_top: Callable[[int], Sequence[str]] | None,
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    """The served path of query-only ``cases`` (as new users: the query vectors blended
    with the prior, recall, the recent join, the ranker): :func:`evaluate_pipelines`'
    metrics and the ranker's order of every candidate per case (what
    :func:`fused_query_lists` fuses)."""
    uv = user_vectors(tower, cases, item_vecs, item_index, query_vecs)
    lists: dict[str, list[list[str]]] = {}
    metrics = evaluate_pipelines(
        cases,
        uv,
        item_ids,
        item_vecs,
        index,
        ranker,
        rerank_n,
        counts,
        window=window,
        recency=recency,
        recent_top=recent_top,
        lists_out=lists,
    )
    return metrics, lists["ranked"]


def baseline_most_popular(
    split: Split,
    cases: Sequence[EvalCase],
    phase: str,
    per_user_out: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    lists = most_popular_lists(split, cases, max(KS), phase)
    m, arrays = with_intervals(lists, [c.target for c in cases])
    if per_user_out is not None:
        per_user_out["most_popular"] = arrays
    return m


def fused_query_lists(
    ranked: Sequence[Sequence[str]],
    cases: Sequence[EvalCase],
    recent_top: Callable[[int], Sequence[str]] | None,
    weight: float,
    k: int = 20,
) -> list[list[str]]:
    """The served order of query-only requests: each case's ranked list (every candidate,
    best first) fused with the recent-popularity items at its time at ``weight``, as the
    gateway orders them (:func:`recstack.core.features.fuse_recent`), cut to ``k``."""
    out = []
    for case, lst in zip(cases, ranked, strict=True):
        recent = recent_top(case.time) if recent_top is not None and weight else ()
        out.append([lst[r] for r in fuse_recent(lst, recent, weight)[:k]])
    return out
