"""Rank core against the tiny bundle's real ONNX ranker: batching, side features, providers,
IO binding path, hot swap. No grpc here (see tests/integration/test_rank_service.py)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rank_service.core import RankCore, load_core, rank_lifecycle
from rank_service.runner import RankerRunner
from recstack.core.bundle import MANIFEST, Bundle, copy_bundle, write_manifest
from recstack.core.config import OrtOptions, RankOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import RankQuery
from recstack.core.errors import BundleError, FailedPrecondition, InvalidArgument
from recstack.core.features import candidate_features, history_similarities
from recstack.core.lifecycle import VersionNotServed
from recstack.core.vectors import pack
from recstack.models.ort import CPU, CUDA, SessionOptions
from recstack.v1 import rank_pb2

WAIT = 30.0
HAS_CUDA = CUDA in ort.get_available_providers()
FEATURES = ("popularity", "recency")
FEATURE_WEIGHTS = (0.5, -0.25)


# ---- helpers (also imported by the integration tests) ----


def feature_ranker(dim: int, weights=FEATURE_WEIGHTS) -> onnx.ModelProto:
    """score = sum(user * item) + features @ weights, built with the onnx helper API (no
    ``features`` input when ``weights`` is empty)."""
    f = len(weights)
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    inits = [axes]
    inputs = [
        helper.make_tensor_value_info("user", TensorProto.FLOAT, ["n", dim]),
        helper.make_tensor_value_info("item", TensorProto.FLOAT, ["n", dim]),
    ]
    nodes = [helper.make_node("Mul", ["user", "item"], ["prod"])]
    if f:
        w = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(f, 1), "w")
        inits.append(w)
        inputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", f]))
        nodes += [
            helper.make_node("ReduceSum", ["prod", "axes"], ["dot"], keepdims=0),
            helper.make_node("MatMul", ["features", "w"], ["fw"]),
            helper.make_node("Squeeze", ["fw", "axes"], ["fw1"]),
            helper.make_node("Add", ["dot", "fw1"], ["score"]),
        ]
    else:
        nodes.append(helper.make_node("ReduceSum", ["prod", "axes"], ["score"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "feature_ranker",
        inputs,
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feature_bundle(src: Path, dst: Path, features=FEATURES, weights=FEATURE_WEIGHTS) -> Path:
    """The tiny bundle with its ranker swapped for one that declares side features."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest.pop("files", None)
    onnx.save(feature_ranker(int(manifest["dim"]), weights), dst / "ranker" / "model.onnx")
    manifest["ranker"] = {**manifest["ranker"], "side_features": list(features)}
    manifest["version"] = manifest["version"] + "-features"
    write_manifest(dst, manifest)
    return dst


