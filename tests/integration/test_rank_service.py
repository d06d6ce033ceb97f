"""Rank service over real servers on free ports: dynamic batching, full queue, diversity,
side features, GetInfo, Reload RPC and the bundle-pointer watcher, metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from rank_service.server import serve
from recstack.client import error_details
from recstack.core.bundle import Bundle
from recstack.core.config import RankOptions, ServerOptions
from recstack.core.vectors import pack
from recstack.v1 import rank_pb2, rank_pb2_grpc
from tests.conftest import channel_to
from tests.unit.test_rank_core import (
    FEATURE_WEIGHTS,
    FEATURES,
    copy_bundle,
    direct_scores,
    feature_bundle,
    rank_request,
)

WAIT = 30.0
# A deadline that can only pass while the request waits in the (held) queue: long enough to
# reach the server and be queued on a slow machine, short enough to keep the test quick.
QUEUED_DEADLINE_S = 3.0
RANK_METHOD = "/recstack.v1.RankService/Rank"


def sample(name, labels=None):
    """A process-wide counter's value now (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0


def started(options: RankOptions, **kw):
    running = serve(ServerOptions(port=0, max_workers=40, max_concurrent_rpcs=200), options, **kw)
    running.wait_ready(120)
    return running


def wait_until(predicate, what="condition"):
    pause = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError(f"{what} not reached")


@pytest.fixture(scope="module")
def catalog(bundle):
    return [i.id for i in bundle.iter_catalog()], bundle.load_vectors()


def test_batching_on_and_off_give_identical_results_under_load(bundle, bundle_dir, catalog):
    ids, vectors = catalog
    on = started(RankOptions(bundle=str(bundle_dir), max_queue_delay_ms=2.0))
    off = started(RankOptions(bundle=str(bundle_dir), batching=False))
    try:
        stubs = {
            "on": rank_pb2_grpc.RankServiceStub(channel_to(on)),
            "off": rank_pb2_grpc.RankServiceStub(channel_to(off)),
        }
        assert stubs["on"].GetInfo(rank_pb2.RankServiceGetInfoRequest()).batching
        assert not stubs["off"].GetInfo(rank_pb2.RankServiceGetInfoRequest()).batching
        rng = np.random.default_rng(7)
        jobs = []
        for _ in range(16 * 3):
            n = int(rng.integers(1, len(ids) + 1))
            pick = rng.choice(len(ids), size=n, replace=False)
            user = vectors[int(rng.integers(len(ids)))] + 0.1 * rng.standard_normal(bundle.dim)
            jobs.append(([ids[i] for i in pick], vectors[pick], user.astype(np.float32)))
        out: dict[tuple[str, int], rank_pb2.RankResponse] = {}
        errors: list[BaseException] = []

        def client(t):
            try:
                for j in range(t, len(jobs), 16):
                    for name, stub in stubs.items():
                        out[name, j] = stub.Rank(rank_request(bundle, *jobs[j]), timeout=WAIT)
            except Exception as exc:  # surfaced by the asserts below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client never got all its answers"
        assert not errors, errors[:3]
        assert len(out) == 2 * len(jobs)
        for j, (jids, jvecs, user) in enumerate(jobs):
            want = dict(zip(jids, direct_scores(bundle, user, jvecs), strict=True))
            a, b = out["on", j], out["off", j]
            assert [i.id for i in a.items] == [i.id for i in b.items]
            for x in a.items:
                assert x.score == pytest.approx(float(want[x.id]), abs=1e-5)
    finally:
        on.stop(0)
        off.stop(0)


def test_full_queue_is_resource_exhausted(bundle, bundle_dir, catalog):
    """The worker is held (no expiry) until the test releases it; the held and queued RPCs
    carry no deadline the hold could run out, and the test's waits on them are bounded."""
    ids, vectors = catalog
    armed, hold, held = threading.Event(), threading.Event(), threading.Event()

    def slow_batcher(requests, rows):
        if armed.is_set():
            held.set()
            hold.wait()  # set by the test body (always, in its finally)

    running = started(
        RankOptions(bundle=str(bundle_dir), max_queue_requests=2, max_queue_delay_ms=0.0),
        before_batch=slow_batcher,
    )
    try:
        stub = rank_pb2_grpc.RankServiceStub(channel_to(running))
        req = rank_request(bundle, ids[:5], vectors[:5], vectors[9])
        armed.set()
        first = stub.Rank.future(req)
        assert held.wait(WAIT), "the first request never reached the ranker"
        queued = [stub.Rank.future(req) for _ in range(2)]
        wait_until(lambda: REGISTRY.get_sample_value("recstack_rank_queue_depth") == 2, "queue")
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(req, timeout=WAIT)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.value.details()
        details = error_details(err.value)
        assert details is not None and details.reason == "QUEUE_FULL"
        assert details.retry_delay_s is not None and details.retry_delay_s > 0
        hold.set()
        for f in [first, *queued]:
            assert len(f.result(timeout=WAIT).items) == 5
        assert len(stub.Rank(req, timeout=WAIT).items) == 5  # serving normally again
    finally:
        hold.set()
        running.stop(0)


