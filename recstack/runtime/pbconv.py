"""Protobuf <-> domain conversions: the only place a message becomes a domain object or back.

Each pair is written once and used by both sides of a call (the sender's ``*_to_pb`` and the
receiver's ``*_from_pb``): recall queries and results, GetItems answers, rank queries and
results, metadata filters. A ``*_from_pb`` raises InvalidArgument naming the field when
bytes do not decode (``prefix`` locates a message inside a batch).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from recstack.core.domain import (
    ItemDetails,
    ItemsResult,
    MetadataFilter,
    RankQuery,
    RankResult,
    RecallQuery,
    RecallResult,
    RecommendQuery,
    RecommendResult,
    ScoredItem,
)
from recstack.core.errors import InvalidArgument
from recstack.core.vectors import WIRE_DTYPE, F32Array, pack, unpack_rows, unpack_vector
from recstack.v1 import gateway_pb2, rank_pb2, recall_pb2

SIMILARITY_COLUMNS = 3


def filters_from_pb(messages: Iterable[recall_pb2.MetadataFilter]) -> tuple[MetadataFilter, ...]:
    return tuple(
        MetadataFilter(
            f.field,
            tuple(f.any_of),
            f.min if f.HasField("min") else None,
            f.max if f.HasField("max") else None,
        )
        for f in messages
    )


def filters_to_pb(filters: Iterable[MetadataFilter]) -> list[recall_pb2.MetadataFilter]:
    return [
        recall_pb2.MetadataFilter(field=f.field, any_of=f.any_of, min=f.min, max=f.max)
        for f in filters
    ]


def recall_result_to_pb(result: RecallResult, dim: int) -> recall_pb2.RecallResponse:
    """A recall result as its wire columns (see recall.proto)."""
    return recall_pb2.RecallResponse(
        ids=result.ids,
        scores=pack(result.scores),
        vectors=b"" if result.vectors is None else pack(result.vectors),
        history_similarities=pack(result.similarities),
        because_item_ids=result.because_item_ids,
        because_query=result.because_query,
        written=result.written,
        titles=result.titles,
        texts=result.texts,
        recent=result.recent,
        query_vector=pack(result.query_vector),
        dim=dim,
        bundle_version=result.bundle_version,
    )


def recall_result_from_pb(resp: recall_pb2.RecallResponse) -> RecallResult:
    """The wire columns as a recall result; arrays are read-only views of the message's
    bytes (no per-candidate copies). InvalidArgument naming the column if sizes disagree."""
    n, dim = len(resp.ids), resp.dim
    return RecallResult(
        list(resp.ids),
        unpack_rows(resp.scores, 1, n, "scores")[0],
        unpack_rows(resp.vectors, n, dim, "vectors") if resp.vectors else None,
        unpack_rows(resp.history_similarities, n, SIMILARITY_COLUMNS, "history_similarities"),
        list(resp.because_item_ids),
        list(resp.because_query),
        list(resp.written),
        unpack_vector(resp.query_vector, dim, "query_vector"),
        resp.bundle_version,
        list(resp.titles),
        list(resp.texts),
        recent=list(resp.recent),
    )


def recall_query_to_pb(query: RecallQuery) -> recall_pb2.RecallRequest:
    return recall_pb2.RecallRequest(
        k=query.k,
        query_text=query.query_text,
        history_item_ids=query.history_item_ids,
        exclude_ids=query.exclude_ids,
        omit_vectors=query.omit_vectors,
        query_vector=b"" if query.query_vector is None else pack(query.query_vector),
        filters=filters_to_pb(query.filters),
        min_sequence=query.min_sequence,
        exact=query.exact,
        ignore_unknown_history=query.ignore_unknown_history,
        user_prior=query.user_prior,
        exclude_history=query.exclude_history,
        include_details=query.include_details,
        embedding_version=query.embedding_version,
        include_recent=query.include_recent,
    )


def recall_query_from_pb(
    request: recall_pb2.RecallRequest, dim: int, prefix: str = ""
) -> RecallQuery:
    return RecallQuery(
        k=request.k,
        query_text=request.query_text,
        history_item_ids=tuple(request.history_item_ids),
        query_vector=(
            unpack_vector(request.query_vector, dim, prefix + "query_vector")
            if request.query_vector
            else None
        ),
        exclude_ids=tuple(request.exclude_ids),
        omit_vectors=request.omit_vectors,
        filters=filters_from_pb(request.filters),
        min_sequence=request.min_sequence,
        exact=request.exact,
        ignore_unknown_history=request.ignore_unknown_history,
        user_prior=request.user_prior,
        exclude_history=request.exclude_history,
        include_details=request.include_details,
        embedding_version=request.embedding_version,
        include_recent=request.include_recent,
    )


def items_to_pb(result: ItemsResult) -> recall_pb2.GetItemsResponse:
    return recall_pb2.GetItemsResponse(
        items=[
            recall_pb2.Item(
                id=it.id,
                title=it.title,
                text=it.text,
                metadata_json=json.dumps(it.metadata, sort_keys=True),
                written=it.written,
            )
            for it in result.items
        ],
        missing_ids=result.missing_ids,
        bundle_version=result.bundle_version,
    )


def items_from_pb(resp: recall_pb2.GetItemsResponse) -> ItemsResult:
    return ItemsResult(
        [
            ItemDetails(it.id, it.title, it.text, json.loads(it.metadata_json or "{}"), it.written)
            for it in resp.items
        ],
        tuple(resp.missing_ids),
        resp.bundle_version,
    )


def unpack_flat(data: bytes, field: str) -> F32Array | None:
    """Packed float32 bytes as a flat array (None if empty); the receiver checks the shape."""
    if not data:
        return None
    if len(data) % WIRE_DTYPE.itemsize:
        raise InvalidArgument(
            f"{len(data)} bytes is not a whole number of float32 values", field=field
        )
    return np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float32)


def rank_query_to_pb(query: RankQuery) -> rank_pb2.RankRequest:
    return rank_pb2.RankRequest(
        user_vector=pack(query.user_vector),
        candidate_ids=query.candidate_ids,
        candidate_vectors=pack(query.candidate_vectors),
        embedding_version=query.embedding_version,
        top_k=query.top_k,
        diversity_lambda=query.diversity_lambda,
        candidate_features=b""
        if query.candidate_features is None
        else pack(query.candidate_features),
    )


def rank_query_from_pb(request: rank_pb2.RankRequest, dim: int) -> RankQuery:
    ids = tuple(request.candidate_ids)
    return RankQuery(
        user_vector=unpack_vector(request.user_vector, dim, "user_vector"),
        candidate_ids=ids,
        candidate_vectors=unpack_rows(
            request.candidate_vectors, len(ids), dim, "candidate_vectors"
        ),
        embedding_version=request.embedding_version,
        top_k=request.top_k,
        diversity_lambda=request.diversity_lambda,
        candidate_features=unpack_flat(request.candidate_features, "candidate_features"),
    )


def rank_result_to_pb(result: RankResult) -> rank_pb2.RankResponse:
    return rank_pb2.RankResponse(
        items=[rank_pb2.ScoredItem(id=i.id, score=i.score) for i in result.items],
        bundle_version=result.bundle_version,
    )


def rank_result_from_pb(resp: rank_pb2.RankResponse) -> RankResult:
    return RankResult([ScoredItem(i.id, i.score) for i in resp.items], resp.bundle_version)


def recommend_query_from_pb(request: gateway_pb2.RecommendRequest) -> RecommendQuery:
    """(Callers build the request with ``recstack.client.recommend_request``.)"""
    return RecommendQuery(
        user_id=request.user_id,
        history_item_ids=tuple(request.history_item_ids),
        query_text=request.query_text,
        k=request.k,
        include_seen=request.include_seen,
        candidate_count=request.candidate_count,
        filters=filters_from_pb(request.filters),
        diversity_lambda=request.diversity_lambda,
    )


def recommend_result_to_pb(result: RecommendResult) -> gateway_pb2.RecommendResponse:
    return gateway_pb2.RecommendResponse(
        items=[
            gateway_pb2.RecommendedItem(
                id=i.id,
                score=i.score,
                title=i.title,
                text=i.text,
                recall_score=i.recall_score,
                because_item_id=i.because_item_id,
                because_title=i.because_title,
                because_query=i.because_query,
                trending=i.trending,
            )
            for i in result.items
        ],
        bundle_version=result.bundle_version,
        history_length=result.history_length,
        timings=[gateway_pb2.StageTiming(stage=s, millis=ms) for s, ms in result.timings.items()],
        fallback=result.fallback,
        missing_shards=result.missing_shards,
    )
