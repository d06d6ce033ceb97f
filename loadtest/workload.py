"""Request mixes drawn from a bundle: real user histories, item titles and item vectors.

Builds protobuf messages only (no channels, no calls). A run cycles through a pool of
pre-built requests, drawn once with a seeded generator in the proportions of the mix, so
building messages (packing hundreds of vectors for Rank) costs nothing during the run.

Kinds per service (``--mix kind=weight,...``):

- recall: ``history`` (a user's recent items, seen items excluded), ``text`` (an item title
  as the query), ``vector`` (an item vector as the query vector).
- rank: ``history`` (user vector = normalised mean of the user's item vectors),
  ``item`` (one item vector as the user vector), ``diverse`` (as history, with MMR
  diversity); candidates are distinct random catalog items with their real vectors and the
  bundle's version.
- recommend: ``user`` (a known user id), ``text`` (a title as query text, a new user),
  ``history`` (explicit history item ids, no user id), ``cold`` (an unknown user id with
  no history or query: the gateway's popularity fallback).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.core.bundle import Bundle
from recstack.core.features import candidate_features, history_similarities
from recstack.core.vectors import F32Array, l2_normalize, pack
from recstack.v1 import gateway_pb2, rank_pb2, recall_pb2

SERVICES = ("recall", "rank", "recommend")
DEFAULT_MIX: dict[str, dict[str, float]] = {
    "recall": {"history": 0.5, "text": 0.3, "vector": 0.2},
    "rank": {"history": 0.6, "item": 0.3, "diverse": 0.1},
    "recommend": {"user": 0.55, "text": 0.2, "history": 0.2, "cold": 0.05},
}
NEEDS_HISTORY = {("recall", "history"), ("rank", "history"), ("rank", "diverse")} | {
    ("recommend", "user"),
    ("recommend", "history"),
}
DIVERSITY_LAMBDA = 0.7


class WorkloadError(ValueError):
    """A mix or bundle that cannot produce the requested workload."""


@dataclass(frozen=True)
class WorkloadOptions:
    """Shape of the generated requests."""

    k: int = 10
    candidates: int = 0  # rank: candidates per request (0 = 100); recommend: candidate_count
    history_len: int = 20
    omit_vectors: bool = False
    pool_size: int = 512
    seed: int = 0


@dataclass(frozen=True)
class LabelledRequest:
    """A request message and the mix kind it was drawn for."""

    kind: str
    message: Any


@dataclass(frozen=True)
class BundleData:
    """What the generators read from a bundle."""

    version: str
    ids: list[str]
    titles: list[str]
    vectors: F32Array
    histories: list[tuple[str, list[str]]]
    side_features: tuple[str, ...] = ()  # what the bundle's ranker declares
    popularity: dict[str, int] | None = None  # users per item, as the gateway counts
    history_window: int = 50  # history items the user tower (and its features) read

    @classmethod
    def load(cls, bundle: Bundle) -> BundleData:
        items = list(bundle.iter_catalog())
        vectors = bundle.load_vectors()
        if len(items) != len(vectors) or not items:
            raise WorkloadError(
                f"bundle {bundle.version}: {len(items)} catalog items, {len(vectors)} vectors"
            )
        known = {it.id for it in items}
        histories = []
        for user, history in bundle.iter_user_histories():
            kept = [i for i in dict.fromkeys(history) if i in known]
            if kept:
                histories.append((user, kept))
        popularity: dict[str, int] = {}
        for _, history in histories:
            for i in history:
                popularity[i] = popularity.get(i, 0) + 1
        return cls(
            bundle.version,
            [it.id for it in items],
            [it.title or it.text for it in items],
            vectors,
            histories,
            tuple(bundle.section("ranker").get("side_features", ())),
            popularity,
            int(bundle.section("user")["max_len"]),
        )


def parse_mix(service: str, spec: str | None) -> dict[str, float]:
    """``kind=weight,...`` (weights need not sum to 1) or the service's default mix."""
    if service not in SERVICES:
        raise WorkloadError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    allowed = DEFAULT_MIX[service]
    if not spec:
        return dict(allowed)
    mix: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, weight = part.strip().partition("=")
        if name not in allowed:
            raise WorkloadError(
                f"{service} mix: unknown kind {name!r}; kinds are {', '.join(allowed)}"
            )
        try:
            mix[name] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise WorkloadError(f"{service} mix: weight {weight!r} is not a number") from exc
        if not mix[name] >= 0:
            raise WorkloadError(f"{service} mix: weight of {name} must be >= 0")
    if sum(mix.values()) <= 0:
        raise WorkloadError(f"{service} mix: at least one positive weight is needed")
    return {k: v for k, v in mix.items() if v > 0}


