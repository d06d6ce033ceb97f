"""Recommend through a real gateway calling real recall and rank servers."""

import grpc
import pytest

from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import channel_to


@pytest.fixture(scope="module")
def stub(gateway_server):
    return gateway_pb2_grpc.RecommendServiceStub(channel_to(gateway_server))


@pytest.fixture(scope="module")
def user(bundle):
    return next(iter(bundle.iter_user_histories()))


def test_recommend_by_user_returns_k_distinct_unseen(stub, bundle, user):
    user_id, history = user
    resp = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user_id, k=5), timeout=10)
    ids = [i.id for i in resp.items]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert not set(ids) & set(history)
    assert resp.history_length == len(set(history))
    assert resp.bundle_version == bundle.version
    scores = [i.score for i in resp.items]
    assert scores == sorted(scores, reverse=True)
    assert all(i.title or i.text for i in resp.items)
    assert {t.stage for t in resp.timings} == {"recall", "rank", "total"}


def test_include_seen_may_return_history(stub, user):
    user_id, _ = user
    resp = stub.Recommend(
        gateway_pb2.RecommendRequest(user_id=user_id, k=20, include_seen=True, candidate_count=40)
    )
    assert len(resp.items) == 20


def test_cold_start_by_query_and_by_history(stub, bundle):
    resp = stub.Recommend(gateway_pb2.RecommendRequest(query_text="an exciting story", k=4))
    assert len(resp.items) == 4 and resp.history_length == 0
    ids = [i.id for i in bundle.iter_catalog()][:2]
    resp = stub.Recommend(gateway_pb2.RecommendRequest(history_item_ids=ids, k=4))
    assert len(resp.items) == 4 and not {i.id for i in resp.items} & set(ids)


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        (dict(), "INVALID_ARGUMENT", "user_id|history_item_ids|query_text"),
        (dict(query_text="x", k=-1), "INVALID_ARGUMENT", "k"),
        (dict(query_text="x", k=500), "RESOURCE_EXHAUSTED", "k"),
        (dict(query_text="x", k=10, candidate_count=5), "INVALID_ARGUMENT", "candidate_count"),
        (dict(history_item_ids=["no-such-item"]), "INVALID_ARGUMENT", "history_item_ids"),
        (dict(user_id="no-such-user"), "NOT_FOUND", "user_id"),
    ],
)
def test_bad_input_names_the_field(stub, fields, code, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(gateway_pb2.RecommendRequest(**fields), timeout=10)
    assert err.value.code() == grpc.StatusCode[code]
    assert field in err.value.details()
    assert stub.Recommend(gateway_pb2.RecommendRequest(query_text="ok", k=1)).items


def test_expired_deadline_is_deadline_exceeded(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(gateway_pb2.RecommendRequest(query_text="x", k=3), timeout=0.0001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
