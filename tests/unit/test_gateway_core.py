"""Gateway orchestration against in-process backends (the real ones run in integration)."""

from dataclasses import replace

import numpy as np
import pytest

from gateway.clients import ShardedRecall, shard_targets
from gateway.core import BundleView, GatewayCore
from gateway.events import Event, EventStore, Profile
from recstack.core.config import GatewayOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import (
    ItemDetails,
    ItemsResult,
    RankQuery,
    RankResult,
    RecallQuery,
    RecallResult,
    RecommendQuery,
    ScoredItem,
)
from recstack.core.errors import FailedPrecondition, InvalidArgument, OutOfRange, Unavailable
from recstack.core.features import fuse_recent
from recstack.core.lifecycle import VersionNotServed

DIM = 4
VECTORS = {f"i{n}": np.eye(DIM, dtype=np.float32)[n % DIM] * (1 + n) for n in range(12)}


class Catalog:
    """Recall = all items not excluded, by id order; rank = dot product, highest first."""

    def __init__(self, written=()):
        self.recalls: list[tuple[RecallQuery, float | None]] = []
        self.ranks: list[tuple[RankQuery, float | None]] = []
        self.lookups: list[tuple[str, ...]] = []
        self.written = set(written)

    def recall(self, query, timeout):
        self.recalls.append((query, timeout))
        excluded = set(query.exclude_ids)
        if query.exclude_history:
            excluded |= set(query.history_item_ids)
        ids = [i for i in VECTORS if i not in excluded][: query.k]
        n = len(ids)
        return RecallResult(
            ids,
            np.ones(n, np.float32),
            np.stack([VECTORS[i] for i in ids]),
            np.zeros((n, 3), np.float32),
            [""] * n,
            [False] * n,
            [i in self.written for i in ids],
            np.ones(DIM, dtype=np.float32),
            "v1",
        )

    def get_items(self, ids, timeout):
        self.lookups.append(tuple(ids))
        return ItemsResult(
            [ItemDetails(i, f"T{i}", f"text {i}", {}, i in self.written) for i in ids], (), "v1"
        )

    def rank(self, query, timeout):
        self.ranks.append((query, timeout))
        scores = query.candidate_vectors @ query.user_vector
        order = np.argsort(-scores, kind="stable")[: query.top_k or None]
        return RankResult(
            [ScoredItem(query.candidate_ids[i], float(scores[i])) for i in order], "v1"
        )


@pytest.fixture
def setup(tmp_path):
    backend = Catalog()
    events = EventStore(
        f"sqlite:///{tmp_path}/events.db",
        [("u1", ["i11", "i10"]), ("u2", ["i11", "i5"]), ("u3", ["i11"])],
    )
    catalog = {"i11": ("Eleven", "text 11"), "i5": ("Five", "text 5")}
    core = GatewayCore(
        backend, backend, events, GatewayOptions(default_k=3, max_k=5), catalog, "v1"
    )
    return core, backend


def test_recommend_excludes_seen_and_ranks(setup):
    core, backend = setup
    result = core.recommend(RecommendQuery(user_id="u1"), Deadline.after(5))
    ids = [i.id for i in result.items]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert not {"i11", "i10"} & set(ids)
    assert ids == ["i9", "i8", "i7"]  # highest dot product among the unseen
    assert result.items[0].title == "Ti9"
    assert result.history_length == 2
    assert set(result.timings) == {"profile", "recall", "rank", "details", "total"}
    query, timeout = backend.recalls[0]
    assert query.history_item_ids == ("i11", "i10") and query.exclude_history
    assert query.exclude_ids == ()  # the history is sent once, not again as exclusions
    assert timeout is not None and timeout <= 5 * 0.6 + 1e-6
    assert backend.ranks[0][0].embedding_version == "v1"


def test_explicit_history_comes_first_and_include_seen(setup):
    core, backend = setup
    core.recommend(
        RecommendQuery(user_id="u1", history_item_ids=("i3", "i10"), include_seen=True),
        Deadline.none(),
    )
    query, timeout = backend.recalls[0]
    assert query.history_item_ids == ("i3", "i10", "i11")
    assert query.exclude_ids == () and not query.exclude_history
    assert timeout is not None  # the default deadline applies when the caller sets none