def plain_bundle(src: Path, dst: Path) -> Path:
    """The tiny bundle with its ranker swapped for one that declares no side features
    (score = user . item)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest.pop("files", None)
    onnx.save(feature_ranker(int(manifest["dim"]), ()), dst / "ranker" / "model.onnx")
    manifest["ranker"] = {
        k: v for k, v in manifest["ranker"].items() if k not in ("side_features", "features_input")
    }
    manifest["version"] = manifest["version"] + "-plain"
    write_manifest(dst, manifest)
    return dst


def side_features(bundle: Bundle, user, items) -> np.ndarray | None:
    """[N, F] features as the gateway computes them (deterministic stand-ins for the
    popularity and history inputs), or None when the ranker declares none."""
    names = tuple(bundle.section("ranker").get("side_features", ()))
    if not names:
        return None
    items, user = np.asarray(items, np.float32), np.asarray(user, np.float32)
    # Malformed vectors (tests of bad input) still get well-formed features, so that the
    # error a test provokes is the one it names.
    ok = items.ndim == 2 and items.shape[1:] == user.shape
    scores = np.nan_to_num(items @ user) if ok else np.zeros(len(items), np.float32)
    sims = history_similarities(items, items[:3]) if ok else None
    return candidate_features(scores, np.arange(len(items)) % 7, 5, sims, names=names)


def flat_features(bundle: Bundle, user, items) -> np.ndarray | None:
    f = side_features(bundle, user, items)
    return None if f is None else f.reshape(-1)


def direct_scores(bundle: Bundle, user, items) -> np.ndarray:
    spec = bundle.section("ranker")
    session = ort.InferenceSession(str(bundle.path(spec["model"])), providers=[CPU])
    users = np.repeat(np.asarray(user, np.float32)[None], len(items), axis=0)
    feeds = {"user": users, "item": np.asarray(items, np.float32)}
    feats = side_features(bundle, user, items)
    if feats is not None:
        feeds[spec.get("features_input", "features")] = feats
    return session.run([spec["output"]], feeds)[0].reshape(-1)


def query(bundle, ids, vectors, user, **kw) -> RankQuery:
    """A RankQuery; side features as :func:`side_features` unless given explicitly."""
    if "candidate_features" not in kw:
        kw["candidate_features"] = flat_features(bundle, user, vectors)
    return RankQuery(
        user_vector=np.asarray(user, np.float32),
        candidate_ids=tuple(ids),
        candidate_vectors=np.asarray(vectors, np.float32),
        embedding_version=kw.pop("version", bundle.version),
        **kw,
    )


def rank_request(bundle, ids, vectors, user, **kw):
    """A rank_pb2.RankRequest; side features as :func:`side_features` unless given."""
    if "candidate_features" not in kw:
        flat = flat_features(bundle, user, vectors)
        kw["candidate_features"] = b"" if flat is None else pack(flat)
    return rank_pb2.RankRequest(
        user_vector=pack(user),
        candidate_ids=list(ids),
        candidate_vectors=pack(vectors),
        embedding_version=kw.pop("version", bundle.version),
        **kw,
    )


@pytest.fixture(scope="module")
def catalog(bundle):
    return [i.id for i in bundle.iter_catalog()], bundle.load_vectors()


# ---- batching ----


def test_batching_on_and_off_match_direct_onnx_under_concurrency(bundle, catalog):
    """Merging is forced, not hoped for: the first batch the workers cause is held in the
    batcher's hook until every other worker's request is queued behind it. No progress is
    possible while it is held (each worker has exactly one request in flight), so the queue
    must reach ``THREADS - held`` requests; no wait here has an expiry that is then read as
    success, and the requests themselves carry no deadline that the hold could run out."""
    ids, vectors = catalog
    threads_n = 16
    merged: list[int] = []  # requests per run, in run order
    held = threading.Event()
    release = threading.Event()
    hold_index: list[int] = []

    def hook(requests, rows):
        merged.append(requests)
        if hold_index and len(merged) == hold_index[0] + 1:
            held.set()
            release.wait()  # set by the test body (always, in its finally)

    on = load_core(
        RankOptions(bundle=str(bundle.root), max_queue_delay_ms=2.0),
        SessionOptions(device="cpu"),
        before_batch=hook,
    )
    hold_index.append(len(merged))  # runs before this were the load-time self-check
    off = load_core(RankOptions(bundle=str(bundle.root), batching=False), SessionOptions("cpu"))
    rng = np.random.default_rng(0)
    jobs = []
    for _ in range(threads_n * 4):
        n = int(rng.integers(1, len(ids) + 1))
        pick = rng.choice(len(ids), size=n, replace=False)
        user = vectors[int(rng.integers(len(ids)))] + 0.1 * rng.standard_normal(bundle.dim)
        jobs.append(([ids[i] for i in pick], vectors[pick], user.astype(np.float32)))
    results: dict[tuple[str, int], object] = {}

    def worker(t):
        for j in range(t, len(jobs), threads_n):
            for name, core in (("on", on), ("off", off)):
                try:
                    results[name, j] = core.rank(query(bundle, *jobs[j]), Deadline.none())
                except Exception as exc:  # surfaced by the asserts below
                    results[name, j] = exc

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads_n)]
    try:
        for t in threads:
            t.start()
        assert held.wait(WAIT), "the workers' first batch never reached the ranker"
        behind = threads_n - merged[hold_index[0]]
        until = time.monotonic() + WAIT
        while on.batcher.queued < behind:
            assert time.monotonic() < until, (
                f"only {on.batcher.queued} of {behind} requests queued behind the held batch"
            )
            threading.Event().wait(0.005)
        release.set()
        for t in threads:
            t.join(WAIT * 4)
        assert not any(t.is_alive() for t in threads), "a worker never got its answers"
        # the held batch and the one queued behind it: one of the two has > 1 request
        assert max(merged[hold_index[0] :]) > 1, merged
        for j, (jids, jvecs, user) in enumerate(jobs):
            want = dict(zip(jids, direct_scores(bundle, user, jvecs), strict=True))
            a, b = results["on", j], results["off", j]
            assert not isinstance(a, Exception), a
            assert not isinstance(b, Exception), b
            assert [i.id for i in a.items] == [i.id for i in b.items]
            for x, y in zip(a.items, b.items, strict=True):
                assert x.score == pytest.approx(float(want[x.id]), abs=1e-5)
                assert y.score == pytest.approx(float(want[y.id]), abs=1e-5)
    finally:
        release.set()
        on.close(WAIT)
        off.close(WAIT)


def test_diversity_lambda_validation_and_mmr_order(bundle, catalog):
    _ids, vectors = catalog
    core = load_core(RankOptions(bundle=str(bundle.root)), SessionOptions("cpu"))
    try:
        # candidate 1 is a near-copy of candidate 0
        vecs = np.vstack([vectors[0], vectors[0] + 1e-3, vectors[2:10]]).astype(np.float32)
        cids = [f"c{i}" for i in range(len(vecs))]
        user = vectors[0]
        plain = core.rank(query(bundle, cids, vecs, user), Deadline.none())
        same = core.rank(query(bundle, cids, vecs, user, diversity_lambda=1.0), Deadline.none())
        assert [i.id for i in same.items] == [i.id for i in plain.items]
        top = [i.id for i in plain.items[:2]]
        if set(top) == {"c0", "c1"}:  # the duplicates lead: MMR must split them up
            diverse = core.rank(
                query(bundle, cids, vecs, user, diversity_lambda=0.3, top_k=2), Deadline.none()
            )
            assert len({i.id for i in diverse.items} & {"c0", "c1"}) == 1
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(InvalidArgument, match="diversity_lambda"):
                core.rank(query(bundle, cids, vecs, user, diversity_lambda=bad), Deadline.none())
    finally:
        core.close(WAIT)


# ---- side features ----


def test_features_sent_to_a_ranker_without_side_features(bundle_dir, catalog, tmp_path):
    ids, vectors = catalog
    plain = Bundle.open(plain_bundle(Path(bundle_dir), tmp_path / "plain"))
    core = load_core(RankOptions(bundle=str(plain.root)), SessionOptions("cpu"))
    try:
        q = query(plain, ids[:3], vectors[:3], vectors[5], candidate_features=np.ones(6, "f4"))
        with pytest.raises(InvalidArgument, match="candidate_features") as err:
            core.rank(q, Deadline.none())
        assert err.value.field == "candidate_features"
        assert core.info().side_features == ()
    finally:
        core.close(WAIT)


def test_side_features_are_fed_and_validated(bundle_dir, bundle, catalog, tmp_path):
    ids, vectors = catalog
    fb = Bundle.open(feature_bundle(Path(bundle_dir), tmp_path / "feat"))
    for batching in (True, False):
        core = load_core(RankOptions(bundle=str(fb.root), batching=batching), SessionOptions("cpu"))
        try:
            assert core.info().side_features == FEATURES
            n = 6
            user, items = vectors[7], vectors[:n]
            feats = np.random.default_rng(0).random((n, 2)).astype(np.float32)
            res = core.rank(
                query(fb, ids[:n], items, user, candidate_features=feats.reshape(-1)),
                Deadline.none(),
            )
            want = items @ user + feats @ np.asarray(FEATURE_WEIGHTS, np.float32)
            got = {i.id: i.score for i in res.items}
            for k in range(n):
                assert got[ids[k]] == pytest.approx(float(want[k]), abs=1e-5)
            for bad in (None, np.ones(n * 2 - 1, "f4"), np.full(n * 2, np.nan, "f4")):
                with pytest.raises(InvalidArgument, match="candidate_features"):
                    core.rank(
                        query(fb, ids[:n], items, user, candidate_features=bad), Deadline.none()
                    )
        finally:
            core.close(WAIT)


def test_manifest_and_model_disagreeing_on_features_is_refused(bundle_dir, tmp_path):
    dst = feature_bundle(Path(bundle_dir), tmp_path / "feat3", features=("a", "b", "c"))
    with pytest.raises(BundleError, match="side features"):
        load_core(RankOptions(bundle=str(dst)), SessionOptions("cpu"))


# ---- providers and the IO-binding path ----


@pytest.mark.skipif(HAS_CUDA, reason="checks behaviour with no GPU")
def test_provider_selection_without_gpu(bundle):
    core = RankCore(bundle, RankOptions(), SessionOptions(device="cuda", allow_cpu_fallback=True))
    try:
        assert core.provider == CPU and not core.runner.io_binding and not core.runner.pinned
        assert core.info().execution_provider == CPU
    finally:
        core.close(WAIT)
    with pytest.raises(BundleError, match="onnxruntime-gpu"):
        RankCore(bundle, RankOptions(), SessionOptions(device="cuda", allow_cpu_fallback=False))
    auto = RankCore(bundle, RankOptions(), SessionOptions(device="auto"))
    try:
        assert auto.provider == CPU
    finally:
        auto.close(WAIT)


def test_io_binding_path_matches_plain_run_on_cpu(bundle, catalog):
    """The CUDA path's IO-binding code is provider-agnostic; run it on CPU buffers."""
    _, vectors = catalog
    spec = bundle.section("ranker")
    session = ort.InferenceSession(str(bundle.path(spec["model"])), providers=[CPU])
    bound = RankerRunner(session, CPU, spec["output"], io_binding=True)
    plain = RankerRunner(session, CPU, spec["output"], io_binding=False)
    for n in (1, 7, 100, 3):  # grows, then reuses, the staging buffers
        items = vectors[:n] if n <= len(vectors) else np.tile(vectors, (2, 1))[:n]
        users = np.repeat(vectors[-1][None], n, axis=0)
        feeds = {"user": users, "item": np.ascontiguousarray(items)}
        feats = side_features(bundle, vectors[-1], items)
        if feats is not None:
            feeds[spec.get("features_input", "features")] = feats
        np.testing.assert_allclose(bound.run(feeds), plain.run(feeds), atol=1e-6)
    assert not bound.pinned
    bound.close()


