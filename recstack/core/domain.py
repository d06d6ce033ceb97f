"""Transport-free request and result types shared by the cores and the gateway.

Servicers convert protobuf messages to and from these; cores never see protobuf or grpc.
Vectors are float32 numpy arrays here (packed bytes exist only on the wire). A recall's
candidates are columns, as on the wire: their vectors are one [N, dim] array, so the
gateway hands recall's block to rank without touching each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recstack.core.features import join_recent
from recstack.core.vectors import F32Array


@dataclass(frozen=True)
class MetadataFilter:
    """Keep items whose metadata ``field`` matches (semantics in recall.proto)."""

    field: str
    any_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class RecallQuery:
    """One recall: by text and/or history item ids, or by an explicit vector.

    ``min_sequence`` asks the replica to have applied the catalog log that far first
    (read-your-writes); ``exact`` asks for brute-force instead of HNSW search.
    """

    k: int
    query_text: str = ""
    history_item_ids: tuple[str, ...] = ()
    query_vector: F32Array | None = None
    exclude_ids: tuple[str, ...] = ()
    omit_vectors: bool = False
    filters: tuple[MetadataFilter, ...] = ()
    min_sequence: int = 0
    exact: bool = False
    ignore_unknown_history: bool = False
    # Query-only: blend in the bundle's prior user vector (a new user, not a search).
    user_prior: bool = False
    # Exclude the history items themselves (the seen items) besides exclude_ids.
    exclude_history: bool = False
    # Fill the result's titles and texts.
    include_details: bool = False
    # Answer in this bundle version ("" = the replica's primary): see recstack.core.lifecycle.
    embedding_version: str = ""
    # Keep the bundle's recent-popularity items among the k (recstack.core.features.join_recent).
    include_recent: bool = False


@dataclass(frozen=True)
class RecallResult:
    """Candidates best first, as columns (row i of each is candidate i), the query (user)
    vector they were scored against, and the bundle version (their embedding space).

    ``vectors`` is None when the query asked ``omit_vectors``; ``titles``/``texts`` are
    empty unless it asked ``include_details``. ``similarities`` [N, 3] are each candidate's
    (max, mean, most recent) inner products with the history vectors (zeros without).
    ``because_item_ids``/``because_query`` explain each candidate (the closest history
    item, or the query text); ``written[i]`` says candidate i was upserted after the bundle
    was built (its details may differ from the bundle's catalog). ``recent[i]`` says
    candidate i is one of the bundle's recent-popularity items the query asked to keep
    (``include_recent``; empty when it did not).
    """

    ids: Sequence[str]
    scores: F32Array
    vectors: F32Array | None
    similarities: F32Array
    because_item_ids: Sequence[str]
    because_query: Sequence[bool]
    written: Sequence[bool]
    query_vector: F32Array
    bundle_version: str
    titles: Sequence[str] = ()
    texts: Sequence[str] = ()
    missing_shards: tuple[int, ...] = ()
    recent: Sequence[bool] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(
        cls, parts: Sequence[RecallResult], k: int, missing_shards: tuple[int, ...] = ()
    ) -> RecallResult:
        """The best ``k`` of several results over the same query vector and version
        (e.g. one per shard), by descending score; ties keep part order. Candidates
        flagged ``recent`` are kept first, as each part kept them (:func:`join_recent`)."""
        first = parts[0]
        scores = np.concatenate([p.scores for p in parts])
        flagged = all(len(p.recent) == len(p) for p in parts)
        recent = [v for p in parts for v in p.recent] if flagged else [False] * len(scores)
        order = join_recent(scores, np.asarray(recent, bool), k)

        def pick(column: Sequence[Any]) -> list[Any]:
            return [column[i] for i in order]

        def cat(name: str) -> list[Any]:
            return [v for p in parts for v in getattr(p, name)]

        vectors = None
        if all(p.vectors is not None for p in parts):
            vectors = np.concatenate([p.vectors for p in parts if p.vectors is not None])[order]
        return cls(
            pick(cat("ids")),
            np.concatenate([p.scores for p in parts])[order],
            vectors,
            np.concatenate([p.similarities for p in parts])[order],
            pick(cat("because_item_ids")),
            pick(cat("because_query")),
            pick(cat("written")),
            first.query_vector,
            first.bundle_version,
            pick(cat("titles")) if all(len(p.titles) == len(p) for p in parts) else (),
            pick(cat("texts")) if all(len(p.texts) == len(p) for p in parts) else (),
            missing_shards,
            pick(recent) if any(len(p.recent) for p in parts) else (),
        )


@dataclass(frozen=True)
class ItemDetails:
    """A catalog entry as a recall replica serves it now (GetItems)."""

    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    written: bool = False


@dataclass(frozen=True)
class ItemsResult:
    """GetItems: the items found (request order), the ids not found, the version."""

    items: list[ItemDetails]
    missing_ids: tuple[str, ...]
    bundle_version: str


@dataclass(frozen=True)
class RecallInfo:
    """What a recall replica serves (GetInfo)."""

    bundle_version: str
    dim: int
    item_count: int
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    encoder_provider: str
    max_k: int
    shard_index: int = 0
    shard_count: int = 1
    applied_sequence: int = 0
    filter_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankQuery:
    """Score candidates (rows of ``candidate_vectors``) for one user vector."""

    user_vector: F32Array
    candidate_ids: tuple[str, ...]
    candidate_vectors: F32Array
    embedding_version: str
    top_k: int = 0
    # MMR weight of relevance vs similarity to already-picked items (0 = plain ranking).
    diversity_lambda: float = 0.0
    # Per-candidate side features, flat float32 as decoded from the wire (None = none sent);
    # the rank core checks the size against the ranker's declared side features.
    candidate_features: F32Array | None = None


@dataclass(frozen=True)
class ScoredItem:
    """One ranked candidate."""

    id: str
    score: float


@dataclass(frozen=True)
class RankResult:
    """Candidates sorted by descending ranker score."""

    items: list[ScoredItem]
    bundle_version: str


@dataclass(frozen=True)
class RankInfo:
    """What a rank replica serves (GetInfo)."""

    bundle_version: str
    dim: int
    execution_provider: str
    max_candidates: int
    side_features: tuple[str, ...] = ()
    batching: bool = False
    max_batch_rows: int = 0


@dataclass(frozen=True)
class RecommendQuery:
    """One Recommend call; zero ``k``/``candidate_count`` mean the gateway's defaults."""

    user_id: str = ""
    history_item_ids: tuple[str, ...] = ()
    query_text: str = ""
    k: int = 0
    include_seen: bool = False
    candidate_count: int = 0
    filters: tuple[MetadataFilter, ...] = ()
    diversity_lambda: float = 0.0


@dataclass(frozen=True)
class RecommendedItem:
    """A final recommendation: ranker score plus the recall score it came in with."""

    id: str
    score: float
    title: str
    text: str
    recall_score: float
    because_item_id: str = ""
    because_title: str = ""
    because_query: bool = False
    # One of the bundle's recent-popularity items (recall's ``recent`` flag).
    trending: bool = False


@dataclass(frozen=True)
class RecommendResult:
    """Top-k recommendations, the bundle version, and milliseconds per stage."""

    items: list[RecommendedItem]
    bundle_version: str
    history_length: int
    timings: dict[str, float] = field(default_factory=dict)
    fallback: str = ""
    missing_shards: tuple[int, ...] = ()