@pytest.mark.parametrize(
    ("query", "error", "field"),
    [
        (RecommendQuery(), InvalidArgument, ("user_id", "history_item_ids", "query_text")),
        (RecommendQuery(query_text="x", k=-1), InvalidArgument, ("k",)),
        (RecommendQuery(query_text="x", k=6), OutOfRange, ("k",)),
        (
            RecommendQuery(query_text="x", k=4, candidate_count=2),
            InvalidArgument,
            ("candidate_count",),
        ),
        (
            RecommendQuery(query_text="x", diversity_lambda=1.5),
            InvalidArgument,
            ("diversity_lambda",),
        ),
    ],
)
def test_bad_requests_name_the_field(setup, query, error, field):
    core, backend = setup
    with pytest.raises(error) as err:
        core.recommend(query, Deadline.after(5))
    assert err.value.fields == field
    assert not backend.recalls


def test_unknown_user_with_query_is_cold_start(setup):
    core, _ = setup
    result = core.recommend(
        RecommendQuery(user_id="new", query_text="jazz", k=2), Deadline.after(5)
    )
    assert len(result.items) == 2 and result.history_length == 0


def test_recorded_events_come_first_and_exclude(setup):
    core, backend = setup
    core.record_events([Event("u1", "i2", "click", 2000), Event("u1", "i4", "like", 1000)])
    core.recommend(RecommendQuery(user_id="u1"), Deadline.after(5))
    query, _ = backend.recalls[-1]
    assert query.history_item_ids == ("i2", "i4", "i11", "i10") and query.exclude_history


def test_history_beyond_the_recall_limit_is_still_excluded(tmp_path):
    backend = Catalog()
    events = EventStore(f"sqlite:///{tmp_path}/e.db", [("u1", ["i11", "i10"])])
    core = GatewayCore(backend, backend, events, GatewayOptions(max_history=2))
    q = RecommendQuery(user_id="u1", history_item_ids=("i9", "i8"), k=3)
    result = core.recommend(q, Deadline.after(5))
    query, _ = backend.recalls[0]
    assert query.history_item_ids == ("i9", "i8") and query.exclude_ids == ("i11", "i10")
    assert not {"i11", "i10", "i9", "i8"} & {i.id for i in result.items}


def test_details_come_from_the_bundle_catalog_unless_written_since(tmp_path):
    events = EventStore(f"sqlite:///{tmp_path}/e.db", [("u1", ["i0"])])
    catalog = {i: (f"bundle {i}", "") for i in VECTORS}
    backend = Catalog(written={"i9"})
    core = GatewayCore(backend, backend, events, GatewayOptions(), catalog, "v1")
    result = core.recommend(RecommendQuery(user_id="u1", k=3), Deadline.after(5))
    assert [(i.id, i.title) for i in result.items] == [
        ("i11", "bundle i11"),
        ("i10", "bundle i10"),
        ("i9", "Ti9"),  # upserted after the bundle: asked of recall
    ]
    assert backend.lookups == [("i9",)]
    # A gateway whose bundle is not the one recall serves asks recall for every item.
    other = GatewayCore(backend, backend, events, GatewayOptions(), catalog, "v0")
    other.recommend(RecommendQuery(user_id="u1", k=2), Deadline.after(5))
    assert backend.lookups[-1] == ("i11", "i10")


def test_unknown_user_without_query_gets_popularity_fallback(setup):
    core, backend = setup
    result = core.recommend(RecommendQuery(user_id="nobody", k=2), Deadline.after(5))
    assert result.fallback == "popularity"
    assert [i.id for i in result.items] == ["i11", "i10"]  # 3 users, then first of the ties
    assert result.items[0].title == "Eleven" and result.items[0].score == 1.0
    assert not backend.recalls


def test_deleted_user_is_forgotten(setup):
    core, _ = setup
    core.record_events([Event("u1", "i2")])
    assert core.delete_user("u1") == 1
    assert core.events.profile("u1", 10) == Profile(())
    result = core.recommend(RecommendQuery(user_id="u1", k=1), Deadline.after(5))
    assert result.fallback == "popularity"


def test_bad_events_name_the_field(setup):
    core, _ = setup
    with pytest.raises(InvalidArgument) as err:
        core.record_events([Event("u1", "i2"), Event("u1", "i3", "teleport")])
    assert err.value.field == "events[1].type"
    with pytest.raises(InvalidArgument) as err:
        core.record_events([])
    assert err.value.field == "events"


def test_popularity_needs_data(tmp_path):
    backend = Catalog()
    core = GatewayCore(backend, backend, EventStore(f"sqlite:///{tmp_path}/e.db"), GatewayOptions())
    with pytest.raises(FailedPrecondition, match="--bundle"):
        core.recommend(RecommendQuery(user_id="nobody"), Deadline.after(5))


