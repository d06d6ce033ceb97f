"""Recall service over a real server on a free port, against the tiny trained bundle."""

import grpc
import numpy as np
import pytest

from recstack.client import candidate_scores, candidate_vectors, error_details
from recstack.core.vectors import pack, unpack_rows, unpack_vector
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions
from recstack.models.user_tower import UserTower
from recstack.v1 import recall_pb2, recall_pb2_grpc
from tests.conftest import channel_to


@pytest.fixture(scope="module")
def stub(recall_server):
    return recall_pb2_grpc.RecallServiceStub(channel_to(recall_server))


@pytest.fixture(scope="module")
def catalog(bundle):
    return [i.id for i in bundle.iter_catalog()], bundle.load_vectors()


def test_own_vector_recalls_item_first(stub, catalog, bundle):
    ids, vectors = catalog
    for label in range(0, len(ids), max(1, len(ids) // 10)):
        resp = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(vectors[label]), k=5))
        assert resp.ids[0] == ids[label]
        assert candidate_scores(resp)[0] == pytest.approx(1.0, abs=1e-4)
        assert resp.bundle_version == bundle.version
        np.testing.assert_allclose(candidate_vectors(resp)[0], vectors[label], atol=1e-6)


def test_excluded_ids_never_appear_and_k_is_kept(stub, catalog):
    _, vectors = catalog
    query = pack(vectors[0])
    first = stub.Recall(recall_pb2.RecallRequest(query_vector=query, k=10))
    excluded = [*first.ids[:7], "not-an-item"]
    resp = stub.Recall(recall_pb2.RecallRequest(query_vector=query, k=10, exclude_ids=excluded))
    got = list(resp.ids)
    assert len(got) == 10 and len(set(got)) == 10
    assert not set(got) & set(excluded)


