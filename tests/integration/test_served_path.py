"""The evaluation's served path is what the running servers serve.

``training.evaluate`` scores a user with the bundle's ONNX tower, HNSW index and ONNX
ranker with the gateway's side features; here the same users go through real recall, rank
and gateway servers (private ones: the session servers' catalogs are changed by other
tests), and both must return the same top-10; so must the three stages in one process
(``gateway.colocated``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import hnswlib
import numpy as np
import pytest

from recstack.core.bundle import MANIFEST, Bundle, write_manifest
from recstack.core.config import GatewayOptions, RankOptions, ServerOptions
from recstack.core.features import GAP, MAX_GAP_S, load_recency, load_recent_top
from recstack.models.ort import CPU, SessionOptions, create_session
from recstack.models.user_tower import UserTower
from recstack.runtime.server import RunningServer
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import recall_options

READY_S = 120.0
FUSION_WEIGHT = 2.0
K = 10
CANDIDATES = 40


@pytest.fixture(scope="module")
def served_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test bundle with a query-only fusion weight (the tiny build's validation ties
    at 0, which would leave the fusion untested)."""
    target = tmp_path_factory.mktemp("served-bundle") / "bundle"
    shutil.copytree(bundle_dir, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["ranker"]["query_recent_weight"] = FUSION_WEIGHT
    write_manifest(target, {k: v for k, v in manifest.items() if k != "files"})
    return target


@pytest.fixture(scope="module", params=["separate", "colocated"])
def servers(
    request: pytest.FixtureRequest, served_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A Recommend endpoint over the bundle: the three servers apart, or in one process."""
    bundle_dir = served_dir
    if request.param == "colocated":
        yield from _colocated(bundle_dir, tmp_path_factory)
        return
    from gateway.server import serve as serve_gateway
    from rank_service.server import serve as serve_rank
    from recall_service.server import serve as serve_recall

    started: list[RunningServer] = []
    try:
        recall = serve_recall(
            ServerOptions(port=0),
            recall_options(bundle_dir, tmp_path_factory.mktemp("served-recall")),
        )
        started.append(recall)
        rank = serve_rank(
            ServerOptions(port=0), RankOptions(bundle=str(bundle_dir), max_candidates=100)
        )
        started.append(rank)
        recall.wait_ready(READY_S)
        rank.wait_ready(READY_S)
        gateway = serve_gateway(
            ServerOptions(port=0),
            GatewayOptions(
                recall_address=f"127.0.0.1:{recall.port}",
                rank_address=f"127.0.0.1:{rank.port}",
                bundle=str(bundle_dir),
                state_dir=str(tmp_path_factory.mktemp("served-gateway")),
                max_candidates=100,
            ),
        )
        started.append(gateway)
        gateway.wait_ready(READY_S)
        yield gateway.port
    finally:
        for s in reversed(started):
            s.stop(0)


def _colocated(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    from gateway.colocated import serve

    state = tmp_path_factory.mktemp("served-colocated")
    running = serve(
        ServerOptions(port=0),
        GatewayOptions(
            bundle=str(bundle_dir), state_dir=str(state / "gateway"), max_candidates=100
        ),
        recall_options(bundle_dir, state / "recall"),
        RankOptions(max_candidates=100),
    )
    try:
        running.wait_ready(READY_S)
        yield running.port
    finally:
        running.stop(0)


def test_evaluation_top10_equals_recommend_for_a_sample_of_users(servers, served_dir: Path):
    from training import evaluate as ev

    bundle = Bundle.open(served_dir)

    options = SessionOptions(device="cpu")
    tower = UserTower(bundle, options)
    ranker, provider = create_session(bundle.path(bundle.section("ranker")["model"]), options)
    assert provider == CPU
    spec = bundle.section("index")
    index = hnswlib.Index(space="ip", dim=bundle.dim)
    index.load_index(str(bundle.path(spec["path"])))
    index.set_ef(int(spec["ef_search"]))
    item_ids = [it.id for it in bundle.iter_catalog()]
    item_pos = {i: n for n, i in enumerate(item_ids)}
    vectors = bundle.load_vectors()
    histories = list(bundle.iter_user_histories())
    # The gateway's popularity feature counts every bundle history (its seed profiles).
    counts = Counter(i for _, items in histories for i in dict.fromkeys(items))

    sample = histories[:: max(1, len(histories) // 12)]
    # Histories in the bundle are most recent first; evaluation cases are oldest first.
    cases = [
        ev.EvalCase(user, list(dict.fromkeys(items))[::-1], set(items), items[0])
        for user, items in sample
    ]
    # The gateway serves the bundle's recency counts (as of its data's end) to everyone.
    recency = load_recency(bundle)
    snapshot = np.stack([recency[i] for i in item_ids])
    assert snapshot.sum() > 0
    uv = ev.user_vectors(tower, cases, vectors, item_pos)
    recalled = ev.recall_lists(index, uv, cases, item_ids, CANDIDATES)
    # ... and the bundle's recent-popularity candidates, joined as recall joins them.
    top = load_recent_top(bundle)
    assert top
    recalled = ev.with_recent(
        recalled, uv, cases, [top] * len(cases), vectors, item_pos, CANDIDATES
    )
    assert any(i in ids for i in top for ids, _ in recalled)
    names = tuple(bundle.section("ranker")["side_features"])
    assert GAP in names

    def expected(gap_s: float | None) -> list[list[str]]:
        return ev.rerank_lists(
            ranker,
            uv,
            recalled,
            vectors,
            item_pos,
            counts,
            [ev.history_matrix(c, vectors, item_pos, tower.max_len) for c in cases],
            [len(c.history) for c in cases],
            [snapshot] * len(cases),
            [gap_s] * len(cases),
            names,
        )

    stub = gateway_pb2_grpc.RecommendServiceStub(grpc.insecure_channel(f"127.0.0.1:{servers}"))
    # An explicit history is a user acting now (no gap); a known user asked by id is as far
    # from their newest interaction as the bundle's data is from now: more than the cap.
    newest = max(last for _, _, last in bundle.iter_user_profiles())
    assert time.time() - newest > MAX_GAP_S
    asked_by_history = expected(None)
    asked_by_id = expected(MAX_GAP_S)
    for case, by_history, by_id in zip(cases, asked_by_history, asked_by_id, strict=True):
        for request, want in (
            (gateway_pb2.RecommendRequest(history_item_ids=case.history[::-1]), by_history),
            (gateway_pb2.RecommendRequest(user_id=case.user_id), by_id),
        ):
            request.k, request.candidate_count = K, CANDIDATES
            resp = stub.Recommend(request, timeout=30)
            got = [i.id for i in resp.items]
            assert got == want[:K], (case.user_id, got, want[:K])
            assert not set(got) & case.seen
    assert np.isfinite(uv).all()

    # Query-only requests (no history): the ranker's order over every candidate, fused with
    # the bundle's recent-popularity items at the weight its build chose.
    from recstack.models.encoder import TextEncoder

    weight = float(bundle.section("ranker")["query_recent_weight"])
    assert weight == FUSION_WEIGHT
    texts = ["a space adventure", "a comedy about friends"]
    texts += [it.title for it in list(bundle.iter_catalog())[:3]]
    q_cases = [ev.EvalCase(f"q{n}", [], set(), item_ids[0], query=t) for n, t in enumerate(texts)]
    qv = TextEncoder(bundle, options).encode(texts)
    q_uv = ev.user_vectors(tower, q_cases, vectors, item_pos, qv)
    q_recalled = ev.with_recent(
        ev.recall_lists(index, q_uv, q_cases, item_ids, CANDIDATES),
        q_uv,
        q_cases,
        [top] * len(q_cases),
        vectors,
        item_pos,
        CANDIDATES,
    )
    q_ranked = ev.rerank_lists(
        ranker,
        q_uv,
        q_recalled,
        vectors,
        item_pos,
        counts,
        [ev.history_matrix(c, vectors, item_pos, tower.max_len) for c in q_cases],
        [0] * len(q_cases),
        [snapshot] * len(q_cases),
        [None] * len(q_cases),
        names,
    )
    want_q = ev.fused_query_lists(q_ranked, q_cases, lambda _t: top, weight, K)
    assert any(w != r[:K] for w, r in zip(want_q, q_ranked, strict=True))  # fusion reorders
    for text, want in zip(texts, want_q, strict=True):
        resp = stub.Recommend(
            gateway_pb2.RecommendRequest(query_text=text, k=K, candidate_count=CANDIDATES),
            timeout=30,
        )
        assert [i.id for i in resp.items] == want, (text, weight)