def test_side_features_sent_in_the_rankers_order(tmp_path):
    backend = Catalog()
    events = EventStore(f"sqlite:///{tmp_path}/e.db", [("u1", ["i11", "i10"]), ("u2", ["i5"])])
    names = ("history_length", "item_popularity", "recall_rank", "recall_score")
    core = GatewayCore(backend, backend, events, GatewayOptions(), side_features=names)
    core.recommend(RecommendQuery(user_id="u1", k=3, candidate_count=4), Deadline.after(5))
    query = backend.ranks[0][0]
    assert query.candidate_features is not None
    feats = query.candidate_features.reshape(len(query.candidate_ids), len(names))
    np.testing.assert_allclose(feats[:, 0], np.log1p(2))  # two history items
    pops = [events.popularity.get(i, 0) for i in query.candidate_ids]
    np.testing.assert_allclose(feats[:, 1], np.log1p(pops))
    np.testing.assert_allclose(feats[:, 2], np.log1p(np.arange(4)))
    np.testing.assert_allclose(feats[:, 3], 1.0)  # the fake recall's scores
    # No side features declared: none sent. Unknown names: refused at start-up.
    plain = GatewayCore(backend, backend, events, GatewayOptions())
    plain.recommend(RecommendQuery(user_id="u1", k=3), Deadline.after(5))
    assert backend.ranks[-1][0].candidate_features is None
    with pytest.raises(FailedPrecondition, match="side features"):
        GatewayCore(backend, backend, events, GatewayOptions(), side_features=("age",))


def test_recency_features_come_from_the_bundle_counts(tmp_path):
    from recstack.core.features import RECENCY

    backend = Catalog()
    events = EventStore(f"sqlite:///{tmp_path}/e.db", [("u1", ["i11", "i10"])])
    names = ("recall_score", *RECENCY)
    counts = {"i3": np.array([1.0, 5.0, 9.0], np.float32)}
    core = GatewayCore(
        backend, backend, events, GatewayOptions(), side_features=names, recency=counts
    )
    core.recommend(RecommendQuery(user_id="u1", k=3, candidate_count=4), Deadline.after(5))
    query = backend.ranks[0][0]
    assert query.candidate_features is not None
    feats = query.candidate_features.reshape(len(query.candidate_ids), len(names))
    for cid, row in zip(query.candidate_ids, feats, strict=True):
        want = np.log1p(counts[cid]) if cid in counts else np.zeros(3)
        np.testing.assert_allclose(row[1:], want, rtol=1e-6)  # unknown items: no interactions
    # A ranker that wants recency with a bundle that has none is refused at start-up.
    with pytest.raises(FailedPrecondition, match="recency"):
        GatewayCore(backend, backend, events, GatewayOptions(), side_features=names)


class Rollout(Catalog):
    """Recall serves ``recall_versions`` (primary first), rank ``rank_versions``; each
    refuses another version the way the services do (FAILED_PRECONDITION naming
    embedding_version). Vectors are tagged with their version so a mix would show."""

    def __init__(self, recall_versions, rank_versions):
        super().__init__()
        self.recall_versions = recall_versions
        self.rank_versions = rank_versions
        self.asked: list[str] = []  # embedding_version of every recall, answered or not

    def recall(self, query, timeout):
        self.asked.append(query.embedding_version)
        version = query.embedding_version or self.recall_versions[0]
        if version not in self.recall_versions:
            raise VersionNotServed(version, tuple(self.recall_versions))
        return replace(super().recall(query, timeout), bundle_version=version)

    def rank(self, query, timeout):
        if query.embedding_version not in self.rank_versions:
            raise VersionNotServed(query.embedding_version, tuple(self.rank_versions))
        return replace(super().rank(query, timeout), bundle_version=query.embedding_version)

    def serving_versions(self, timeout):
        return tuple(self.rank_versions)


def rollout_core(tmp_path, backend):
    events = EventStore(f"sqlite:///{tmp_path}/events.db", [("u1", ["i11", "i10"])])
    return GatewayCore(backend, backend, events, GatewayOptions(default_k=3), {}, "v1")


