"""Rank core: score candidates for one user with the bundle's ONNX ranker (no grpc here).

The ranker graph takes ``user`` [N, dim] and ``item`` [N, dim] float32 (plus ``features``
[N, F] when the manifest's ranker section declares ``side_features``) and returns ``score``
[N]; the user-item fusion (concat, product, |difference|) lives inside the graph, so the
service only tiles the user vector. Stateless: everything needed arrives in the request,
and a request's embedding version must equal the ranker's bundle version (invariant 2:
never score vectors from another embedding space).

Each row is scored independently, which is what makes dynamic batching exact: concurrent
requests' rows are concatenated into one ORT run by ``recstack.models.batcher`` and split back.

Lifecycle: one core per bundle version, held by :class:`recstack.core.lifecycle.Versions`
(the service can hold several during a rollout); a request leases the core of the version
it names, and ``close`` (called once the core is retired and its last lease has ended)
stops its batcher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rank_service.mmr import mmr_order
from rank_service.runner import RankerRunner
from recstack.core import metrics
from recstack.core.bundle import Bundle
from recstack.core.config import OrtOptions, RankOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import RankInfo, RankQuery, RankResult, ScoredItem
from recstack.core.errors import (
    BundleError,
    FailedPrecondition,
    InvalidArgument,
    limit_exceeded,
)
from recstack.core.lifecycle import Lifecycle
from recstack.core.vectors import F32Array
from recstack.models.batcher import Batcher, BatchMetrics, BeforeRunHook
from recstack.models.ort import CUDA, SessionOptions, create_session

log = logging.getLogger(__name__)

DEFAULT_FEATURES_INPUT = "features"
RANK_BATCH_METRICS = BatchMetrics(
    metrics.RANK_BATCH_ROWS,
    metrics.RANK_BATCH_REQUESTS,
    metrics.RANK_QUEUE_DELAY,
    metrics.RANK_QUEUE_DEPTH,
    metrics.RANK_DROPPED,
)


class RankCore:
    """Serves one bundle version's ranker."""

    def __init__(
        self,
        bundle: Bundle,
        options: RankOptions,
        ort: SessionOptions,
        *,
        before_batch: BeforeRunHook | None = None,
    ) -> None:
        self.version = bundle.version
        self.dim = bundle.dim
        self.root = bundle.root
        self.options = options
        spec = bundle.section("ranker")
        self.user_input, self.item_input = spec["inputs"]
        self.output = spec["output"]
        self.side_features: tuple[str, ...] = tuple(str(f) for f in spec.get("side_features", []))
        self.features_input = str(spec.get("features_input", DEFAULT_FEATURES_INPUT))
        self.requested_device = ort.device
        session, self.provider = create_session(bundle.path(spec["model"]), ort)
        self._check_inputs(session, spec)
        use_binding = options.io_binding and self.provider == CUDA
        self.runner = RankerRunner(session, self.provider, self.output, io_binding=use_binding)
        self.batcher: Batcher | None = None
        if options.batching:
            self.batcher = Batcher(
                self._run_merged,
                max_batch_rows=options.max_batch_rows,
                max_queue_delay_s=options.max_queue_delay_ms / 1000.0,
                max_queue_requests=options.max_queue_requests,
                metrics=RANK_BATCH_METRICS,
                before_run=before_batch,
                name=f"rank-batcher-{self.version}",
                what="the ranker",
            )
        log.info(
            "ranker ready",
            extra={
                "version": self.version,
                "provider": self.provider,
                "requested_device": ort.device,
                "io_binding": use_binding,
                "pinned_buffers": self.runner.pinned,
                "batching": options.batching,
                "max_batch_rows": options.max_batch_rows,
                "max_queue_delay_ms": options.max_queue_delay_ms,
                "side_features": list(self.side_features),
            },
        )

    @property
    def feature_count(self) -> int:
        return len(self.side_features)

    def _check_inputs(self, session: Any, spec: dict[str, Any]) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        want = {self.user_input, self.item_input}
        if self.side_features:
            want.add(self.features_input)
        if set(inputs) != want:
            raise BundleError(
                f"bundle {self.version}: ranker inputs {sorted(inputs)}, manifest says "
                f"{spec['inputs']} with side_features {list(self.side_features)}"
            )
        if self.side_features:
            shape = inputs[self.features_input].shape
            width = shape[-1] if len(shape) == 2 else None
            if isinstance(width, int) and width != self.feature_count:
                raise BundleError(
                    f"bundle {self.version}: ranker input {self.features_input!r} has width "
                    f"{width}, manifest declares {self.feature_count} side features"
                )

    def validate(self, q: RankQuery) -> F32Array | None:
        """Reject malformed queries with the offending field named; returns [N, F] features."""
        if not q.embedding_version:
            raise InvalidArgument(
                "required (the bundle version the vectors came from)", field="embedding_version"
            )
        if q.embedding_version != self.version:
            raise FailedPrecondition(
                f"vectors are from bundle {q.embedding_version!r} but this ranker serves "
                f"{self.version!r}",
                field="embedding_version",
                reason="EMBEDDING_VERSION_MISMATCH",
                metadata={"expected": self.version, "got": q.embedding_version},
            )
        n = len(q.candidate_ids)
        if n == 0:
            raise InvalidArgument("at least one candidate is required", field="candidate_ids")
        if n > self.options.max_candidates:
            raise limit_exceeded("candidate_ids", n, self.options.max_candidates, "candidates")
        if len(set(q.candidate_ids)) != n:
            raise InvalidArgument("ids must be distinct", field="candidate_ids")
        if q.top_k < 0:
            raise InvalidArgument(f"must be >= 0 (0 = all), got {q.top_k}", field="top_k")
        if not (np.isfinite(q.diversity_lambda) and 0.0 <= q.diversity_lambda <= 1.0):
            raise InvalidArgument(
                f"must be in [0, 1] (0 = off), got {q.diversity_lambda}", field="diversity_lambda"
            )
        if q.user_vector.shape != (self.dim,):
            raise InvalidArgument(f"expected {self.dim} dims", field="user_vector")
        if q.candidate_vectors.shape != (n, self.dim):
            raise InvalidArgument(f"expected {n} x {self.dim} values", field="candidate_vectors")
        return self._features(q.candidate_features, n)

    def _features(self, flat: F32Array | None, n: int) -> F32Array | None:
        f = self.feature_count
        sent = flat is not None and flat.size > 0
        if not f:
            if sent:
                raise InvalidArgument(
                    f"this ranker (bundle {self.version}) declares no side features; send none",
                    field="candidate_features",
                )
            return None
        if flat is None or not sent:
            raise InvalidArgument(
                f"required: {n} x {f} float32 values ({', '.join(self.side_features)})",
                field="candidate_features",
            )
        if flat.size != n * f:
            raise InvalidArgument(
                f"expected {n} x {f} = {n * f} float32 values "
                f"({', '.join(self.side_features)}), got {flat.size}",
                field="candidate_features",
            )
        if not np.isfinite(flat).all():
            raise InvalidArgument("contains NaN or infinite values", field="candidate_features")
        return np.ascontiguousarray(flat, dtype=np.float32).reshape(n, f)

    def _feeds(self, inputs: tuple[F32Array, ...]) -> dict[str, F32Array]:
        feeds = {self.user_input: inputs[0], self.item_input: inputs[1]}
        if self.side_features:
            feeds[self.features_input] = inputs[2]
        return feeds

    def _run_merged(self, inputs: tuple[F32Array, ...]) -> F32Array:
        return self.runner.run(self._feeds(inputs))

    def scores(self, user: F32Array, items: F32Array, features: F32Array | None = None) -> F32Array:
        """Raw ranker scores for rows of ``items`` against one user vector (direct run)."""
        return self.runner.run(self._feeds(self._rows(user, items, features)))

    def _rows(
        self, user: F32Array, items: F32Array, features: F32Array | None
    ) -> tuple[F32Array, ...]:
        users = np.ascontiguousarray(np.broadcast_to(user, items.shape), dtype=np.float32)
        rows: tuple[F32Array, ...] = (users, np.ascontiguousarray(items, dtype=np.float32))
        if self.side_features:
            if features is None:
                features = np.zeros((items.shape[0], self.feature_count), dtype=np.float32)
            rows += (features,)
        return rows

    def rank(self, q: RankQuery, deadline: Deadline) -> RankResult:
        """Candidates by descending score (ties keep request order) or MMR order, cut to top_k."""
        features = self.validate(q)
        deadline.check("ranking")
        rows = self._rows(q.user_vector, q.candidate_vectors, features)
        if self.batcher is not None:
            scores = self.batcher.submit(rows, deadline)
        else:
            scores = self.runner.run(self._feeds(rows))
        if q.diversity_lambda > 0:
            order = mmr_order(scores, q.candidate_vectors, q.diversity_lambda, q.top_k)
        else:
            order = np.argsort(-scores, kind="stable")
            if q.top_k:
                order = order[: q.top_k]
        return RankResult(
            [ScoredItem(q.candidate_ids[i], float(scores[i])) for i in order], self.version
        )

    def self_check(self) -> None:
        """Probe run on a deterministic input: finite scores of the right shape, both paths.

        The probe goes through the batcher too (when on), so a core that is published can
        run requests end to end.
        """
        rng = np.random.default_rng(0)
        items = rng.standard_normal((4, self.dim)).astype(np.float32)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        scores = self.scores(items[0], items)
        if scores.shape != (4,) or not np.isfinite(scores).all():
            raise BundleError(f"bundle {self.version}: ranker self-check gave {scores!r}")
        if self.batcher is not None:
            batched = self.batcher.submit(self._rows(items[0], items, None), Deadline.after(30))
            if not np.allclose(batched, scores, atol=1e-5):
                raise BundleError(f"bundle {self.version}: batched self-check disagrees")
        log.info(
            "rank self-check passed", extra={"version": self.version, "provider": self.provider}
        )

    def info(self) -> RankInfo:
        return RankInfo(
            self.version,
            self.dim,
            self.provider,
            self.options.max_candidates,
            side_features=self.side_features,
            batching=self.batcher is not None,
            max_batch_rows=self.options.max_batch_rows if self.batcher is not None else 0,
        )

    def close(self, timeout: float | None = 10.0) -> None:
        """Release the batcher (its queued requests run first). Called by the lifecycle
        once no request holds this core, or at shutdown."""
        if self.batcher is not None:
            self.batcher.close(timeout)
        log.info("ranker closed", extra={"version": self.version})


