"""Transport-free request and result types shared by the cores and the gateway.

Servicers convert protobuf messages to and from these; cores never see protobuf or grpc.
Vectors are float32 numpy arrays here (packed bytes exist only on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recstack.vectors import F32Array


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


@dataclass(frozen=True)
class RecallCandidate:
    """A recalled item: inner-product score against the query vector and its own vector."""

    id: str
    score: float
    vector: F32Array | None
    title: str = ""
    text: str = ""
    # Explanation: the most similar history item, or the query (because_query).
    because_item_id: str = ""
    because_query: bool = False
    # (max, mean, most recent) inner product with the history vectors; zeros without.
    history_similarity: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class RecallResult:
    """Candidates best first, the query (user) vector they were scored against, the version."""

    candidates: list[RecallCandidate]
    query_vector: F32Array
    bundle_version: str
    missing_shards: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class RecommendResult:
    """Top-k recommendations, the bundle version, and milliseconds per stage."""

    items: list[RecommendedItem]
    bundle_version: str
    history_length: int
    timings: dict[str, float] = field(default_factory=dict)
    fallback: str = ""
    missing_shards: tuple[int, ...] = ()