def test_recall_swapped_first_is_re_asked_in_the_version_rank_serves(tmp_path):
    backend = Rollout(recall_versions=["v2", "v1"], rank_versions=["v1"])
    core = rollout_core(tmp_path, backend)
    result = core.recommend(RecommendQuery(user_id="u1"), Deadline.after(5))
    assert result.bundle_version == "v1" and len(result.items) == 3
    assert [q.embedding_version for q, _ in backend.recalls] == ["", "v1"]
    assert [q.embedding_version for q, _ in backend.ranks] == ["v1"]
    # While the pin lasts, recall is asked in v1 directly: one recall per request.
    core.recommend(RecommendQuery(user_id="u1"), Deadline.after(5))
    assert backend.asked == ["", "v1", "v1"]
    # A pin recall no longer serves is dropped: recall's own version again.
    backend.recall_versions = ["v2"]
    backend.rank_versions = ["v2", "v1"]
    assert core.recommend(RecommendQuery(user_id="u1"), Deadline.after(5)).bundle_version == "v2"
    assert backend.asked[3:] == ["v1", ""]
    # After version_pin_s, recall's own version is tried first again.
    core._pin = ("v1", 0.0)
    backend.recall_versions = ["v2", "v1"]
    core.recommend(RecommendQuery(user_id="u1"), Deadline.after(5))
    assert backend.asked[5:] == [""]


def test_rank_swapped_first_serves_the_old_version_without_a_second_recall(tmp_path):
    backend = Rollout(recall_versions=["v1"], rank_versions=["v2", "v1"])
    result = rollout_core(tmp_path, backend).recommend(
        RecommendQuery(user_id="u1"), Deadline.after(5)
    )
    assert result.bundle_version == "v1"
    assert len(backend.recalls) == 1 and backend.ranks[0][0].embedding_version == "v1"


def test_no_common_version_is_unavailable_not_a_mix(tmp_path):
    backend = Rollout(recall_versions=["v3"], rank_versions=["v2", "v1"])
    with pytest.raises(Unavailable, match="rollout"):
        rollout_core(tmp_path, backend).recommend(RecommendQuery(user_id="u1"), Deadline.after(5))
    assert backend.ranks == []  # nothing was ranked in another space
    assert backend.asked == ["", "v1", "v2"]


class Shard(Rollout):
    def get_items(self, ids, timeout):
        raise AssertionError("not used")


def test_shards_in_different_versions_are_re_asked_in_one_they_all_hold():
    swapped, behind = Shard(["v2", "v1"], []), Shard(["v1"], [])
    merged = ShardedRecall([swapped, behind]).recall(RecallQuery(k=4), 5)
    assert merged.bundle_version == "v1"
    assert [q.embedding_version for q, _ in swapped.recalls] == ["", "v1"]
    assert [q.embedding_version for q, _ in behind.recalls] == [""]
    # no version every shard holds: UNAVAILABLE, never a merge across spaces
    with pytest.raises(Unavailable, match="different bundle versions"):
        ShardedRecall([Shard(["v2"], []), Shard(["v1"], [])]).recall(RecallQuery(k=4), 5)


@pytest.mark.parametrize(
    "value,targets",
    [
        ("127.0.0.1:1", ["127.0.0.1:1"]),
        ("a:1, b:2", ["a:1", "b:2"]),
        ("dns:///s0:1,dns:///s1:1", ["dns:///s0:1", "dns:///s1:1"]),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", ["ipv4:10.0.0.1:1,10.0.0.2:1"]),
        ("ipv4:h:1,h:2,ipv4:h:3,h:4", ["ipv4:h:1,h:2", "ipv4:h:3,h:4"]),
        ("ipv4:h:1,dns:///s1:1", ["ipv4:h:1", "dns:///s1:1"]),
    ],
)
def test_recall_address_names_one_target_per_shard(value, targets):
    assert shard_targets(value) == targets


def test_since_last_interaction_from_the_profile_and_never_for_explicit_history(tmp_path):
    from recstack.core.features import DAY_S, GAP, MAX_GAP_S

    backend = Catalog()
    now = 1_000_000_000.0
    events = EventStore(
        f"sqlite:///{tmp_path}/e.db",
        [("u1", ["i11", "i10"]), ("u2", ["i5"])],
        seed_last_seen={"u1": int(now) - 2 * DAY_S, "u2": int(now) - 10 * MAX_GAP_S},
    )
    core = GatewayCore(
        backend, backend, events, GatewayOptions(), side_features=(GAP,), clock=lambda: now
    )

    def gap_sent(q: RecommendQuery) -> float:
        core.recommend(q, Deadline.after(5))
        feats = backend.ranks[-1][0].candidate_features
        assert feats is not None and np.ptp(feats) == 0  # one value for every candidate
        return float(feats[0])

    assert gap_sent(RecommendQuery(user_id="u1", k=2)) == pytest.approx(np.log1p(48.0))
    # Away longer than the cap: the cap (what training saw at most).
    assert gap_sent(RecommendQuery(user_id="u2", k=2)) == pytest.approx(np.log1p(MAX_GAP_S / 3600))
    # A recorded event is newer than the seed's last interaction.
    core.record_events([Event("u1", "i3", "view", int((now - 3600) * 1000))])
    assert events.profile("u1", 10) == Profile(("i3", "i11", "i10"), int(now) - 3600)
    assert gap_sent(RecommendQuery(user_id="u1", k=2)) == pytest.approx(np.log1p(1.0))
    # Explicit history (a live session) and query-only users: 0 (unknown).
    assert gap_sent(RecommendQuery(user_id="u1", history_item_ids=("i4",), k=2)) == 0.0
    assert gap_sent(RecommendQuery(query_text="x", k=2)) == 0.0
    # A deleted user's seed time is forgotten with their seed history.
    core.delete_user("u2")
    assert events.profile("u2", 10) == Profile(())


