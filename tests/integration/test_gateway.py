"""Recommend through a real gateway calling real recall and rank servers."""

import grpc
import pytest

from recstack.client import error_details
from recstack.v1 import gateway_pb2, gateway_pb2_grpc, recall_pb2, recall_pb2_grpc
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
    assert {t.stage for t in resp.timings} == {"profile", "recall", "rank", "details", "total"}
    assert resp.fallback == ""


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
    ("fields", "code", "reason", "violations"),
    [
        (
            dict(),
            "INVALID_ARGUMENT",
            "MISSING_QUERY",
            ("user_id", "history_item_ids", "query_text"),
        ),
        (dict(query_text="x", k=-1), "INVALID_ARGUMENT", "INVALID_ARGUMENT", ("k",)),
        (dict(query_text="x", k=500), "OUT_OF_RANGE", "LIMIT_EXCEEDED", ("k",)),
        (
            dict(query_text="x", k=10, candidate_count=5),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            ("candidate_count",),
        ),
        # relayed from the recall service with its details intact
        (
            dict(history_item_ids=["no-such-item"]),
            "INVALID_ARGUMENT",
            "UNKNOWN_ITEM",
            ("history_item_ids",),
        ),
        (
            dict(query_text="x", diversity_lambda=2.0),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            ("diversity_lambda",),
        ),
    ],
)
def test_bad_input_names_the_field(stub, fields, code, reason, violations):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(gateway_pb2.RecommendRequest(**fields), timeout=10)
    assert err.value.code() == grpc.StatusCode[code]
    details = error_details(err.value)
    assert details is not None, "no google.rpc.Status in grpc-status-details-bin"
    assert details.code == code and details.domain == "recstack.dev"
    assert details.reason == reason
    assert details.fields == violations
    assert violations[0] in err.value.details()
    # deprecated, kept for one release: the fields joined by "|"
    assert ("recstack-field", "|".join(violations)) in err.value.trailing_metadata()
    assert stub.Recommend(gateway_pb2.RecommendRequest(query_text="ok", k=1)).items


def test_limit_violation_reports_the_limit(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(gateway_pb2.RecommendRequest(query_text="x", k=500), timeout=10)
    details = error_details(err.value)
    assert details is not None and details.retry_delay_s is None  # not load: no RetryInfo
    assert dict(details.metadata) == {"limit": "20", "value": "500"}


def test_expired_deadline_is_deadline_exceeded(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(gateway_pb2.RecommendRequest(query_text="x", k=3), timeout=0.0001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_recorded_events_change_the_next_recommendation(stub, bundle):
    user = "fresh-user"
    items = [it.id for it in bundle.iter_catalog()]
    cold = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=5))
    assert cold.fallback == "popularity" and len(cold.items) == 5
    seq = stub.RecordEvents(
        gateway_pb2.RecordEventsRequest(
            events=[
                gateway_pb2.Event(user_id=user, item_id=items[0], type="click"),
                gateway_pb2.Event(user_id=user, item_id=items[1], type="like"),
            ]
        )
    ).sequence
    assert seq > 0
    warm = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=5))
    assert warm.fallback == "" and warm.history_length == 2
    assert not {i.id for i in warm.items} & {items[0], items[1]}
    assert stub.DeleteUser(gateway_pb2.DeleteUserRequest(user_id=user)).events_deleted == 2
    again = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=5))
    assert again.fallback == "popularity"


