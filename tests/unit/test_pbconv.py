"""Every message <-> domain conversion (recstack.runtime.pbconv) round-trips: what the sender packs
is what the receiver unpacks, field for field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recstack.core.domain import (
    ItemDetails,
    ItemsResult,
    MetadataFilter,
    RankQuery,
    RankResult,
    RecallQuery,
    ScoredItem,
)
from recstack.core.errors import InvalidArgument
from recstack.runtime.pbconv import (
    items_from_pb,
    items_to_pb,
    rank_query_from_pb,
    rank_query_to_pb,
    rank_result_from_pb,
    rank_result_to_pb,
    recall_query_from_pb,
    recall_query_to_pb,
)

DIM = 4
rng = np.random.default_rng(0)


def same(a: object, b: object) -> None:
    """Dataclasses equal field by field (arrays compared by value)."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, f.name


def test_recall_query_round_trips_with_every_field_set() -> None:
    query = RecallQuery(
        k=7,
        query_text="space",
        history_item_ids=("a", "b"),
        query_vector=rng.standard_normal(DIM).astype(np.float32),
        exclude_ids=("c",),
        omit_vectors=True,
        filters=(MetadataFilter("genre", ("x", "y")), MetadataFilter("year", (), 1990.0, 2000.0)),
        min_sequence=12,
        exact=True,
        ignore_unknown_history=True,
        user_prior=True,
        exclude_history=True,
        include_details=True,
        embedding_version="v2",
        include_recent=True,
    )
    unset = [
        f.name
        for f in dataclasses.fields(query)
        if not isinstance(getattr(query, f.name), np.ndarray)
        and getattr(query, f.name) == f.default
    ]
    assert unset == [], "set every field so that a dropped one shows"
    same(recall_query_from_pb(recall_query_to_pb(query), DIM), query)
    same(recall_query_from_pb(recall_query_to_pb(RecallQuery(k=1)), DIM), RecallQuery(k=1))


def test_rank_query_and_result_round_trip() -> None:
    query = RankQuery(
        user_vector=rng.standard_normal(DIM).astype(np.float32),
        candidate_ids=("a", "b", "c"),
        candidate_vectors=rng.standard_normal((3, DIM)).astype(np.float32),
        embedding_version="v1",
        top_k=2,
        diversity_lambda=0.25,
        candidate_features=rng.standard_normal(6).astype(np.float32),
    )
    same(rank_query_from_pb(rank_query_to_pb(query), DIM), query)
    bare = dataclasses.replace(query, candidate_features=None)
    same(rank_query_from_pb(rank_query_to_pb(bare), DIM), bare)
    result = RankResult([ScoredItem("b", 0.5), ScoredItem("a", -1.25)], "v1")
    assert rank_result_from_pb(rank_result_to_pb(result)) == result


def test_items_round_trip() -> None:
    result = ItemsResult(
        [ItemDetails("a", "A", "text a", {"genre": ["x"], "year": 1999}, True)],
        ("gone",),
        "v3",
    )
    assert items_from_pb(items_to_pb(result)) == result


def test_bytes_that_do_not_decode_name_their_field() -> None:
    message = rank_query_to_pb(
        RankQuery(np.zeros(DIM, np.float32), ("a",), np.zeros((1, DIM), np.float32), "v1")
    )
    message.candidate_features = b"\x00\x01\x02"
    with pytest.raises(InvalidArgument) as err:
        rank_query_from_pb(message, DIM)
    assert err.value.field == "candidate_features"
    bad = recall_query_to_pb(RecallQuery(k=1, query_vector=np.zeros(DIM, np.float32)))
    with pytest.raises(InvalidArgument) as err:
        recall_query_from_pb(bad, DIM + 1, "requests[3].")
    assert err.value.field == "requests[3].query_vector"
