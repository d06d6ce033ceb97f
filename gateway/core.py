"""Gateway core: Recommend = user profile -> recall -> rank, under one deadline (no grpc).

Downstream services are reached through the ``RecallBackend``/``RankBackend`` protocols
(gateway.clients implements them over gRPC), so this logic is testable in-process.
Deadline propagation (invariant 7): the caller's deadline (or the configured default) is
split: recall gets ``recall_share`` of what is left, rank gets everything left after recall.

Profiles: explicit history in the request (freshest) first, then the user's recorded
events, then their seed history from the bundle. A user with no history and no query gets
the most popular items (from the bundle), and the response says so in ``fallback``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from gateway.events import Event, EventStore
from recstack.core import metrics
from recstack.core.bundle import MANIFEST, Bundle
from recstack.core.config import GatewayOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import (
    ItemsResult,
    RankQuery,
    RankResult,
    RecallQuery,
    RecallResult,
    RecommendedItem,
    RecommendQuery,
    RecommendResult,
)
from recstack.core.errors import FailedPrecondition, InvalidArgument, Unavailable, limit_exceeded
from recstack.core.features import (
    DAY_S,
    MAX_GAP_S,
    RANKER_FEATURES,
    RECENCY,
    candidate_features,
    fuse_recent,
    load_recency,
    load_recent_top,
    unsupported,
)
from recstack.core.lifecycle import VERSION_FIELD

log = logging.getLogger(__name__)
POPULARITY = "popularity"
MAX_VIEWS = 4  # bundle versions whose features the gateway keeps (a roll needs two)


class RecallBackend(Protocol):
    """Something that answers a recall within ``timeout`` seconds (None = unbounded)."""

    def recall(self, query: RecallQuery, timeout: float | None) -> RecallResult: ...

    def get_items(self, ids: Sequence[str], timeout: float | None) -> ItemsResult: ...


class RankBackend(Protocol):
    """Something that ranks candidates within ``timeout`` seconds (None = unbounded)."""

    def rank(self, query: RankQuery, timeout: float | None) -> RankResult: ...

    def serving_versions(self, timeout: float | None) -> tuple[str, ...]: ...


def catalog_from_bundle(bundle: Bundle | None) -> tuple[dict[str, tuple[str, str]], str]:
    """id -> (title, text) of the bundle's items, and its version (for fallback answers)."""
    if bundle is None:
        return {}, ""
    return {it.id: (it.title, it.text) for it in bundle.iter_catalog()}, bundle.version


def open_events(options: GatewayOptions, bundle: Bundle | None) -> EventStore:
    """The event store the options name, seeded with the bundle's user histories."""
    dsn = options.events_dsn or f"sqlite:///{Path(options.state_dir).resolve()}/events.db"
    profiles = list(bundle.iter_user_profiles()) if bundle is not None else []
    newest = max((last for _, _, last in profiles), default=0)
    age = time.time() - newest
    if bundle is not None and newest and age > MAX_GAP_S:
        # Not an error (a demo on old data is served this way), but every seed user then
        # reads as long away to the ranker until they record events.
        log.warning(
            "bundle %s: its newest interaction is %.0f days old; since_last_interaction is "
            "at its cap (%d days) for every seed user until they record events",
            bundle.version,
            age / DAY_S,
            MAX_GAP_S // DAY_S,
        )
    return EventStore(
        dsn,
        ((user, items) for user, items, _ in profiles),
        max_batch=options.max_events,
        seed_last_seen={user: last for user, _, last in profiles if last},
    )


@dataclass(frozen=True)
class BundleView:
    """What the gateway computes a version's ranker features from: the names its ranker
    declares, in order, and the bundle's recency counts (item id -> counts per window); and
    how that version orders a query-only request."""

    version: str
    side_features: tuple[str, ...]
    recency: Mapping[str, np.ndarray]
    # Query-only requests: the ranker's order fused with these recent-popularity items
    # (most popular first) at this weight (:func:`recstack.core.features.fuse_recent`).
    recent_top: tuple[str, ...] = ()
    query_recent_weight: float = 0.0


def bundles_root(bundle: Bundle | None) -> Path | None:
    """Where the other versions of ``bundle`` live: its parent directory (a bundles root
    holds one directory per version)."""
    return None if bundle is None else bundle.root.parent


