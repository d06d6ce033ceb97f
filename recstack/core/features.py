"""The ranker's side features: one definition for training and serving (no grpc, no ORT).

Per candidate, in this order (the bundle's ``ranker.side_features``):

- ``recall_score``: the candidate's inner product with the user vector (from recall);
- ``recall_rank``: ``log1p`` of its 0-based position in recall's answer;
- ``item_popularity``: ``log1p`` of how many users interacted with the item: in serving,
  over the bundle's user histories (``users/history.jsonl``, the counts the gateway's
  popularity fallback uses; items added live have 0); in training, over the input
  histories;
- ``history_length``: ``log1p`` of the number of history items the user vector was built
  from (0 for a query-only user);
- ``history_max_similarity``, ``history_mean_similarity``, ``last_item_similarity``: the
  candidate's inner product with its closest history item, the mean over the history
  items, and with the most recent one (item-to-item signals the sequential user vector
  blurs; 0 without history). Recall computes them (:func:`history_similarities`) from the
  same history vectors the user tower reads and returns them per candidate;
- ``item_recent_1d``, ``item_recent_7d``, ``item_recent_30d``: ``log1p`` of the item's
  interactions in the 1, 7 and 30 days before the request (:data:`RECENCY_WINDOWS_S`): in
  training, before each list's own time (``training.recency``); in serving, the bundle's
  counts as of its data's end (``items/recent.npy``, :func:`load_recency`; items added live
  have 0), what the global time split evaluates;
- ``since_last_interaction``: ``log1p`` of the hours between the request and the user's
  newest interaction, capped at :data:`MAX_GAP_S` (0 when unknown: a query-only user or an
  explicit history without times, which is what a caller sending its live session means).
  It tells the ranker a user in the middle of a session (most leave-last-out positions)
  from one returning after weeks (what the time split asks about), for whom what everyone
  watched meanwhile matters more. In training, the list's time minus its newest history
  item's; in serving, now minus the newest time the gateway's event store knows for the
  user (recorded events, else the bundle's ``users/history.jsonl`` ``last_time``).

The gateway assembles the features from recall's answer, the bundle and the user's
profile; training computes them the same way for its lists (``training.pipeline``).

Recent-popularity candidates: recall's HNSW answer knows nothing about time, so a bundle
may list the items most interacted with in the ``window_s`` before its data's end
(``items.recent_top``, :func:`load_recent_top`). When a recall asks for them
(``include_recent``), those that pass its exclusions and filters are **always** among the
k candidates, the best others by score fill the rest (:func:`join_recent`), every one
scored and featured like an HNSW candidate. Training and evaluation build their lists the
same way, with the top items as of each list's own time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from recstack.core.errors import BundleError
from recstack.core.vectors import F32Array

if TYPE_CHECKING:
    from recstack.core.bundle import Bundle

DAY_S = 86_400
SIMILARITIES = ("history_max_similarity", "history_mean_similarity", "last_item_similarity")
RECENCY_WINDOWS_S = (DAY_S, 7 * DAY_S, 30 * DAY_S)
RECENCY = ("item_recent_1d", "item_recent_7d", "item_recent_30d")
GAP = "since_last_interaction"
# Gaps longer than this all read as "long ago" (training data rarely spans more; a bundle
# served long after its data's end must not feed the ranker values it never saw).
MAX_GAP_S = 180 * DAY_S
RANKER_FEATURES = (
    "recall_score",
    "recall_rank",
    "item_popularity",
    "history_length",
    *SIMILARITIES,
    *RECENCY,
    GAP,
)


def unsupported(names: Sequence[str]) -> list[str]:
    """The names among ``names`` that :func:`candidate_features` cannot compute."""
    return [n for n in names if n not in RANKER_FEATURES]


def summarize_similarities(sims: np.ndarray) -> F32Array:
    """[N, 3] (max, mean, last) of an [N, H] candidate-by-history inner-product matrix
    (history oldest column first); zeros when H = 0."""
    if sims.shape[1] == 0 or not len(sims):
        return np.zeros((len(sims), len(SIMILARITIES)), np.float32)
    out = np.stack([sims.max(axis=1), sims.mean(axis=1), sims[:, -1]], axis=1)
    return out.astype(np.float32)


def history_similarities(candidates: np.ndarray, history: np.ndarray) -> F32Array:
    """:func:`summarize_similarities` of N candidate vectors against the history vectors
    [H, D] (oldest row first)."""
    cands = np.asarray(candidates, np.float32)  # [N, D], N may be 0
    hist = np.asarray(history, np.float32).reshape(-1, cands.shape[-1])
    return summarize_similarities(cands @ hist.T)


def gap_feature(gap_s: float | None) -> np.float32:
    """The ``since_last_interaction`` value of a gap in seconds (None or <= 0: unknown)."""
    if gap_s is None or gap_s <= 0:
        return np.float32(0.0)
    return np.float32(np.log1p(min(float(gap_s), MAX_GAP_S) / 3600.0))


def candidate_features(
    recall_scores: np.ndarray,
    popularity_counts: np.ndarray,
    history_length: int,
    similarities: np.ndarray | None = None,
    names: Sequence[str] = RANKER_FEATURES,
    recent_counts: np.ndarray | None = None,
    gap_s: float | None = None,
) -> F32Array:
    """[N, len(names)] features of N candidates in recall's order (best first);
    ``similarities`` [N, 3] as :func:`history_similarities` (None: no history);
    ``recent_counts`` [N, 3] interactions per :data:`RECENCY_WINDOWS_S` (None: none);
    ``gap_s`` seconds since the user's newest interaction (None: unknown)."""
    n = len(recall_scores)
    sims = np.zeros((n, 3), np.float32) if similarities is None else similarities
    recent = (
        np.zeros((n, len(RECENCY)), np.float32)
        if recent_counts is None
        else np.log1p(np.asarray(recent_counts, np.float32).reshape(n, len(RECENCY)))
    )
    columns = {
        "recall_score": np.asarray(recall_scores, dtype=np.float32),
        "recall_rank": np.log1p(np.arange(n, dtype=np.float32)),
        "item_popularity": np.log1p(np.asarray(popularity_counts, dtype=np.float32)),
        "history_length": np.full(n, np.log1p(np.float32(history_length)), np.float32),
        **{name: np.asarray(sims[:, j], np.float32) for j, name in enumerate(SIMILARITIES)},
        **{name: recent[:, j] for j, name in enumerate(RECENCY)},
        GAP: np.full(n, gap_feature(gap_s), np.float32),
    }
    out = np.empty((n, len(names)), np.float32)
    for j, name in enumerate(names):
        out[:, j] = columns[name]
    return out


