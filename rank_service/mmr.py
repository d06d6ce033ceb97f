"""Maximal Marginal Relevance re-ranking (pure numpy; no grpc, no ORT).

Greedy selection: at each step pick the candidate maximising

    mmr(j) = lambda * rel(j) - (1 - lambda) * max_{s in picked} cos(v_j, v_s)

where ``rel`` is the ranker score min-max normalised to [0, 1] over the request's
candidates (all-equal scores give rel = 0) and ``cos`` is the cosine similarity of the
candidate vectors. The first pick is the most relevant candidate (nothing picked yet, so
the similarity term is 0). Ties go to the earlier candidate in request order, so lambda = 1
reproduces the plain ranking (descending score, ties in request order) exactly; smaller lambda
trades relevance for novelty, and lambda = 0 only avoids similarity to what was already picked.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recstack.core.vectors import F32Array

IntArray = npt.NDArray[np.intp]
_GRAM_MIN_PICKS = 16


def normalised_relevance(scores: F32Array) -> npt.NDArray[np.float64]:
    """Scores min-max scaled to [0, 1] in float64 (distinct scores stay distinct)."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        return np.zeros_like(s)
    return (s - lo) / (hi - lo)


def mmr_order(scores: F32Array, vectors: F32Array, lam: float, k: int = 0) -> IntArray:
    """Indices of the first ``k`` MMR picks (``k`` = 0 or > N: all N, fully re-ordered)."""
    n = int(scores.shape[0])
    if vectors.shape[0] != n:
        raise ValueError(f"{n} scores but {vectors.shape[0]} vectors")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    k = n if k <= 0 or k > n else k
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    rel = normalised_relevance(scores)
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    # Many picks: one GEMM for all pairwise similarities beats k memory-bound mat-vecs.
    gram = v @ v.T if k > _GRAM_MIN_PICKS else None
    # Similarity of each candidate to its closest already-picked item (float64 accumulator).
    # It is not used for the first pick, which is therefore the most relevant candidate.
    max_sim = np.zeros(n, dtype=np.float64)
    taken = np.zeros(n, dtype=bool)
    order = np.empty(k, dtype=np.intp)
    for step in range(k):
        value = lam * rel - (1.0 - lam) * max_sim if step else rel.copy()
        value[taken] = -np.inf
        pick = int(np.argmax(value))  # argmax returns the first maximum: request order on ties
        order[step] = pick
        taken[pick] = True
        if step + 1 < k:
            sims = gram[pick] if gram is not None else v @ v[pick]
            np.maximum(max_sim, sims, out=max_sim)
    return order
