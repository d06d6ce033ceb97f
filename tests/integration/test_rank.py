"""Rank service over a real server on a free port, against the tiny trained bundle."""

import grpc
import numpy as np
import pytest

from recstack.client import error_details
from recstack.v1 import rank_pb2, rank_pb2_grpc
from tests.conftest import channel_to
from tests.unit.test_rank_core import direct_scores, rank_request


@pytest.fixture(scope="module")
def stub(rank_server):
    return rank_pb2_grpc.RankServiceStub(channel_to(rank_server))


@pytest.fixture(scope="module")
def sample(bundle):
    vectors = bundle.load_vectors()
    ids = [i.id for i in bundle.iter_catalog()]
    return ids[:20], vectors[:20], vectors[25]


request = rank_request


def test_scores_sorted_and_equal_direct_onnx(stub, bundle, sample):
    ids, vectors, user = sample
    resp = stub.Rank(request(bundle, ids, vectors, user))
    assert resp.bundle_version == bundle.version
    assert sorted(i.id for i in resp.items) == sorted(ids)
    scores = [i.score for i in resp.items]
    assert scores == sorted(scores, reverse=True)

    direct = direct_scores(bundle, user, vectors)
    by_id = dict(zip(ids, direct, strict=True))
    for item in resp.items:
        assert item.score == pytest.approx(float(by_id[item.id]), abs=1e-5)


def test_top_k(stub, bundle, sample):
    ids, vectors, user = sample
    full = stub.Rank(request(bundle, ids, vectors, user))
    top = stub.Rank(request(bundle, ids, vectors, user, top_k=3))
    assert [i.id for i in top.items] == [i.id for i in full.items[:3]]


def test_version_mismatch_is_failed_precondition_naming_both(stub, bundle, sample):
    ids, vectors, user = sample
    with pytest.raises(grpc.RpcError) as err:
        stub.Rank(request(bundle, ids, vectors, user, version="other-version"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "other-version" in err.value.details() and bundle.version in err.value.details()


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda ids, v, u: (ids, v[:, :-1], u), "INVALID_ARGUMENT", "candidate_vectors"),
        (lambda ids, v, u: (ids, v, u[:-1]), "INVALID_ARGUMENT", "user_vector"),
        (lambda ids, v, u: (ids, v, np.full_like(u, np.nan)), "INVALID_ARGUMENT", "user_vector"),
        (lambda ids, v, u: ([], v[:0], u), "INVALID_ARGUMENT", "candidate_ids"),
        (lambda ids, v, u: ([ids[0]] * 2, v[:2], u), "INVALID_ARGUMENT", "candidate_ids"),
        (
            lambda ids, v, u: ([str(i) for i in range(60)], np.ones((60, v.shape[1])), u),
            "OUT_OF_RANGE",
            "candidate_ids",
        ),
    ],
)
def test_bad_input(stub, bundle, sample, mutate, code, field):
    ids, vectors, user = mutate(*sample)
    with pytest.raises(grpc.RpcError) as err:
        stub.Rank(request(bundle, ids, vectors, user))
    assert err.value.code() == grpc.StatusCode[code]
    assert field in err.value.details()
    details = error_details(err.value)
    assert details is not None and details.fields == (field,)
    assert stub.Rank(request(bundle, *sample)).items


def test_empty_version_and_negative_top_k(stub, bundle, sample):
    for kw, field in [(dict(version=""), "embedding_version"), (dict(top_k=-1), "top_k")]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(request(bundle, *sample, **kw))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in err.value.details()


def test_get_info_reports_cpu_provider(stub, bundle):
    info = stub.GetInfo(rank_pb2.RankServiceGetInfoRequest())
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.bundle_version == bundle.version and info.max_candidates == 50