def test_optimized_model_is_saved(bundle, tmp_path):
    out = tmp_path / "ranker.opt.onnx"
    core = load_core(
        RankOptions(bundle=str(bundle.root)),
        SessionOptions(device="cpu", optimized_model_path=str(out)),
    )
    core.close(WAIT)
    assert out.is_file() and onnx.load(str(out)).graph.node


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_provider_with_io_binding_matches_cpu(bundle, catalog):
    ids, vectors = catalog
    gpu = load_core(RankOptions(bundle=str(bundle.root)), SessionOptions(device="cuda"))
    cpu = load_core(RankOptions(bundle=str(bundle.root)), SessionOptions(device="cpu"))
    try:
        assert gpu.provider == CUDA and gpu.runner.io_binding
        q = query(bundle, ids, vectors, vectors[3])
        a = gpu.rank(q, Deadline.none())
        b = cpu.rank(q, Deadline.none())
        assert [i.id for i in a.items] == [i.id for i in b.items]
        for x, y in zip(a.items, b.items, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-4)
    finally:
        gpu.close(WAIT)
        cpu.close(WAIT)


# ---- hot swap ----


@pytest.fixture
def bundle_root(bundle_dir, tmp_path):
    """A root with two versions of the tiny bundle and CURRENT naming v1."""
    root = tmp_path / "bundles"
    root.mkdir()
    copy_bundle(Path(bundle_dir), root / "v1", version="v1")
    copy_bundle(Path(bundle_dir), root / "v2", version="v2")
    (root / "CURRENT").write_text("v1\n")
    return root