class Generator:
    """Draws labelled requests for one service from bundle data."""

    def __init__(
        self,
        service: str,
        data: BundleData,
        mix: Mapping[str, float],
        options: WorkloadOptions,
    ) -> None:
        if not data.histories:
            missing = [k for k in mix if (service, k) in NEEDS_HISTORY]
            if missing:
                raise WorkloadError(
                    f"bundle {data.version} has no user histories, needed by mix kinds "
                    f"{', '.join(missing)}; choose others with --mix"
                )
        self.service = service
        self.data = data
        self.kinds = list(mix)
        weights = np.array([mix[k] for k in self.kinds], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.options = options
        self.rng = np.random.default_rng(options.seed)
        self.row = {item_id: i for i, item_id in enumerate(data.ids)}

    def pool(self) -> list[LabelledRequest]:
        """``pool_size`` requests, kinds drawn in the mix's proportions."""
        if self.options.pool_size <= 0:
            raise WorkloadError("pool size must be positive")
        picks = self.rng.choice(len(self.kinds), size=self.options.pool_size, p=self.weights)
        return [self.make(self.kinds[int(i)]) for i in picks]

    def make(self, kind: str) -> LabelledRequest:
        build = {
            "recall": self._recall,
            "rank": self._rank,
            "recommend": self._recommend,
        }[self.service]
        return LabelledRequest(kind, build(kind))

    # -- draws ---------------------------------------------------------------------------

    def _user(self) -> tuple[str, list[str]]:
        user, history = self.data.histories[int(self.rng.integers(len(self.data.histories)))]
        return user, history[: self.options.history_len]

    def _item(self) -> int:
        return int(self.rng.integers(len(self.data.ids)))

    def _history_vector(self, history: list[str]) -> F32Array:
        rows = [self.row[i] for i in history]
        return l2_normalize(self.data.vectors[rows].mean(axis=0))

    # -- messages ------------------------------------------------------------------------

    def _recall(self, kind: str) -> recall_pb2.RecallRequest:
        o = self.options
        if kind == "history":
            _, history = self._user()
            return recall_pb2.RecallRequest(
                history_item_ids=history, exclude_ids=history, k=o.k, omit_vectors=o.omit_vectors
            )
        if kind == "text":
            return recall_pb2.RecallRequest(
                query_text=self.data.titles[self._item()], k=o.k, omit_vectors=o.omit_vectors
            )
        return recall_pb2.RecallRequest(
            query_vector=pack(self.data.vectors[self._item()]), k=o.k, omit_vectors=o.omit_vectors
        )

    def _rank(self, kind: str) -> rank_pb2.RankRequest:
        o = self.options
        n = min(o.candidates or 100, len(self.data.ids))
        rows = self.rng.choice(len(self.data.ids), size=n, replace=False)
        history: list[str] = []
        if kind == "item":
            user = self.data.vectors[self._item()]
        else:
            history = self._user()[1]
            user = self._history_vector(history)
        ids = [self.data.ids[int(r)] for r in rows]
        features = b""
        if self.data.side_features:
            # What the gateway would send for these candidates (recall's order: by score).
            scores = self.data.vectors[rows] @ user
            order = np.argsort(-scores, kind="stable")
            rows, ids, scores = rows[order], [ids[int(j)] for j in order], scores[order]
            pop = self.data.popularity or {}
            window = [self.row[i] for i in history[: self.data.history_window]][::-1]
            features = pack(
                candidate_features(
                    scores,
                    np.asarray([pop.get(i, 0) for i in ids]),
                    len(history),
                    history_similarities(self.data.vectors[rows], self.data.vectors[window]),
                    names=self.data.side_features,
                )
            )
        return rank_pb2.RankRequest(
            user_vector=pack(user),
            candidate_ids=ids,
            candidate_vectors=pack(self.data.vectors[rows]),
            embedding_version=self.data.version,
            top_k=min(o.k, n),
            diversity_lambda=DIVERSITY_LAMBDA if kind == "diverse" else 0.0,
            candidate_features=features,
        )

    def _recommend(self, kind: str) -> gateway_pb2.RecommendRequest:
        o = self.options
        if kind == "user":
            user, _ = self._user()
            return gateway_pb2.RecommendRequest(user_id=user, k=o.k, candidate_count=o.candidates)
        if kind == "history":
            _, history = self._user()
            return gateway_pb2.RecommendRequest(
                history_item_ids=history, k=o.k, candidate_count=o.candidates
            )
        if kind == "cold":
            user = f"loadtest-new-user-{int(self.rng.integers(1 << 30))}"
            return gateway_pb2.RecommendRequest(user_id=user, k=o.k, candidate_count=o.candidates)
        return gateway_pb2.RecommendRequest(
            query_text=self.data.titles[self._item()], k=o.k, candidate_count=o.candidates
        )