def test_request_whose_deadline_passes_in_the_queue(bundle, bundle_dir, catalog):
    """Each step waits for the exact point it needs: the short-deadline request is queued
    (queue depth), the server itself gave up on it (its DEADLINE_EXCEEDED is counted, which
    marks the request abandoned) and only then is the worker released, so it must drop it.
    Counters are process-wide, so every wait is for an increase over this test's baseline."""
    ids, vectors = catalog
    armed, hold, held = threading.Event(), threading.Event(), threading.Event()

    def slow_batcher(requests, rows):
        if armed.is_set():
            held.set()
            hold.wait()  # set by the test body (always, in its finally)

    running = started(
        RankOptions(bundle=str(bundle_dir), max_queue_delay_ms=0.0), before_batch=slow_batcher
    )
    try:
        stub = rank_pb2_grpc.RankServiceStub(channel_to(running))
        req = rank_request(bundle, ids[:5], vectors[:5], vectors[9])
        dropped = {"reason": "deadline"}
        dropped_before = sample("recstack_rank_dropped_total", dropped)
        expired = {"method": RANK_METHOD, "code": "DEADLINE_EXCEEDED"}
        expired_before = sample("recstack_rpc_requests_total", expired)
        armed.set()
        first = stub.Rank.future(req)
        assert held.wait(WAIT), "the first request never reached the ranker"
        doomed = stub.Rank.future(req, timeout=QUEUED_DEADLINE_S)
        wait_until(
            lambda: REGISTRY.get_sample_value("recstack_rank_queue_depth") == 1,
            "the short-deadline request queued behind the held one",
        )
        err = doomed.exception(timeout=WAIT)
        assert isinstance(err, grpc.RpcError), f"the short-deadline request returned {err!r}"
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(
            lambda: sample("recstack_rpc_requests_total", expired) > expired_before,
            "the server giving up on the queued request",
        )
        armed.clear()
        hold.set()
        assert len(first.result(timeout=WAIT).items) == 5
        wait_until(
            lambda: sample("recstack_rank_dropped_total", dropped) > dropped_before,
            "deadline drop",
        )
    finally:
        hold.set()
        running.stop(0)


def test_diversity_and_feature_validation_over_grpc(rank_server, bundle, catalog):
    ids, vectors = catalog
    stub = rank_pb2_grpc.RankServiceStub(channel_to(rank_server))
    req = rank_request(bundle, ids[:20], vectors[:20], vectors[25])
    plain = stub.Rank(req)
    req.diversity_lambda = 1.0
    assert [i.id for i in stub.Rank(req).items] == [i.id for i in plain.items]
    req.diversity_lambda = 0.2
    req.top_k = 5
    diverse = stub.Rank(req)
    assert len(diverse.items) == 5 and diverse.items[0].id == plain.items[0].id
    for bad in (-1.0, 2.0, float("nan")):
        req.diversity_lambda = bad
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "diversity_lambda" in err.value.details()
    req.diversity_lambda = 0.0
    for feats in (pack(np.ones(40)), b"\0\0\0"):
        req.candidate_features = feats
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "candidate_features" in err.value.details()
        assert ("recstack-field", "candidate_features") in err.value.trailing_metadata()
        details = error_details(err.value)
        assert details is not None and details.fields == ("candidate_features",)


def test_side_features_over_grpc(bundle_dir, catalog, tmp_path):
    ids, vectors = catalog
    fb = Bundle.open(feature_bundle(Path(bundle_dir), tmp_path / "feat"))
    running = started(RankOptions(bundle=str(fb.root)))
    try:
        stub = rank_pb2_grpc.RankServiceStub(channel_to(running))
        info = stub.GetInfo(rank_pb2.RankServiceGetInfoRequest())
        assert list(info.side_features) == list(FEATURES)
        n = 8
        feats = np.random.default_rng(3).random((n, len(FEATURES))).astype(np.float32)
        req = rank_request(fb, ids[:n], vectors[:n], vectors[20], candidate_features=pack(feats))
        got = {i.id: i.score for i in stub.Rank(req).items}
        want = vectors[:n] @ vectors[20] + feats @ np.asarray(FEATURE_WEIGHTS, np.float32)
        for k in range(n):
            assert got[ids[k]] == pytest.approx(float(want[k]), abs=1e-5)
        for bad in (b"", pack(feats[:-1])):
            req.candidate_features = bad
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "candidate_features" in err.value.details()
    finally:
        running.stop(0)