def publish_metrics(core: RankCore, *, serving: bool) -> None:
    """Set (or clear) ``core``'s bundle gauge; a serving core also sets the provider gauge
    (left set when a core retires: every core of a process runs on the same provider)."""
    metrics.BUNDLE_INFO.labels("rank", core.version, core.provider).set(1 if serving else 0)
    if serving:
        metrics.RANK_PROVIDER.labels(
            core.provider, core.requested_device, str(core.runner.io_binding).lower()
        ).set(1)


def load_core(
    options: RankOptions,
    ort: SessionOptions,
    *,
    path: str | None = None,
    before_batch: BeforeRunHook | None = None,
) -> RankCore:
    """Open and verify the bundle (``path`` or ``options.bundle``), build the core, self-check.

    A core that fails its self-check is closed before the error propagates (no thread leak).
    """
    bundle = Bundle.open(path or options.bundle, verify="on_use")
    core = RankCore(bundle, options, ort, before_batch=before_batch)
    try:
        core.self_check()
    except BaseException:
        core.close(timeout=5)
        raise
    return core


def rank_lifecycle(
    options: RankOptions,
    ort: OrtOptions | None = None,
    *,
    before_batch: BeforeRunHook | None = None,
) -> Lifecycle[RankCore]:
    """The rank cores of ``options.bundle`` (not loaded yet: call ``load_initial``)."""
    session_options = (ort or OrtOptions()).session_options(options.optimized_model_path or None)

    def build(path: Path) -> RankCore:
        return load_core(options, session_options, path=str(path), before_batch=before_batch)

    return Lifecycle(
        "rank",
        options.bundle,
        build,
        grace_s=options.version_grace_s,
        load_previous=options.load_previous,
        on_serving=lambda core, serving: publish_metrics(core, serving=serving),
    )
