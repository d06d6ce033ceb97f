"""Gateway core: Recommend = user profile -> recall -> rank, under one deadline (no grpc).

Downstream services are reached through the ``RecallBackend``/``RankBackend`` protocols
(gateway.clients implements them over gRPC), so this logic is testable in-process.
Deadline propagation (invariant 7): the caller's deadline (or the configured default) is
split: recall gets ``recall_share`` of what is left, rank gets everything left after recall.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from recstack import metrics
from recstack.bundle import Bundle
from recstack.config import GatewayOptions
from recstack.deadline import Deadline
from recstack.domain import (
    RankQuery,
    RankResult,
    RecallQuery,
    RecallResult,
    RecommendedItem,
    RecommendQuery,
    RecommendResult,
)
from recstack.errors import InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)


class RecallBackend(Protocol):
    """Something that answers a recall within ``timeout`` seconds (None = unbounded)."""

    def recall(self, query: RecallQuery, timeout: float | None) -> RecallResult: ...


class RankBackend(Protocol):
    """Something that ranks candidates within ``timeout`` seconds (None = unbounded)."""

    def rank(self, query: RankQuery, timeout: float | None) -> RankResult: ...


class ProfileStore:
    """User id -> item ids most recent first. Read-only seed from a bundle in this version."""

    def __init__(self, histories: Iterable[tuple[str, list[str]]] = ()) -> None:
        self._histories = {user: tuple(items) for user, items in histories}

    @classmethod
    def from_bundle(cls, path: str) -> ProfileStore:
        return cls(Bundle.open(path).iter_user_histories())

    @classmethod
    def from_jsonl(cls, path: Path) -> ProfileStore:
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return cls((str(r["user_id"]), [str(i) for i in r["items"]]) for r in rows)

    def history(self, user_id: str) -> tuple[str, ...] | None:
        return self._histories.get(user_id)

    def __len__(self) -> int:
        return len(self._histories)


class GatewayCore:
    """Recommend over a recall backend, a rank backend and a profile store."""

    def __init__(
        self,
        recall: RecallBackend,
        rank: RankBackend,
        profiles: ProfileStore,
        options: GatewayOptions,
    ) -> None:
        self.recall_backend = recall
        self.rank_backend = rank
        self.profiles = profiles
        self.options = options

    def _history(self, q: RecommendQuery) -> tuple[str, ...]:
        """Explicit history first (the freshest signal), then the stored profile, deduped."""
        stored: tuple[str, ...] = ()
        if q.user_id:
            found = self.profiles.history(q.user_id)
            if found is None and not q.history_item_ids and not q.query_text.strip():
                raise NotFound(
                    f"unknown user {q.user_id!r} and no history or query given", field="user_id"
                )
            stored = found or ()
        return tuple(dict.fromkeys([*q.history_item_ids, *stored]))

    def validate(self, q: RecommendQuery) -> tuple[int, int]:
        """Effective (k, candidate_count); raise naming the field on bad input."""
        o = self.options
        if not (q.user_id or q.history_item_ids or q.query_text.strip()):
            raise InvalidArgument(
                "a request needs a user id, history item ids or query text",
                field="user_id|history_item_ids|query_text",
            )
        k = q.k or o.default_k
        if k < 0:
            raise InvalidArgument(f"must be positive (0 = default {o.default_k})", field="k")
        if k > o.max_k:
            raise ResourceExhausted(f"{k} exceeds the limit of {o.max_k}", field="k")
        n = q.candidate_count or max(o.default_candidates, k)
        if n < k:
            raise InvalidArgument(f"{n} is smaller than k={k}", field="candidate_count")
        if n > o.max_candidates:
            raise ResourceExhausted(
                f"{n} exceeds the limit of {o.max_candidates}", field="candidate_count"
            )
        if len(q.history_item_ids) > o.max_history:
            raise InvalidArgument(
                f"{len(q.history_item_ids)} ids exceeds {o.max_history}", field="history_item_ids"
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
        history = self._history(q)
        exclude = () if q.include_seen else history
        timings: dict[str, float] = {}

        deadline.check("recall")
        t0 = time.perf_counter()
        recalled = self.recall_backend.recall(
            RecallQuery(
                k=n,
                query_text=q.query_text,
                history_item_ids=history[: self.options.max_history],
                exclude_ids=exclude,
            ),
            deadline.budget(self.options.recall_share),
        )
        timings["recall"] = (time.perf_counter() - t0) * 1000
        by_id = {c.id: c for c in recalled.candidates}
        items: list[RecommendedItem] = []
        if recalled.candidates:
            deadline.check("rank")
            t0 = time.perf_counter()
            ranked = self.rank_backend.rank(
                RankQuery(
                    user_vector=recalled.query_vector,
                    candidate_ids=tuple(by_id),
                    candidate_vectors=np.stack(
                        [c.vector for c in recalled.candidates if c.vector is not None]
                    ),
                    embedding_version=recalled.bundle_version,
                    top_k=k,
                ),
                deadline.budget(),
            )
            timings["rank"] = (time.perf_counter() - t0) * 1000
            for s in ranked.items:
                c = by_id[s.id]
                items.append(RecommendedItem(s.id, s.score, c.title, c.text, c.score))
        timings["total"] = (time.perf_counter() - started) * 1000
        for stage, millis in timings.items():
            metrics.STAGE_LATENCY.labels(stage).observe(millis / 1000)
        return RecommendResult(items, recalled.bundle_version, len(history), timings)
