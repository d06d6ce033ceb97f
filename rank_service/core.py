"""Rank core: score candidates for one user with the bundle's ONNX ranker (no grpc here).

The ranker graph takes ``user`` [N, dim] and ``item`` [N, dim] float32 and returns
``score`` [N]; the user-item fusion (concat, product, |difference|) lives inside the graph,
so the service only tiles the user vector. Stateless: everything needed arrives in the
request, and a request's embedding version must equal the ranker's bundle version
(invariant 2: never score vectors from another embedding space).
"""

from __future__ import annotations

import logging

import numpy as np

from recstack import metrics
from recstack.bundle import Bundle
from recstack.config import RankOptions
from recstack.deadline import Deadline
from recstack.domain import RankInfo, RankQuery, RankResult, ScoredItem
from recstack.errors import BundleError, FailedPrecondition, InvalidArgument, ResourceExhausted
from recstack.ort import SessionOptions, create_session
from recstack.vectors import F32Array

log = logging.getLogger(__name__)


class RankCore:
    """Serves one bundle version's ranker."""

    def __init__(self, bundle: Bundle, options: RankOptions, ort: SessionOptions) -> None:
        self.version = bundle.version
        self.dim = bundle.dim
        self.options = options
        spec = bundle.section("ranker")
        self.user_input, self.item_input = spec["inputs"]
        self.output = spec["output"]
        self.session, self.provider = create_session(bundle.path(spec["model"]), ort)
        names = {i.name for i in self.session.get_inputs()}
        if names != {self.user_input, self.item_input}:
            raise BundleError(
                f"bundle {self.version}: ranker inputs {sorted(names)}, "
                f"manifest says {spec['inputs']}"
            )

    def validate(self, q: RankQuery) -> None:
        """Reject malformed queries with the offending field named."""
        if not q.embedding_version:
            raise InvalidArgument(
                "required (the bundle version the vectors came from)", field="embedding_version"
            )
        if q.embedding_version != self.version:
            raise FailedPrecondition(
                f"vectors are from bundle {q.embedding_version!r} but this ranker serves "
                f"{self.version!r}",
                field="embedding_version",
            )
        n = len(q.candidate_ids)
        if n == 0:
            raise InvalidArgument("at least one candidate is required", field="candidate_ids")
        if n > self.options.max_candidates:
            raise ResourceExhausted(
                f"{n} candidates exceeds the limit of {self.options.max_candidates}",
                field="candidate_ids",
            )
        if len(set(q.candidate_ids)) != n:
            raise InvalidArgument("ids must be distinct", field="candidate_ids")
        if q.top_k < 0:
            raise InvalidArgument(f"must be >= 0 (0 = all), got {q.top_k}", field="top_k")
        if q.user_vector.shape != (self.dim,):
            raise InvalidArgument(f"expected {self.dim} dims", field="user_vector")
        if q.candidate_vectors.shape != (n, self.dim):
            raise InvalidArgument(f"expected {n} x {self.dim} values", field="candidate_vectors")

    def scores(self, user: F32Array, items: F32Array) -> F32Array:
        """Raw ranker scores for rows of ``items`` against one user vector."""
        users = np.broadcast_to(user, items.shape)
        out = self.session.run(
            [self.output], {self.user_input: np.ascontiguousarray(users), self.item_input: items}
        )[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def rank(self, q: RankQuery, deadline: Deadline) -> RankResult:
        """Candidates by descending score (ties keep request order), cut to ``top_k``."""
        self.validate(q)
        deadline.check("ranking")
        scores = self.scores(q.user_vector, q.candidate_vectors)
        order = np.argsort(-scores, kind="stable")
        if q.top_k:
            order = order[: q.top_k]
        return RankResult(
            [ScoredItem(q.candidate_ids[i], float(scores[i])) for i in order], self.version
        )

    def self_check(self) -> None:
        """Probe run on a deterministic input: finite scores of the right shape."""
        rng = np.random.default_rng(0)
        items = rng.standard_normal((4, self.dim)).astype(np.float32)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        scores = self.scores(items[0], items)
        if scores.shape != (4,) or not np.isfinite(scores).all():
            raise BundleError(f"bundle {self.version}: ranker self-check gave {scores!r}")
        log.info(
            "rank self-check passed", extra={"version": self.version, "provider": self.provider}
        )

    def info(self) -> RankInfo:
        return RankInfo(self.version, self.dim, self.provider, self.options.max_candidates)


def load_core(options: RankOptions, ort: SessionOptions) -> RankCore:
    """Open and verify the bundle, build the core, self-check it."""
    core = RankCore(Bundle.open(options.bundle), options, ort)
    core.self_check()
    metrics.BUNDLE_INFO.labels("rank", core.version, core.provider).set(1)
    return core