def test_reload_rpc_and_pointer_watcher_hot_swap(bundle_dir, bundle, catalog, tmp_path):
    ids, vectors = catalog
    root = tmp_path / "bundles"
    root.mkdir()
    for v in ("v1", "v2", "v3"):
        copy_bundle(Path(bundle_dir), root / v, version=v)
    with (root / "v3" / "ranker" / "model.onnx").open("ab") as f:
        f.write(b"\0")  # v3 fails its checksum
    (root / "CURRENT").write_text("v1\n")
    running = started(RankOptions(bundle=str(root), bundle_poll_s=0.05))
    try:
        stub = rank_pb2_grpc.RankServiceStub(channel_to(running))
        admin = rank_pb2_grpc.RankAdminServiceStub(channel_to(running))

        def version():
            return stub.GetInfo(rank_pb2.RankServiceGetInfoRequest()).bundle_version

        assert version() == "v1"
        r = stub.Reload(rank_pb2.RankServiceReloadRequest())  # deprecated alias, one release
        assert (r.bundle_version, r.swapped) == ("v1", False)
        r = admin.ReloadBundle(rank_pb2.RankAdminServiceReloadBundleRequest())
        assert (r.bundle_version, r.swapped) == ("v1", False)
        # the watcher picks up a new CURRENT by itself
        (root / "CURRENT").write_text("v2\n")
        wait_until(lambda: version() == "v2", "watcher swap to v2")
        req = rank_request(bundle, ids[:5], vectors[:5], vectors[9], version="v2")
        assert stub.Rank(req).bundle_version == "v2"
        # v1 stays loaded for callers still on it (a rollout), each in its own space ...
        info = stub.GetInfo(rank_pb2.RankServiceGetInfoRequest())
        assert list(info.serving_versions) == ["v2", "v1"]
        req.embedding_version = "v1"
        assert stub.Rank(req).bundle_version == "v1"
        # ... and a version it does not hold is refused, naming the field
        req.embedding_version = "v9"
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(req)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "v9" in err.value.details() and "embedding_version" in err.value.details()
        # a bad bundle is refused; the old one keeps serving
        (root / "CURRENT").write_text("v3\n")
        with pytest.raises(grpc.RpcError) as err:
            admin.ReloadBundle(rank_pb2.RankAdminServiceReloadBundleRequest())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "checksum mismatch" in err.value.details() and "v2" in err.value.details()
        assert version() == "v2"
        req.embedding_version = "v2"
        assert stub.Rank(req).bundle_version == "v2"
        # explicit reload back to v1, pinned by expected_version
        (root / "CURRENT").write_text("v1\n")
        with pytest.raises(grpc.RpcError) as err:
            admin.ReloadBundle(rank_pb2.RankAdminServiceReloadBundleRequest(expected_version="v7"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        r = admin.ReloadBundle(rank_pb2.RankAdminServiceReloadBundleRequest(expected_version="v1"))
        assert (r.bundle_version, r.previous_version) in {("v1", "v2"), ("v1", "v1")}
        assert version() == "v1"
    finally:
        running.stop(0)


def test_reload_rpc_can_be_disabled(bundle_dir):
    running = started(RankOptions(bundle=str(bundle_dir), reload_rpc=False, bundle_poll_s=0))
    try:
        admin = rank_pb2_grpc.RankAdminServiceStub(channel_to(running))
        with pytest.raises(grpc.RpcError) as err:
            admin.ReloadBundle(rank_pb2.RankAdminServiceReloadBundleRequest())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = error_details(err.value)
        assert details is not None and details.reason == "RELOAD_DISABLED"
    finally:
        running.stop(0)


def test_batching_metrics_and_provider_are_exported(rank_server, bundle, catalog):
    ids, vectors = catalog
    stub = rank_pb2_grpc.RankServiceStub(channel_to(rank_server))
    stub.Rank(rank_request(bundle, ids[:10], vectors[:10], vectors[3]))
    assert REGISTRY.get_sample_value("recstack_rank_batch_rows_count") >= 1
    assert REGISTRY.get_sample_value("recstack_rank_batch_requests_count") >= 1
    assert REGISTRY.get_sample_value("recstack_rank_queue_delay_seconds_count") >= 1
    assert (
        REGISTRY.get_sample_value(
            "recstack_rank_ort_run_seconds_count", {"provider": "CPUExecutionProvider"}
        )
        >= 1
    )
    assert (
        REGISTRY.get_sample_value(
            "recstack_rank_execution_provider",
            {"provider": "CPUExecutionProvider", "requested_device": "auto", "io_binding": "false"},
        )
        == 1
    )
    info = stub.GetInfo(rank_pb2.RankServiceGetInfoRequest())
    assert info.batching and info.max_batch_rows == RankOptions().max_batch_rows