def lifecycle_over(root, grace_s=60.0, before_batch=None, load_previous=True):
    lc = rank_lifecycle(
        RankOptions(
            bundle=str(root),
            bundle_poll_s=0,
            version_grace_s=grace_s,
            load_previous=load_previous,
        ),
        OrtOptions(device="cpu"),
        before_batch=before_batch,
    )
    lc.load_initial()
    return lc


def test_hot_swap_in_flight_requests_finish_on_the_old_core(bundle_root, bundle, catalog):
    """The in-flight request is held in v1's batcher until the test releases it (no expiry
    that could let it finish early, and no request deadline that the hold could run out).
    With no grace period, v1 is retired as soon as that request ends."""
    ids, vectors = catalog
    hold = threading.Event()
    held = threading.Event()

    def hook(requests, rows):
        # block only v1's worker, only once the test arms it
        if threading.current_thread().name.endswith("-v1") and armed.is_set():
            held.set()
            hold.wait()  # set by the test body (always, in its finally)

    armed = threading.Event()
    lc = lifecycle_over(bundle_root, grace_s=0, before_batch=hook)
    old = lc.versions.primary()
    assert old.version == "v1"
    box = {}

    def in_flight():
        q = query(bundle, ids[:5], vectors[:5], vectors[9], version="v1")
        try:
            with lc.versions.lease("v1") as core:
                box["result"] = core.rank(q, Deadline.none())
        except Exception as exc:  # surfaced by the asserts below
            box["error"] = exc

    armed.set()
    t = threading.Thread(target=in_flight, daemon=True)
    t.start()
    try:
        assert held.wait(WAIT), "the in-flight request never reached v1's ranker"
        (bundle_root / "CURRENT").write_text("v2\n")
        outcome = lc.reload()
        assert (outcome.bundle_version, outcome.previous_version, outcome.swapped) == (
            "v2",
            "v1",
            True,
        )
        assert lc.versions.held() == ("v2",)
        with lc.versions.lease("v2") as new:
            q2 = query(bundle, ids[:5], vectors[:5], vectors[9], version="v2")
            assert new.rank(q2, Deadline.after(WAIT)).bundle_version == "v2"
        with pytest.raises(VersionNotServed) as refused, lc.versions.lease("v1"):
            pass
        assert refused.value.field == "embedding_version" and refused.value.held == ("v2",)
        assert t.is_alive()  # still running on v1
        assert old.batcher._worker.is_alive(), "v1 closed while a request was inside it"
    finally:
        hold.set()
    t.join(WAIT)
    assert not t.is_alive(), "the in-flight request never finished after its release"
    assert "error" not in box, box["error"]
    assert box["result"].bundle_version == "v1" and len(box["result"].items) == 5
    old.batcher._worker.join(WAIT)  # closed in the background once its request finished
    assert not old.batcher._worker.is_alive(), "the old core was never closed"
    assert lc.reload().swapped is False
    lc.close()