def join_recent(scores: np.ndarray, recent: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` candidates to keep, best score first (ties: input order): every
    row flagged ``recent`` (the best ``k`` of them if there are more) and the best-scoring
    others for the remaining places. Rows must be distinct items (a recent item that HNSW
    also found is one row, flagged). Without flags this is the plain top-``k``, so it also
    merges shards' answers."""
    scores = np.asarray(scores, np.float32)
    flags = np.asarray(recent, bool)
    if len(scores) != len(flags):
        raise ValueError("scores and recent flags differ in length")
    # Recent rows sort before all others (then by score): the first k of this order are
    # the kept set; the kept set is then put in score order.
    by_score = np.argsort(-scores, kind="stable")
    kept = by_score[np.argsort(~flags[by_score], kind="stable")][: max(0, k)]
    return kept[np.argsort(-scores[kept], kind="stable")]


# Rank offset of the query-only fusion (reciprocal rank fusion's usual k, scaled to lists of
# ~100): a list's first item weighs 1/10, its tenth 1/20.
FUSION_K0 = 10
# The query-only fusion weights a build chooses from, on validation query-only users.
QUERY_RECENT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


def fuse_recent(
    ranked: Sequence[str], recent: Sequence[str], weight: float, k0: int = FUSION_K0
) -> list[int]:
    """Positions of ``ranked`` (the ranker's order, best first) in the order of
    ``1 / (k0 + ranked position) + weight / (k0 + position in recent)`` (the second term only
    for items in ``recent``, the bundle's recent-popularity list, most popular first); ties
    keep the ranker's order. The served order of a query-only request (no history): its
    query carries little beyond popularity, and trending items are the stronger prior there
    (docs/model-quality.md, "Query-only users"). ``weight`` 0 is the ranker's order."""
    at = {item: r for r, item in enumerate(recent)}
    score = [
        1.0 / (k0 + r) + (weight / (k0 + at[item]) if item in at else 0.0)
        for r, item in enumerate(ranked)
    ]
    return sorted(range(len(ranked)), key=lambda r: (-score[r], r))


def load_recent_top(bundle: Bundle) -> list[str]:
    """The bundle's recent-popularity candidates (``items.recent_top``), most recent
    interactions first; empty when it has none. BundleError if the list is malformed."""
    spec = bundle.section("items").get("recent_top")
    if not spec:
        return []
    ids = json.loads(bundle.path(spec["ids"]).read_text())
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise BundleError(f"bundle {bundle.version}: {spec['ids']} is not a list of item ids")
    if len(set(ids)) != len(ids) or len(ids) != int(spec.get("count", len(ids))):
        raise BundleError(
            f"bundle {bundle.version}: {spec['ids']} has {len(ids)} ids (distinct: "
            f"{len(set(ids))}), the manifest says {spec.get('count')}"
        )
    return ids


def load_recency(bundle: Bundle) -> dict[str, F32Array]:
    """Item id -> its interaction counts per :data:`RECENCY_WINDOWS_S` as of the bundle's
    data end (``ranker.recency``); empty when the bundle has none. Raises BundleError if
    the file does not match the catalog or the windows differ from this code's."""
    spec = bundle.section("ranker").get("recency")
    if not spec:
        return {}
    if tuple(spec.get("windows_s", ())) != RECENCY_WINDOWS_S:
        raise BundleError(
            f"bundle {bundle.version}: recency windows {spec.get('windows_s')} differ from "
            f"{list(RECENCY_WINDOWS_S)}"
        )
    counts = np.load(bundle.path(spec["counts"]), allow_pickle=False)
    ids = [it.id for it in bundle.iter_catalog()]
    if counts.shape != (len(ids), len(RECENCY_WINDOWS_S)) or not np.isfinite(counts).all():
        raise BundleError(
            f"bundle {bundle.version}: {spec['counts']} has shape {counts.shape}, expected "
            f"({len(ids)}, {len(RECENCY_WINDOWS_S)})"
        )
    return {i: counts[n].astype(np.float32) for n, i in enumerate(ids)}