def test_fuse_recent_weighs_the_recent_list_into_the_rankers_order():
    ranked = ["a", "b", "c", "d"]
    assert fuse_recent(ranked, ["d", "x"], 0.0) == [0, 1, 2, 3]  # weight 0: the ranker's
    assert fuse_recent(ranked, [], 5.0) == [0, 1, 2, 3]
    # d: 1/13 + 1/10 beats a's 1/10; an id not ranked ("x") changes nothing.
    assert fuse_recent(ranked, ["d", "x"], 1.0) == [3, 0, 1, 2]
    # c and b each get a recent term; at weight 2, c (first in recent) passes b.
    assert fuse_recent(ranked, ["c", "b"], 2.0)[:2] == [2, 1]
    # Ties keep the ranker's order.
    assert fuse_recent(["a", "b"], ["b", "a"], 1.0, k0=10) == [0, 1]


def test_query_only_requests_fuse_the_rankers_order_with_recent_popularity(tmp_path):
    backend = Catalog()
    events = EventStore(f"sqlite:///{tmp_path}/events.db", [("u1", ["i11"])])
    core = GatewayCore(
        backend,
        backend,
        events,
        GatewayOptions(default_k=3, max_k=5),
        recent_top=("i0", "i1"),
        query_recent_weight=4.0,
    )
    result = core.recommend(RecommendQuery(query_text="jazz", k=3), Deadline.after(5))
    query, _ = backend.ranks[-1]
    assert query.top_k == len(query.candidate_ids) == len(VECTORS)  # every candidate ranked
    ranked = [f"i{n}" for n in range(11, -1, -1)]  # the fake ranker's order
    assert [i.id for i in result.items] == [
        ranked[r] for r in fuse_recent(ranked, ["i0", "i1"], 4.0)[:3]
    ]
    assert [i.id for i in result.items] == ["i0", "i1", "i11"]
    # A user with a history keeps the ranker's top-k, asked for k only.
    result = core.recommend(RecommendQuery(user_id="u1", query_text="jazz"), Deadline.after(5))
    assert backend.ranks[-1][0].top_k == 3
    assert [i.id for i in result.items] == ["i10", "i9", "i8"]


def test_a_query_only_request_re_asked_in_a_rollout_is_fused_by_the_version_that_answers(
    tmp_path,
):
    backend = Rollout(recall_versions=["v2", "v1"], rank_versions=["v1"])
    core = rollout_core(tmp_path, backend)
    # v2's build chose a fusion weight, the startup v1's none.
    core._views["v2"] = BundleView("v2", (), {}, ("i0",), 4.0)
    result = core.recommend(RecommendQuery(query_text="jazz", k=3), Deadline.after(5))
    assert result.bundle_version == "v1"
    assert backend.ranks[-1][0].top_k == 3  # v1 has no fusion: rank's top-k, as asked
    assert [i.id for i in result.items] == ["i11", "i10", "i9"]
    # The other way round: v1 fuses, so rank orders every candidate and the answer is cut.
    backend.recall_versions, backend.rank_versions = ["v2", "v1"], ["v1"]
    core._pin = ("", 0.0)
    core._views["v2"] = BundleView("v2", (), {})
    core._views["v1"] = BundleView("v1", (), {}, ("i0",), 4.0)
    result = core.recommend(RecommendQuery(query_text="jazz", k=3), Deadline.after(5))
    assert backend.ranks[-1][0].top_k == len(VECTORS)
    assert [i.id for i in result.items] == ["i0", "i11", "i10"]
