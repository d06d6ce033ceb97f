"""The ranker's side features: one definition for training and serving (no grpc, no ORT).

Per candidate, in this order (the bundle's ``ranker.side_features``):

- ``recall_score``: the candidate's inner product with the user vector (from recall);
- ``recall_rank``: ``log1p`` of its 0-based position in recall's answer;
- ``item_popularity``: ``log1p`` of the item's interaction count: in serving, over the
  bundle's user histories (``users/history.jsonl``, the counts the gateway's popularity
  fallback uses; items added live have 0); in training, over the input histories;
- ``history_length``: ``log1p`` of the number of history items the user vector was built
  from (0 for a query-only user).

The gateway computes them from recall's answer, the bundle and the user's profile;
training computes them the same way for its lists (``training.pipeline``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.vectors import F32Array

RANKER_FEATURES = ("recall_score", "recall_rank", "item_popularity", "history_length")


def unsupported(names: Sequence[str]) -> list[str]:
    """The names among ``names`` that :func:`candidate_features` cannot compute."""
    return [n for n in names if n not in RANKER_FEATURES]


def candidate_features(
    recall_scores: np.ndarray,
    popularity_counts: np.ndarray,
    history_length: int,
    names: Sequence[str] = RANKER_FEATURES,
) -> F32Array:
    """[N, len(names)] features of N candidates in recall's order (best first)."""
    n = len(recall_scores)
    columns = {
        "recall_score": np.asarray(recall_scores, dtype=np.float32),
        "recall_rank": np.log1p(np.arange(n, dtype=np.float32)),
        "item_popularity": np.log1p(np.asarray(popularity_counts, dtype=np.float32)),
        "history_length": np.full(n, np.log1p(np.float32(history_length)), np.float32),
    }
    out = np.empty((n, len(names)), np.float32)
    for j, name in enumerate(names):
        out[:, j] = columns[name]
    return out