def test_text_and_history_queries(stub, bundle, catalog):
    ids, vectors = catalog
    encoder = TextEncoder(bundle, SessionOptions(device="cpu"))
    tower = UserTower(bundle, SessionOptions(device="cpu"))
    by_text = stub.Recall(recall_pb2.RecallRequest(query_text="something to watch", k=8))
    scores = list(candidate_scores(by_text))
    assert len(scores) == 8 and scores == sorted(scores, reverse=True)
    qv = unpack_vector(by_text.query_vector, by_text.dim, "q")
    # A query-only user is the query text's vector (a search by text).
    np.testing.assert_allclose(qv, encoder.encode(["something to watch"])[0], atol=1e-5)

    history = ids[:3]  # most recent first, as the gateway sends it
    resp = stub.Recall(recall_pb2.RecallRequest(history_item_ids=history, k=5, exclude_ids=history))
    assert len(resp.ids) == 5 and not set(resp.ids) & set(history)
    # The served user vector is the bundle's user tower over the history's item vectors
    # (oldest first): no text encoder involved.
    expected = tower.encode([vectors[[2, 1, 0]]])[0]
    got = unpack_vector(resp.query_vector, bundle.dim, "q")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Per candidate, its similarities to the history (the ranker's side features).
    index = {i: n for n, i in enumerate(ids)}
    got_sims = unpack_rows(resp.history_similarities, len(resp.ids), 3, "s")
    for item_id, (max_sim, mean_sim, last_sim) in zip(resp.ids, got_sims, strict=True):
        sims = vectors[[2, 1, 0]] @ vectors[index[item_id]]
        assert max_sim == pytest.approx(float(sims.max()), abs=1e-5)
        assert mean_sim == pytest.approx(float(sims.mean()), abs=1e-5)
        assert last_sim == pytest.approx(float(sims[-1]), abs=1e-5)
    # exclude_history drops the history without repeating it in exclude_ids.
    same = stub.Recall(
        recall_pb2.RecallRequest(history_item_ids=history, k=5, exclude_history=True)
    )
    assert list(same.ids) == list(resp.ids)
    # Details travel only when asked for, one per candidate; GetItems gives them for a few.
    assert not resp.titles and not resp.texts
    detailed = stub.Recall(
        recall_pb2.RecallRequest(
            history_item_ids=history, k=5, exclude_history=True, include_details=True
        )
    )
    by_id = {it.id: it for it in bundle.iter_catalog()}
    assert list(detailed.titles) == [by_id[i].title for i in detailed.ids]
    assert list(detailed.texts) == [by_id[i].text for i in detailed.ids]
    assert list(detailed.written) == [False] * 5  # all as in the bundle
    items = stub.GetItems(recall_pb2.GetItemsRequest(ids=[detailed.ids[0], "no-such-item"]))
    assert [(it.id, it.title) for it in items.items] == [(detailed.ids[0], detailed.titles[0])]
    assert list(items.missing_ids) == ["no-such-item"] and items.bundle_version == bundle.version
    # History and query: the normalised sum of the two unit vectors.
    both = stub.Recall(
        recall_pb2.RecallRequest(history_item_ids=history, query_text="something to watch", k=5)
    )
    blend = (expected + qv) / np.linalg.norm(expected + qv)
    np.testing.assert_allclose(unpack_vector(both.query_vector, bundle.dim, "q"), blend, atol=1e-5)


def test_omit_vectors(stub):
    resp = stub.Recall(recall_pb2.RecallRequest(query_text="x", k=3, omit_vectors=True))
    assert len(resp.ids) == 3 and resp.vectors == b"" and len(candidate_scores(resp)) == 3


def test_k_larger_than_catalog_returns_everything(stub, catalog):
    ids, _ = catalog
    resp = stub.Recall(recall_pb2.RecallRequest(query_text="x", k=len(ids) + 5))
    assert sorted(resp.ids) == sorted(ids)
    assert candidate_vectors(resp).shape == (len(ids), 384)


def bad_requests(dim):
    nan = np.zeros(dim, dtype=np.float32)
    nan[3] = np.nan
    return [
        (dict(query_vector=pack(np.ones(dim - 1)), k=5), "INVALID_ARGUMENT", "query_vector"),
        (dict(query_vector=pack(nan), k=5), "INVALID_ARGUMENT", "query_vector"),
        (dict(query_vector=pack(np.zeros(dim)), k=5), "INVALID_ARGUMENT", "query_vector"),
        (dict(query_text="x", k=0), "INVALID_ARGUMENT", "k"),
        (dict(query_text="x", k=-3), "INVALID_ARGUMENT", "k"),
        (dict(query_text="x", k=10**6), "OUT_OF_RANGE", "k"),
        (dict(history_item_ids=["no-such-item"], k=5), "INVALID_ARGUMENT", "history_item_ids"),
        (dict(k=5), "INVALID_ARGUMENT", "query_text|history_item_ids|query_vector"),
        (dict(), "INVALID_ARGUMENT", "k"),
        (dict(query_text="x" * 5000, k=5), "INVALID_ARGUMENT", "query_text"),
        (
            dict(query_text="x", query_vector=pack(np.ones(dim)), k=5),
            "INVALID_ARGUMENT",
            "query_vector",
        ),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_input_names_the_field_and_server_keeps_serving(stub, bundle, case):
    fields, code, field = bad_requests(bundle.dim)[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.Recall(recall_pb2.RecallRequest(**fields))
    assert err.value.code() == grpc.StatusCode[code]
    assert field in err.value.details()
    details = error_details(err.value)
    assert details is not None and details.code == code
    # one BadRequest violation per offending field; the deprecated trailer joins them
    assert details.fields == tuple(field.split("|"))
    assert ("recstack-field", field) in err.value.trailing_metadata()
    assert len(stub.Recall(recall_pb2.RecallRequest(query_text="ok", k=2)).ids) == 2


def test_get_info(stub, bundle):
    info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
    assert info.bundle_version == bundle.version and info.dim == bundle.dim
    assert info.item_count == bundle.manifest["items"]["count"]
    assert info.encoder_provider == "CPUExecutionProvider"
    assert info.hnsw_m == bundle.manifest["index"]["M"]


def test_include_recent_keeps_the_bundles_recent_items_among_k(stub, bundle, catalog):
    from recstack.core.features import load_recent_top

    ids, _ = catalog
    top = load_recent_top(bundle)
    assert len(top) >= 3
    history = [i for i in ids if i not in top][:3]
    excluded = top[0]
    base = dict(history_item_ids=history, exclude_history=True, exclude_ids=[excluded], k=8)
    plain = stub.Recall(recall_pb2.RecallRequest(**base))
    joined = stub.Recall(recall_pb2.RecallRequest(**base, include_recent=True))
    assert list(plain.recent) == []
    kept = [i for i in top if i != excluded]  # excluded and seen ones never join
    got = list(joined.ids)
    assert len(got) == 8 and len(set(got)) == 8 and set(kept) <= set(got)
    assert excluded not in got and not set(got) & set(history)
    assert list(joined.recent) == [i in top for i in got]
    scores = list(candidate_scores(joined))
    assert scores == sorted(scores, reverse=True)
    # The other places go to recall's best non-recent candidates, in its order.
    others = [i for i in plain.ids if i not in top][: 8 - len(kept)]
    assert [i for i in got if i not in top] == others
    # Every candidate is scored like a searched one: its inner product with the user.
    user = unpack_vector(joined.query_vector, joined.dim, "q")
    np.testing.assert_allclose(candidate_vectors(joined) @ user, scores, atol=1e-5)