def test_filters_and_diversity_pass_through(stub, bundle):
    catalog = list(bundle.iter_catalog())
    field = next(k for it in catalog for k in it.metadata)
    values = catalog[0].metadata[field]
    value = str(values[0] if isinstance(values, list) else values)
    resp = stub.Recommend(
        gateway_pb2.RecommendRequest(
            query_text="something good",
            k=3,
            diversity_lambda=0.5,
            filters=[recall_pb2.MetadataFilter(field=field, any_of=[value])],
        )
    )
    by_id = {it.id: it for it in catalog}
    for item in resp.items:
        meta = by_id[item.id].metadata[field]
        assert value in ([str(m) for m in meta] if isinstance(meta, list) else [str(meta)])
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(
            gateway_pb2.RecommendRequest(
                query_text="x", filters=[recall_pb2.MetadataFilter(field="nope", any_of=["1"])]
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filters[0].field" in err.value.details()


def test_bad_events_are_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.RecordEvents(
            gateway_pb2.RecordEventsRequest(
                events=[gateway_pb2.Event(user_id="u", item_id="", type="click")]
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].item_id" in err.value.details()


def test_user_ids_and_texts_are_not_logged_at_info(stub, caplog):
    secret_user, secret_text = "user-7f3a9c-private", "my private query 51d2e"
    with caplog.at_level("INFO"):
        stub.Recommend(
            gateway_pb2.RecommendRequest(user_id=secret_user, query_text=secret_text, k=2)
        )
        stub.RecordEvents(
            gateway_pb2.RecordEventsRequest(
                events=[gateway_pb2.Event(user_id=secret_user, item_id="whatever", type="view")]
            )
        )
        with pytest.raises(grpc.RpcError):
            stub.Recommend(gateway_pb2.RecommendRequest(user_id=secret_user, k=10_000))
    logged = "\n".join(r.getMessage() + str(vars(r)) for r in caplog.records)
    assert secret_user not in logged and secret_text not in logged


def test_stored_history_naming_a_deleted_item_still_recommends(stub, recall_server, bundle):
    recall = recall_pb2_grpc.RecallServiceStub(channel_to(recall_server))
    recall.Upsert(
        recall_pb2.UpsertRequest(
            items=[
                recall_pb2.ItemWrite(
                    id="soon-gone", title="Soon gone", text="an item that will be deleted"
                )
            ]
        )
    )
    stub.RecordEvents(
        gateway_pb2.RecordEventsRequest(
            events=[gateway_pb2.Event(user_id="stale-user", item_id="soon-gone", type="like")]
        )
    )
    recall.Delete(recall_pb2.DeleteRequest(ids=["soon-gone"]))
    resp = stub.Recommend(gateway_pb2.RecommendRequest(user_id="stale-user", k=3))
    assert len(resp.items) == 3 and "soon-gone" not in {i.id for i in resp.items}
    with pytest.raises(grpc.RpcError) as err:  # an explicit unknown id is still an error
        stub.Recommend(gateway_pb2.RecommendRequest(history_item_ids=["soon-gone"], k=3))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_each_recommendation_says_which_history_item_supports_it(stub, bundle):
    ids = [i.id for i in bundle.iter_catalog()]
    vectors = dict(zip(ids, bundle.load_vectors(), strict=True))
    titles = {i.id: i.title for i in bundle.iter_catalog()}
    history = ids[:4]
    resp = stub.Recommend(gateway_pb2.RecommendRequest(history_item_ids=history, k=5), timeout=10)
    assert len(resp.items) == 5
    for item in resp.items:
        assert not item.because_query
        assert item.because_item_id in history
        assert item.because_title == titles[item.because_item_id]
        sims = {h: float(vectors[item.id] @ vectors[h]) for h in history}
        assert sims[item.because_item_id] == pytest.approx(max(sims.values()), abs=1e-5)
    # A query-only request is explained by its query.
    resp = stub.Recommend(gateway_pb2.RecommendRequest(query_text="space adventure", k=3))
    assert all(i.because_query and not i.because_item_id for i in resp.items)


def test_trending_marks_the_bundles_recent_popularity_items(stub, bundle):
    from recstack.core.features import load_recent_top

    top = set(load_recent_top(bundle))
    assert top
    seen = 0
    for request in (
        gateway_pb2.RecommendRequest(query_text="space adventure", k=10),
        gateway_pb2.RecommendRequest(
            history_item_ids=[i.id for i in bundle.iter_catalog()][:3], k=10
        ),
    ):
        resp = stub.Recommend(request, timeout=10)
        assert resp.items
        for item in resp.items:
            assert item.trending == (item.id in top), item.id
        seen += sum(i.trending for i in resp.items)
    assert seen  # the query-only order weighs recent popularity: some are listed


def test_seed_profiles_carry_last_times_and_an_old_bundle_is_reported(bundle, tmp_path, caplog):
    import logging

    from gateway.core import open_events
    from recstack.core.config import GatewayOptions

    profiles = list(bundle.iter_user_profiles())
    assert profiles and all(last > 0 for _, _, last in profiles)
    with caplog.at_level(logging.WARNING, logger="gateway.core"):
        events = open_events(GatewayOptions(state_dir=str(tmp_path)), bundle)
    user, items, last = profiles[0]
    assert events.profile(user, 1000).last_seen_s == last
    assert events.profile(user, 1000).items == tuple(dict.fromkeys(items))
    # The synthetic data is from 2023: older than the gap's cap.
    assert "since_last_interaction is at its cap" in caplog.text
    events.close()
