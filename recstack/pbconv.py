"""Protobuf <-> domain conversions used by more than one service (one definition each)."""

from __future__ import annotations

from collections.abc import Iterable

from recstack.domain import MetadataFilter, RecallResult
from recstack.v1 import recall_pb2
from recstack.vectors import pack, unpack_rows, unpack_vector

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
