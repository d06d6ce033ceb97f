"""Protobuf <-> domain conversions used by more than one service (one definition each)."""

from __future__ import annotations

from collections.abc import Iterable

from recstack.domain import MetadataFilter
from recstack.v1 import recall_pb2


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