def view_of(bundle: Bundle) -> BundleView:
    """The view a bundle's manifest and recency file give (its ranker's declared features)."""
    declared = tuple(bundle.section("ranker").get("side_features", ()))
    return BundleView(bundle.version, declared, load_recency(bundle), *query_fusion_of(bundle))


def query_fusion_of(bundle: Bundle) -> tuple[tuple[str, ...], float]:
    """The bundle's recent-popularity items and the query-only fusion weight its build chose
    (0 for bundles built before it existed: the ranker's order)."""
    return tuple(load_recent_top(bundle)), float(
        bundle.section("ranker").get("query_recent_weight", 0.0)
    )


def assemble(
    options: GatewayOptions,
    bundle: Bundle | None,
    recall: RecallBackend,
    rank: RankBackend,
    events: EventStore,
    side_features: Sequence[str],
) -> GatewayCore:
    """The gateway core over these backends, with the bundle's catalog and recency counts
    (the one assembly: the gateway server and the in-process pipeline both use it)."""
    catalog, version = catalog_from_bundle(bundle)
    recency = load_recency(bundle) if bundle is not None else {}
    recent_top, weight = query_fusion_of(bundle) if bundle is not None else ((), 0.0)
    return GatewayCore(
        recall,
        rank,
        events,
        options,
        catalog,
        version,
        side_features,
        recency,
        bundle_root=bundles_root(bundle),
        recent_top=recent_top,
        query_recent_weight=weight,
    )