def test_replaced_version_is_kept_for_its_callers_then_retired(bundle_root, bundle, catalog):
    """A rollout: after the swap both versions rank (each its own vectors' space) until
    v1 has not been named for the grace period."""
    ids, vectors = catalog
    lc = lifecycle_over(bundle_root, grace_s=60.0)
    (bundle_root / "CURRENT").write_text("v2\n")
    assert lc.reload().swapped
    assert lc.versions.held() == ("v2", "v1")
    for version in ("v1", "v2"):
        with lc.versions.lease(version) as core:
            got = core.rank(
                query(bundle, ids[:4], vectors[:4], vectors[9], version=version), Deadline.none()
            )
        assert got.bundle_version == version
    assert lc.versions.sweep() == []  # named just now
    lc.versions.grace_s = 0.0
    (retired,) = lc.versions.sweep()
    assert retired == "v1" and lc.versions.held() == ("v2",)
    lc.close()


def test_previous_version_is_loaded_at_start(bundle_root):
    """A process started mid-rollout (root with PREVIOUS) serves both versions."""
    (bundle_root / "CURRENT").write_text("v2\n")
    (bundle_root / "PREVIOUS").write_text("v1\n")
    lc = lifecycle_over(bundle_root)
    assert lc.versions.held() == ("v2", "v1")
    lc.close()
    off = lifecycle_over(bundle_root, load_previous=False)
    assert off.versions.held() == ("v2",)
    off.close()
    (bundle_root / "PREVIOUS").write_text("gone\n")  # names nothing: only the current one
    missing = lifecycle_over(bundle_root)
    assert missing.versions.held() == ("v2",)
    missing.close()


def test_bad_bundle_is_refused_and_old_keeps_serving(bundle_root, bundle, bundle_dir, catalog):
    ids, vectors = catalog
    lc = lifecycle_over(bundle_root)
    bad = copy_bundle(Path(bundle_dir), bundle_root / "v3", version="v3")
    with (bad / "ranker" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    (bundle_root / "CURRENT").write_text("v3\n")
    with pytest.raises(FailedPrecondition, match="checksum mismatch"):
        lc.reload()
    (bundle_root / "CURRENT").write_text("nope\n")
    with pytest.raises(FailedPrecondition, match="reload refused"):
        lc.reload()
    (bundle_root / "CURRENT").write_text("v2\n")
    with pytest.raises(FailedPrecondition, match="expected_version"):
        lc.reload(expected_version="v9")
    assert lc.versions.held() == ("v1",)
    with lc.versions.lease("v1") as core:
        q = query(bundle, ids[:4], vectors[:4], vectors[9], version="v1")
        assert core.rank(q, Deadline.none()).bundle_version == "v1"
    assert lc.reload(expected_version="v2").swapped
    lc.close()


def test_rank_verifies_only_the_files_it_loads(bundle_dir, tmp_path):
    """Rank never hashes the encoder (it never runs it): a damaged encoder does not stop
    it, a damaged ranker does."""
    copy = copy_bundle(Path(bundle_dir), tmp_path / "b")
    encoder = copy / "encoder" / "model.onnx"
    data = bytearray(encoder.read_bytes())
    data[-1] ^= 0xFF  # same size, other sha256
    encoder.write_bytes(bytes(data))
    core = load_core(RankOptions(bundle=str(copy)), SessionOptions("cpu"))
    core.close(WAIT)
    ranker = copy / "ranker" / "model.onnx"
    data = bytearray(ranker.read_bytes())
    data[-1] ^= 0xFF
    ranker.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for ranker/model.onnx"):
        load_core(RankOptions(bundle=str(copy)), SessionOptions("cpu"))
