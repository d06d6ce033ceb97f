"""The gateway computes each version's ranker features from that version's bundle: after a
hot swap (or during a roll) recall answers in a version the gateway did not start on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.core import assemble
from gateway.events import EventStore
from recstack.core.bundle import MANIFEST, Bundle, copy_bundle, point_current, write_manifest
from recstack.core.config import GatewayOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import (
    ItemDetails,
    ItemsResult,
    RankResult,
    RecallResult,
    RecommendQuery,
    ScoredItem,
)
from recstack.core.features import RANKER_FEATURES, RECENCY


class Backend:
    """Recall answers in ``self.version`` with the first catalog items; rank records."""

    def __init__(self, ids: list[str], dim: int) -> None:
        self.ids, self.dim, self.version, self.ranked = ids, dim, "v1", []

    def recall(self, query, timeout):
        n = len(self.ids)
        return RecallResult(
            self.ids,
            np.ones(n, np.float32),
            np.ones((n, self.dim), np.float32),
            np.zeros((n, 3), np.float32),
            [""] * n,
            [False] * n,
            [False] * n,
            np.ones(self.dim, np.float32),
            self.version,
        )

    def rank(self, query, timeout):
        self.ranked.append(query)
        return RankResult(
            [ScoredItem(i, 1.0) for i in query.candidate_ids], query.embedding_version
        )

    def get_items(self, ids, timeout):  # titles of a version other than the gateway's
        return ItemsResult([ItemDetails(i, i, i, {}, False) for i in ids], (), self.version)

    def serving_versions(self, timeout):
        return (self.version,)


@pytest.fixture
def root(bundle_dir, tmp_path):
    """v1 = the tiny bundle; v2 = the same with every recency count 7."""
    root = tmp_path / "bundles"
    for version in ("v1", "v2"):
        copy_bundle(bundle_dir, root / version, version=version)
    spec = Bundle.open(root / "v2").section("ranker")["recency"]
    counts = np.load(root / "v2" / spec["counts"])
    np.save(root / "v2" / spec["counts"], np.full_like(counts, 7.0), allow_pickle=False)
    manifest = json.loads((root / "v2" / MANIFEST).read_text())
    manifest.pop("files")
    write_manifest(root / "v2", manifest)
    point_current(root, "v1")
    return root


def test_each_versions_features_come_from_its_bundle(root, tmp_path):
    bundle = Bundle.open(root)
    ids = [it.id for it in bundle.iter_catalog()][:5]
    backend = Backend(ids, bundle.dim)
    features = list(bundle.section("ranker")["side_features"])
    assert set(RECENCY) <= set(features)
    events = EventStore(f"sqlite:///{tmp_path}/events.db")
    core = assemble(GatewayOptions(bundle=str(root)), bundle, backend, backend, events, features)
    columns = [features.index(name) for name in RECENCY]

    def recency_sent() -> np.ndarray:
        core.recommend(RecommendQuery(query_text="anything", k=3), Deadline.after(10))
        sent = backend.ranked[-1].candidate_features.reshape(len(ids), len(features))
        return sent[:, columns]

    v1 = np.load(root / "v1" / bundle.section("ranker")["recency"]["counts"])[: len(ids)]
    np.testing.assert_allclose(recency_sent(), np.log1p(v1), rtol=1e-6)
    backend.version = "v2"  # recall swapped; the gateway was started on v1
    np.testing.assert_allclose(recency_sent(), np.log1p(7.0), rtol=1e-6)
    assert core.view("v2").version == "v2" and core.view("v2") is core.view("v2")
    # A version not on this gateway's volume: the startup bundle's features, not a failure.
    backend.version = "v9"
    np.testing.assert_allclose(recency_sent(), np.log1p(v1), rtol=1e-6)
    assert tuple(features) == tuple(n for n in RANKER_FEATURES if n in features)