class GatewayCore:
    """Recommend over a recall backend, a rank backend and the event store."""

    def __init__(
        self,
        recall: RecallBackend,
        rank: RankBackend,
        events: EventStore,
        options: GatewayOptions,
        catalog: Mapping[str, tuple[str, str]] | None = None,
        catalog_version: str = "",
        side_features: Sequence[str] = (),
        recency: Mapping[str, np.ndarray] | None = None,
        bundle_root: Path | None = None,
        clock: Callable[[], float] = time.time,
        recent_top: Sequence[str] = (),
        query_recent_weight: float = 0.0,
    ) -> None:
        """``side_features``: the names the ranker declares (rank GetInfo), in its order;
        each must be one :func:`recstack.core.features.candidate_features` computes.
        ``recency``: item id -> interaction counts per recency window (the bundle's,
        :func:`recstack.core.features.load_recency`); required when the ranker declares
        recency features. Both belong to ``catalog_version``; for any other version recall
        answers in (a rollout, a hot swap) the gateway reads that version's manifest and
        counts from ``bundle_root/<version>`` when it is there (:meth:`view`).
        ``clock``: Unix time in seconds (the since_last_interaction feature's "now").
        ``recent_top``, ``query_recent_weight``: how ``catalog_version`` orders query-only
        requests (:class:`BundleView`)."""
        self.clock = clock
        self.recall_backend = recall
        self.rank_backend = rank
        self.events = events
        self.options = options
        self.catalog = dict(catalog or {})
        self.catalog_version = catalog_version
        missing = unsupported(side_features)
        if missing:
            raise FailedPrecondition(
                f"the ranker declares side features {missing} that this gateway cannot "
                f"compute (it knows {list(RANKER_FEATURES)})",
                field="side_features",
            )
        self.side_features = tuple(side_features)
        self.recency = dict(recency or {})
        if not self.recency and any(n in RECENCY for n in self.side_features):
            raise FailedPrecondition(
                "the ranker declares recency features but the gateway's bundle has no "
                "recency counts (ranker.recency)",
                field="side_features",
            )
        self._no_recency = np.zeros(len(RECENCY), np.float32)
        self._bundle_root = bundle_root
        self._startup = BundleView(
            catalog_version,
            self.side_features,
            self.recency,
            tuple(recent_top),
            query_recent_weight,
        )
        # version -> its view; loaded once under _views_lock (readers of an existing entry
        # need no lock: a dict lookup is atomic and entries are never replaced).
        self._views: dict[str, BundleView] = {catalog_version: self._startup}
        self._views_lock = threading.Lock()
        # (version, until): recall is asked in this version while rank does not serve
        # recall's own (a rollout). One tuple store: readers see the old or the new pin.
        self._pin: tuple[str, float] = ("", 0.0)

    def _history(self, q: RecommendQuery) -> tuple[tuple[str, ...], bool, float | None]:
        """The user's history (explicit first, then stored), whether any was stored, and
        the seconds since their newest interaction (None: unknown, or an explicit history,
        which a caller sends for a user acting now)."""
        profile = self.events.profile(q.user_id, self.options.max_history) if q.user_id else None
        stored = profile.items if profile is not None else ()
        gap = None
        if profile is not None and profile.last_seen_s and not q.history_item_ids:
            gap = max(0.0, self.clock() - profile.last_seen_s)
        return tuple(dict.fromkeys([*q.history_item_ids, *stored])), bool(stored), gap

    def validate(self, q: RecommendQuery) -> tuple[int, int]:
        """Effective (k, candidate_count); raise naming the field on bad input."""
        o = self.options
        if not (q.user_id or q.history_item_ids or q.query_text.strip()):
            raise InvalidArgument(
                "a request needs a user id, history item ids or query text",
                field=("user_id", "history_item_ids", "query_text"),
                reason="MISSING_QUERY",
            )
        k = q.k or o.default_k
        if k < 0:
            raise InvalidArgument(f"must be positive (0 = default {o.default_k})", field="k")
        if k > o.max_k:
            raise limit_exceeded("k", k, o.max_k)
        n = q.candidate_count or max(o.default_candidates, k)
        if n < k:
            raise InvalidArgument(f"{n} is smaller than k={k}", field="candidate_count")
        if n > o.max_candidates:
            raise limit_exceeded("candidate_count", n, o.max_candidates)
        if len(q.history_item_ids) > o.max_history:
            raise InvalidArgument(
                f"{len(q.history_item_ids)} ids exceeds {o.max_history}", field="history_item_ids"
            )
        if not 0.0 <= q.diversity_lambda <= 1.0:
            raise InvalidArgument(
                f"must be in [0, 1], got {q.diversity_lambda}", field="diversity_lambda"
            )
        return k, n

    def recommend(self, q: RecommendQuery, caller: Deadline) -> RecommendResult:
        """Top-k items for the user: recall ``candidate_count``, rank them, keep k."""
        started = time.perf_counter()
        k, n = self.validate(q)
        deadline = (
            caller
            if caller.expires_at is not None
            else Deadline.after(self.options.default_timeout_s)
        )
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        history, stored, gap = self._history(q)
        timings["profile"] = (time.perf_counter() - t0) * 1000
        if not history and not q.query_text.strip():
            result = self._popular(k, timings)
        else:
            result = self._personal(q, k, n, history, stored, gap, deadline, timings)
        result.timings["total"] = (time.perf_counter() - started) * 1000
        for stage, millis in result.timings.items():
            metrics.STAGE_LATENCY.labels(stage).observe(millis / 1000)
        return result

    def _popular(self, k: int, timings: dict[str, float]) -> RecommendResult:
        if not self.events.popularity:
            raise FailedPrecondition(
                "the user has no history and gave no query, and no "
                "popularity data is loaded (start the gateway with "
                "--bundle)",
                field="user_id",
            )
        top = self.events.most_popular(k)
        total = max(n for _, n in top)
        items = [RecommendedItem(i, n / total, *self.catalog.get(i, ("", "")), 0.0) for i, n in top]
        return RecommendResult(items, self.catalog_version, 0, timings, fallback=POPULARITY)

    def _personal(
        self,
        q: RecommendQuery,
        k: int,
        n: int,
        history: tuple[str, ...],
        stored: bool,
        gap: float | None,
        deadline: Deadline,
        timings: dict[str, float],
    ) -> RecommendResult:
        deadline.check("recall")
        t0 = time.perf_counter()
        cut = self.options.max_history
        query = RecallQuery(
            k=n,
            query_text=q.query_text,
            history_item_ids=history[:cut],
            # Seen items: recall drops the history it was sent, and the rest here.
            exclude_ids=() if q.include_seen else history[cut:],
            exclude_history=not q.include_seen,
            filters=q.filters,
            # A stored profile may name items deleted since; explicit ids must exist.
            ignore_unknown_history=stored,
            user_prior=True,
            # The bundle's recent-popularity items join HNSW's candidates (the ranker was
            # trained on lists built the same way).
            include_recent=True,
        )
        recalled = self._recall(query, deadline)
        timings["recall"] = (time.perf_counter() - t0) * 1000
        items: list[RecommendedItem] = []
        if len(recalled):
            deadline.check("rank")
            t0 = time.perf_counter()
            fusion = self._query_fusion(q, history, recalled.bundle_version)
            try:
                ranked = self._rank(recalled, q, k, len(history), gap, deadline, fusion)
            except FailedPrecondition as exc:
                if exc.field != VERSION_FIELD:
                    raise
                # A rollout: rank does not serve recall's version (yet, or any more).
                recalled = self._recall_in_rank_version(query, recalled.bundle_version, deadline)
                self._pin = (recalled.bundle_version, time.monotonic() + self.options.version_pin_s)
                fusion = self._query_fusion(q, history, recalled.bundle_version)
                ranked = self._rank(recalled, q, k, len(history), gap, deadline, fusion)
            timings["rank"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            scored = list(ranked.items)
            if fusion is not None:
                order = fuse_recent(
                    [s.id for s in scored], fusion.recent_top, fusion.query_recent_weight
                )
                scored = [scored[r] for r in order[:k]]
            row = {item_id: i for i, item_id in enumerate(recalled.ids)}
            picked = [row[s.id] for s in scored]
            details = self._details(recalled, picked, deadline)
            # Recall flags its candidates only when asked include_recent (always, here).
            flagged = len(recalled.recent) == len(recalled)
            for s, i in zip(scored, picked, strict=True):
                because_id = recalled.because_item_ids[i]
                title, text = details[i]
                items.append(
                    RecommendedItem(
                        s.id,
                        s.score,
                        title,
                        text,
                        float(recalled.scores[i]),
                        because_id,
                        self.catalog.get(because_id, ("", ""))[0] if because_id else "",
                        recalled.because_query[i],
                        flagged and bool(recalled.recent[i]),
                    )
                )
            timings["details"] = (time.perf_counter() - t0) * 1000
        return RecommendResult(
            items,
            recalled.bundle_version,
            len(history),
            timings,
            missing_shards=recalled.missing_shards,
        )

    def _recall(self, query: RecallQuery, deadline: Deadline) -> RecallResult:
        """Recall, in the pinned version while a pin is active (so a rollout's overlap costs
        one extra recall per ``version_pin_s``, not one per request)."""
        version, until = self._pin
        if version and time.monotonic() < until:
            try:
                return self.recall_backend.recall(
                    replace(query, embedding_version=version),
                    deadline.budget(self.options.recall_share),
                )
            except FailedPrecondition as exc:
                if exc.field != VERSION_FIELD:
                    raise
                self._pin = ("", 0.0)  # recall dropped it: back to its own version
        return self.recall_backend.recall(query, deadline.budget(self.options.recall_share))

    def _query_fusion(
        self, q: RecommendQuery, history: tuple[str, ...], version: str
    ) -> BundleView | None:
        """The view whose recent popularity orders this request with the ranker: a
        query-only request (no history) in a version whose build chose a fusion weight;
        None otherwise (the ranker's order)."""
        if history or not q.query_text.strip():
            return None
        view = self.view(version)
        return view if view.query_recent_weight else None

    def _rank(
        self,
        recalled: RecallResult,
        q: RecommendQuery,
        k: int,
        history: int,
        gap: float | None,
        deadline: Deadline,
        fusion: BundleView | None,
    ) -> RankResult:
        """Rank's top ``k``; with ``fusion``, rank orders every candidate (a query-only
        request is then fused with recent popularity, see :meth:`_personal`)."""
        assert recalled.vectors is not None  # the gateway never asks omit_vectors
        return self.rank_backend.rank(
            RankQuery(
                user_vector=recalled.query_vector,
                candidate_ids=tuple(recalled.ids),
                # Recall's [N, dim] block as it arrived (no per-row work here).
                candidate_vectors=recalled.vectors,
                embedding_version=recalled.bundle_version,
                top_k=len(recalled) if fusion is not None else k,
                diversity_lambda=q.diversity_lambda,
                candidate_features=self._features(recalled, history, gap),
            ),
            deadline.budget(),
        )

    def _recall_in_rank_version(
        self, query: RecallQuery, refused: str, deadline: Deadline
    ) -> RecallResult:
        """Recall again, pinned to a version rank serves (never mixing spaces).

        Rank's versions are tried oldest first: during a roll that is the version every
        replica of both services still holds (old replicas serve it as their primary, new
        ones keep it as PREVIOUS or as the version they replaced). No common version:
        UNAVAILABLE, which callers retry.
        """
        held = self.rank_backend.serving_versions(deadline.budget(self.options.recall_share))
        for version in reversed(held):
            if version == refused:
                continue
            deadline.check("recall")
            try:
                recalled = self.recall_backend.recall(
                    replace(query, embedding_version=version),
                    deadline.budget(self.options.recall_share),
                )
            except FailedPrecondition as exc:
                if exc.field != VERSION_FIELD:
                    raise
                continue
            metrics.VERSION_FALLBACKS.labels("pinned").inc()
            log.info(
                "rollout: recall answered in %s, re-asked in %s, which rank serves",
                refused,
                version,
            )
            return recalled
        metrics.VERSION_FALLBACKS.labels("none_common").inc()
        raise Unavailable(
            f"recall answered in bundle version {refused!r}, rank serves {list(held)} and "
            "recall none of those (a rollout in progress); retry shortly"
        )

    def view(self, version: str) -> BundleView:
        """The features and recency counts of ``version``'s bundle: loaded from
        ``bundle_root/<version>`` the first time recall answers in it, else (not on this
        gateway's volume) the startup bundle's, with a warning once."""
        got = self._views.get(version)
        if got is not None:
            return got
        with self._views_lock:
            got = self._views.get(version)
            if got is not None:
                return got
            path = self._bundle_root / version if self._bundle_root and version else None
            # The name comes from recall's answer: one plain path component only.
            plain = bool(version) and "/" not in version and version not in (".", "..")
            if path is not None and plain and (path / MANIFEST).is_file():
                view = view_of(Bundle.open(path, verify="on_use"))
                missing = unsupported(view.side_features)
                if missing:
                    raise FailedPrecondition(
                        f"bundle {version}'s ranker declares side features {missing} that "
                        "this gateway cannot compute",
                        field="side_features",
                    )
                log.info("bundle %s: ranker features and recency counts loaded", version)
            else:
                view = self._startup
                log.warning(
                    "bundle %s is not under %s: its ranker gets the features of %s",
                    version,
                    self._bundle_root,
                    self._startup.version,
                )
            # Bounded: a long-running gateway sees one new version per publish.
            if len(self._views) >= MAX_VIEWS:
                oldest = next(v for v in self._views if v != self._startup.version)
                del self._views[oldest]
            self._views[version] = view
            return view

    def _features(
        self, recalled: RecallResult, history_length: int, gap: float | None
    ) -> np.ndarray | None:
        """The ranker's declared side features of recall's candidates, flat [N * F], as
        the bundle of the version recall answered in defines them."""
        view = self.view(recalled.bundle_version)
        if not view.side_features:
            return None
        pop = self.events.popularity
        recency = view.recency
        return candidate_features(
            recalled.scores,
            np.fromiter((pop.get(i, 0) for i in recalled.ids), np.float32, len(recalled)),
            history_length,
            recalled.similarities,
            view.side_features,
            # Items added live have no counts in the bundle: 0 interactions.
            np.stack([recency.get(i, self._no_recency) for i in recalled.ids]),
            gap,
        ).reshape(-1)

    def _details(
        self, recalled: RecallResult, rows: list[int], deadline: Deadline
    ) -> dict[int, tuple[str, str]]:
        """(title, text) of the chosen rows of recall's answer: from the gateway's bundle
        catalog when recall serves the same bundle and the item was not written since;
        otherwise (live writes, a rollout, no bundle here) asked of recall in one call."""
        out: dict[int, tuple[str, str]] = {}
        ask: list[int] = []
        same = recalled.bundle_version == self.catalog_version
        for i in rows:
            known = self.catalog.get(recalled.ids[i]) if same else None
            if recalled.titles:
                out[i] = (recalled.titles[i], recalled.texts[i])
            elif known is not None and not recalled.written[i]:
                out[i] = known
            else:
                ask.append(i)
        if ask:
            deadline.check("details")
            got = self.recall_backend.get_items([recalled.ids[i] for i in ask], deadline.budget())
            by_id = {it.id: (it.title, it.text) for it in got.items}
            # An item deleted between the recall and now keeps its place, without details.
            out.update({i: by_id.get(recalled.ids[i], ("", "")) for i in ask})
        return out

    def record_events(self, events: list[Event]) -> int:
        return self.events.record(events)

    def delete_user(self, user_id: str) -> int:
        return self.events.delete_user(user_id)
