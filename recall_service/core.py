"""Recall core: one bundle version's encoder + user tower + live item index + catalog log.

A query is a user (history item ids and/or a free-text query) or an explicit vector. The
user vector is the bundle's user tower (:mod:`recstack.models.user_tower`) over the vectors of the
history items, combined with the query text's encoder vector when there is one: a
history-only query runs no transformer. Scores are inner products of unit vectors. No grpc
here.

Writes: validated, vectors computed (from text, by this bundle's encoder) where missing,
committed to the catalog log, then applied to the index before the call returns, so an
acknowledged delete is never returned by this replica afterwards. Other replicas (a shared
PostgreSQL log) apply them within ``log_poll_s``; a reader that must see a write passes its
sequence as ``min_sequence``.

Shards: the index holds this shard's items only, but the vector directory used to build
histories (:mod:`recall_service.directory`) covers every item in the bundle and the log, so
all shards compute the same user vector. Sharded deployments with live writes therefore
share one log (PostgreSQL); every replica reads all of it, indexes its own shard's entries
and keeps the others' vectors in the directory.

Ordering: ``catch_up`` is the only path from the log to the index and runs under
``_apply_lock``, so batches are applied in sequence order exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recall_service.catalog_log import DELETE, UPSERT, CatalogLog, LogEntry, LogWrite
from recall_service.directory import VectorDirectory
from recall_service.filters import compile_filters
from recall_service.index import ItemIndex, SearchSpec, member_mask
from recstack.core import metrics
from recstack.core.bundle import Bundle
from recstack.core.config import RecallOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import ItemDetails, ItemsResult, RecallInfo, RecallQuery, RecallResult
from recstack.core.errors import (
    BundleError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    limit_exceeded,
)
from recstack.core.features import join_recent, load_recent_top, summarize_similarities
from recstack.core.sharding import shard_of
from recstack.core.vectors import F32Array, l2_normalize
from recstack.models.batcher import Batcher, BatcherClosed, BatchMetrics
from recstack.models.encoder import TextEncoder
from recstack.models.user_tower import UserTower

log = logging.getLogger(__name__)

QUERY_FIELDS = ("query_text", "history_item_ids", "query_vector")
ENCODER_BATCH_METRICS = BatchMetrics(
    metrics.ENCODER_BATCH_TEXTS,
    metrics.ENCODER_BATCH_REQUESTS,
    metrics.ENCODER_QUEUE_DELAY,
    metrics.ENCODER_QUEUE_DEPTH,
    metrics.ENCODER_DROPPED,
)
REPLAY_BATCH = 2048
UNIT_TOLERANCE = 1e-3
DEADLINE_MARGIN_S = 0.05


@dataclass(frozen=True)
class ItemWrite:
    """An upsert as the caller sent it (vector optional: computed from text if absent)."""

    id: str
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: F32Array | None = None
    embedding_version: str = ""


def _unit(vector: F32Array) -> F32Array:
    """A caller's vector as stored: kept bit-exact when already unit length, else scaled."""
    if abs(float(np.linalg.norm(vector)) - 1.0) <= UNIT_TOLERANCE:
        return vector
    return l2_normalize(vector)


class RecallCore:
    """Serves one bundle version for one shard."""

    def __init__(
        self,
        bundle: Bundle,
        index: ItemIndex,
        encoder: TextEncoder,
        tower: UserTower,
        catalog: CatalogLog,
        options: RecallOptions,
        query_encoder: TextEncoder | None = None,
    ) -> None:
        """``encoder`` turns item texts (upserts, log replay) into vectors; ``query_encoder``
        (default: the same) turns query texts, e.g. the bundle's int8 encoder: item vectors
        then stay in the fp32 space the tower and index were built in."""
        self.bundle = bundle
        self.version = bundle.version
        self.root = bundle.root
        self.dim = bundle.dim
        self.index = index
        self.encoder = encoder
        self.query_encoder = query_encoder or encoder
        self.tower = tower
        self.catalog = catalog
        self.options = options
        self.directory = VectorDirectory(bundle, index, options.shard_index, options.shard_count)
        # The bundle's recent-popularity items (most first), for queries with include_recent.
        self.recent_top = load_recent_top(bundle)
        # The tokenizer object is not documented as thread-safe: every encoder run (either
        # encoder) holds this lock. With batching only the batcher's worker runs the query
        # encoder, so the lock is uncontended but for item writes (rare); it matters for
        # direct runs (batching off, or after close()).
        self._encode_lock = threading.Lock()
        self._batcher: Batcher | None = None
        if options.encoder_batching:
            self._batcher = Batcher(
                self._encode_query_rows,
                max_batch_rows=options.encoder_max_batch,
                max_queue_delay_s=options.encoder_max_delay_ms / 1000.0,
                max_queue_requests=options.encoder_max_queue,
                metrics=ENCODER_BATCH_METRICS,
                name=f"encoder-batcher-{self.version}",
                what="the encoder",
            )
        self._apply_lock = threading.Lock()
        self._applied = threading.Condition()

    # -- queries -------------------------------------------------------------------------

    def validate(self, q: RecallQuery) -> None:
        """Reject malformed queries with the offending field named."""
        o = self.options
        if q.k <= 0:
            raise InvalidArgument(f"must be positive, got {q.k}", field="k")
        if q.k > o.max_k:
            raise limit_exceeded("k", q.k, o.max_k)
        has_text = bool(q.query_text.strip()) or bool(q.history_item_ids)
        if q.query_vector is None and not has_text:
            raise InvalidArgument(
                "a query needs text, history item ids or a vector",
                field=QUERY_FIELDS,
                reason="MISSING_QUERY",
            )
        if q.query_vector is not None and has_text:
            raise InvalidArgument(
                "give either a vector or text/history, not both", field="query_vector"
            )
        if q.query_vector is not None and not np.any(q.query_vector):
            raise InvalidArgument("must not be the zero vector", field="query_vector")
        if len(q.query_text) > o.max_text_chars:
            raise InvalidArgument(
                f"{len(q.query_text)} characters exceeds {o.max_text_chars}", field="query_text"
            )
        if len(q.history_item_ids) > o.max_history:
            raise InvalidArgument(
                f"{len(q.history_item_ids)} ids exceeds {o.max_history}", field="history_item_ids"
            )
        if len(q.exclude_ids) > o.max_exclude:
            raise InvalidArgument(
                f"{len(q.exclude_ids)} ids exceeds {o.max_exclude}", field="exclude_ids"
            )

    def history_vectors(
        self, history_item_ids: Sequence[str], ignore_unknown: bool = False
    ) -> tuple[list[str], F32Array]:
        """Ids and [n, dim] vectors of the history (given most recent first), oldest first.

        Only the tower's ``max_len`` most recent ids are read. Unknown ids are the caller's
        error, unless ``ignore_unknown`` (a stored history may name items deleted since):
        then they are skipped. Call under the index's read lock.
        """
        recent = history_item_ids[: self.tower.max_len]
        found = [self.directory.get(i) for i in recent]
        unknown = [i for i, v in zip(recent, found, strict=True) if v is None]
        if unknown and not ignore_unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise InvalidArgument(
                f"unknown item ids {unknown[:5]}{more}",
                field="history_item_ids",
                reason="UNKNOWN_ITEM",
            )
        kept = [(i, v) for i, v in zip(recent, found, strict=True) if v is not None][::-1]
        if not kept:
            return [], np.zeros((0, self.dim), np.float32)
        return [i for i, _ in kept], np.stack([v for _, v in kept])

    def _encode_query_rows(self, inputs: tuple[np.ndarray, ...]) -> F32Array:
        with self._encode_lock:
            return self.query_encoder.encode(inputs[0].tolist())

    def encode(self, texts: list[str], deadline: Deadline | None = None) -> F32Array:
        """Unit vectors of query ``texts``; concurrent calls share encoder runs (batching)."""
        rows = np.empty(len(texts), dtype=object)
        rows[:] = texts
        if self._batcher is not None:
            try:
                return self._batcher.submit((rows,), deadline or Deadline.none())
            except BatcherClosed:
                pass  # this core was replaced or is stopping: encode directly
        return self._encode_query_rows((rows,))

    def encode_items(self, texts: list[str]) -> F32Array:
        """Unit vectors of item ``texts`` (writes, replay), with the item encoder."""
        with self._encode_lock:
            return self.encoder.encode(texts)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the encoder's batcher after the texts queued so far (hot swap, shutdown).
        Calls that still reach this core afterwards encode directly."""
        if self._batcher is not None:
            self._batcher.close(timeout)

    def recall(self, query: RecallQuery, deadline: Deadline) -> RecallResult:
        """Top-k items by inner product with the query vector."""
        return self.recall_batch([query], deadline)[0]

    def recall_batch(
        self, queries: Sequence[RecallQuery], deadline: Deadline
    ) -> list[RecallResult]:
        """Several recalls with one encoder call and one batched index search."""
        if len(queries) > self.options.max_batch:
            raise limit_exceeded("requests", len(queries), self.options.max_batch, "requests")
        specs = []
        for q in queries:
            self.validate(q)
            predicate = compile_filters(q.filters, self.index.metadata_fields)
            exclude = (*q.exclude_ids, *q.history_item_ids) if q.exclude_history else q.exclude_ids
            specs.append(SearchSpec(q.k, exclude, predicate, q.exact))
        wait_for = max((q.min_sequence for q in queries), default=0)
        if wait_for:
            self.wait_applied(wait_for, deadline)
        deadline.check("encoding")
        texts = [(i, q.query_text) for i, q in enumerate(queries) if q.query_text.strip()]
        encoded = self.encode([t for _, t in texts], deadline) if texts else np.zeros((0, self.dim))
        query_vecs = {i: v for (i, _), v in zip(texts, encoded, strict=True)}
        vectors = np.empty((len(queries), self.dim), dtype=np.float32)
        results = []
        # One read section: the histories are read from, and searched in, the same state.
        with self.index.lock.read():
            users = [i for i, q in enumerate(queries) if q.query_vector is None]
            found = {
                i: self.history_vectors(
                    queries[i].history_item_ids, queries[i].ignore_unknown_history
                )
                for i in users
            }
            if users:
                vectors[users] = self.tower.encode(
                    [found[i][1] for i in users],
                    [query_vecs.get(i) for i in users],
                    [queries[i].user_prior for i in users],
                )
            for i, q in enumerate(queries):
                if q.query_vector is not None:
                    vectors[i] = l2_normalize(q.query_vector)
            deadline.check("search")
            hits = self.index.search(vectors, specs, self.options.search_threads)
            for n, (q, qv, (labels, scores)) in enumerate(zip(queries, vectors, hits, strict=True)):
                recent: list[bool] = []
                if q.include_recent:
                    labels, scores, flags = self._with_recent(labels, scores, qv, specs[n])
                    recent = flags.tolist()
                hist_ids, hist = found.get(n, ([], np.zeros((0, self.dim), np.float32)))
                cand_vecs = self.index.rows(labels)
                # One candidate-by-history product serves the explanation and the
                # ranker's similarity features.
                by_history = cand_vecs @ hist.T
                because, because_query = self._explain(
                    cand_vecs, by_history, hist_ids, query_vecs.get(n)
                )
                details = (
                    [self.index.item(lab) for lab in labels.tolist()] if q.include_details else []
                )
                results.append(
                    RecallResult(
                        self.index.ids(labels),
                        scores,
                        None if q.omit_vectors else cand_vecs,
                        summarize_similarities(by_history),
                        because,
                        because_query,
                        self.index.written(labels),
                        qv,
                        self.version,
                        [it.title for it in details],
                        [it.text for it in details],
                        recent=recent,
                    )
                )
        return results

    def _with_recent(
        self, labels: np.ndarray, scores: F32Array, query: F32Array, spec: SearchSpec
    ) -> tuple[np.ndarray, F32Array, np.ndarray]:
        """The search's hits joined with the bundle's recent-popularity items that this
        shard holds and the spec admits (:func:`recstack.core.features.join_recent`): labels,
        scores and recent flags of the k kept, best first. Same read section as the search."""
        extra, extra_scores = self.index.named(self.recent_top, query, spec)
        found = member_mask(labels, extra)  # already among the hits: one row, flagged
        new = ~member_mask(extra, labels)
        all_labels = np.concatenate([labels, extra[new]]).astype(np.int64)
        all_scores = np.concatenate([scores, extra_scores[new]]).astype(np.float32)
        flags = np.concatenate([found, np.ones(int(new.sum()), bool)])
        keep = join_recent(all_scores, flags, spec.k)
        return all_labels[keep], all_scores[keep], flags[keep]

    def get_items(self, ids: Sequence[str]) -> ItemsResult:
        """The catalog entries of ``ids`` as served now (request order), and the unknown ids."""
        self._check_ids(ids)
        items: list[ItemDetails] = []
        missing: list[str] = []
        with self.index.lock.read():
            for item_id in ids:
                it = self.index.lookup(item_id)
                if it is None:
                    missing.append(item_id)
                else:
                    items.append(
                        ItemDetails(
                            it.id, it.title, it.text, it.metadata, self.index.is_written(it.id)
                        )
                    )
        return ItemsResult(items, tuple(missing), self.version)

    @staticmethod
    def _explain(
        cands: F32Array,
        by_history: F32Array,
        history_ids: list[str],
        query: F32Array | None,
    ) -> tuple[list[str], list[bool]]:
        """Per candidate: the most similar history item ("" if none or the query is closer)
        and whether the query is closer; ``by_history`` [N, H] are the candidates' inner
        products with the history."""
        n = len(cands)
        has_history = by_history.shape[1] > 0
        if not n or (not has_history and query is None):
            return [""] * n, [False] * n
        best_hist = np.full(n, -np.inf, np.float32)
        best_id = [""] * n
        if has_history:
            arg = by_history.argmax(axis=1)
            best_hist = by_history[np.arange(n), arg]
            best_id = [history_ids[j] for j in arg.tolist()]
        by_query = cands @ query if query is not None else np.full(n, -np.inf)
        closer = (by_query > best_hist).tolist()
        return ["" if c else b for c, b in zip(closer, best_id, strict=True)], closer

    # -- writes --------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[str], owned: bool = False) -> None:
        """At most ``max_batch`` ids, none empty (the ``ids`` of GetItems and Delete);
        ``owned``: each must also belong to this replica's shard (writes)."""
        if len(ids) > self.options.max_batch:
            raise limit_exceeded("ids", len(ids), self.options.max_batch, "ids")
        for i, item_id in enumerate(ids):
            if not item_id:
                raise InvalidArgument("must not be empty", field=f"ids[{i}]")
            if owned:
                self._check_owner(item_id, f"ids[{i}]")

    def _check_owner(self, item_id: str, where: str) -> None:
        o = self.options
        if o.shard_count > 1 and shard_of(item_id, o.shard_count) != o.shard_index:
            raise FailedPrecondition(
                f"item {item_id!r} belongs to shard {shard_of(item_id, o.shard_count)} of "
                f"{o.shard_count}; this replica serves shard {o.shard_index}",
                field=where,
                reason="WRONG_SHARD",
                metadata={
                    "shard": str(shard_of(item_id, o.shard_count)),
                    "shard_count": str(o.shard_count),
                    "serving_shard": str(o.shard_index),
                },
            )

    def upsert(self, items: Sequence[ItemWrite]) -> int:
        """Validate, encode, commit, apply; returns the committed sequence."""
        if not items:
            raise InvalidArgument("at least one item is required", field="items")
        if len(items) > self.options.max_batch:
            raise limit_exceeded("items", len(items), self.options.max_batch, "items")
        for i, it in enumerate(items):
            where = f"items[{i}]"
            if not it.id:
                raise InvalidArgument("must not be empty", field=f"{where}.id")
            self._check_owner(it.id, f"{where}.id")
            if len(it.text) > self.options.max_text_chars:
                raise InvalidArgument(
                    f"longer than {self.options.max_text_chars} characters", field=f"{where}.text"
                )
            if it.vector is None:
                if not it.text.strip():
                    raise InvalidArgument("an item needs text or a vector", field=f"{where}.text")
                continue
            if it.embedding_version != self.version:
                raise FailedPrecondition(
                    f"vector is from bundle {it.embedding_version!r}, this replica serves "
                    f"{self.version!r}",
                    field=f"{where}.embedding_version",
                    reason="EMBEDDING_VERSION_MISMATCH",
                    metadata={"expected": self.version, "got": it.embedding_version},
                )
            if it.vector.shape != (self.dim,) or not np.any(it.vector):
                raise InvalidArgument(
                    f"must be {self.dim} finite values, not all zero", field=f"{where}.vector"
                )
        need = [i for i, it in enumerate(items) if it.vector is None]
        encoded = self.encode_items([items[i].text for i in need]) if need else None
        vectors: dict[int, F32Array] = {}
        if encoded is not None:
            vectors = {i: encoded[n] for n, i in enumerate(need)}
        writes = [
            LogWrite(
                UPSERT,
                it.id,
                it.title,
                it.text,
                it.metadata,
                vectors[i] if it.vector is None else _unit(it.vector),
                self.version,
            )
            for i, it in enumerate(items)
        ]
        return self._commit(writes)

    def delete(self, ids: Sequence[str]) -> int:
        """Commit and apply deletes (unknown ids are no-ops); returns the sequence."""
        if not ids:
            raise InvalidArgument("at least one id is required", field="ids")
        self._check_ids(ids, owned=True)
        return self._commit([LogWrite(DELETE, item_id) for item_id in ids])

    def _commit(self, writes: list[LogWrite]) -> int:
        sequence = self.catalog.append(writes)
        self.catch_up()
        return sequence

    def catch_up(self) -> int:
        """Apply every committed log entry not yet applied; returns entries applied."""
        total = 0
        with self._apply_lock:
            while True:
                entries = self.catalog.read_after(self.index.applied_sequence, REPLAY_BATCH)
                if not entries:
                    break
                writes = self._in_this_space(entries)
                self.directory.apply_foreign(writes)
                self.index.apply(
                    [w for w in writes if self.directory.mine(w.item_id)], entries[-1].sequence
                )
                total += len(entries)
        if total:
            with self._applied:
                self._applied.notify_all()
            metrics.INDEX_ITEMS.set(len(self.index))
            metrics.APPLIED_SEQUENCE.set(self.index.applied_sequence)
        return total

    def load_directory(self, upto: int) -> None:
        """Replay the log's other-shard writes up to ``upto`` into the directory.

        Needed when the index came from a snapshot (it already reflects the log up to
        ``upto``, but the directory starts from the bundle). Sharded replicas only.
        """
        if self.options.shard_count == 1:
            return
        after = 0
        with self._apply_lock:
            while after < upto:
                entries = [
                    e for e in self.catalog.read_after(after, REPLAY_BATCH) if e.sequence <= upto
                ]
                if not entries:
                    break
                foreign = [e for e in entries if not self.directory.mine(e.write.item_id)]
                self.directory.apply_foreign(self._in_this_space(foreign))
                after = entries[-1].sequence

    def _in_this_space(self, entries: list[LogEntry]) -> list[LogWrite]:
        """The entries' writes (all shards), with vectors in this bundle's embedding space.

        A vector logged under another bundle version is recomputed from the item's text;
        one that has no text cannot be, and becomes a delete with a warning (it belongs to
        an embedding space this replica does not serve).
        """
        writes = [e.write for e in entries]
        stale = [
            i
            for i, w in enumerate(writes)
            if w.op != DELETE and w.embedding_version != self.version
        ]
        if stale:
            texts = [writes[i].text for i in stale if writes[i].text.strip()]
            encoded = iter(self.encode_items(texts)) if texts else iter(())
            for i in stale:
                w = writes[i]
                if w.text.strip():
                    writes[i] = LogWrite(
                        w.op, w.item_id, w.title, w.text, w.metadata, next(encoded), self.version
                    )
                else:
                    log.warning(
                        "skipping logged vector from another bundle version",
                        extra={"item": w.item_id, "vector_version": w.embedding_version},
                    )
                    writes[i] = LogWrite(DELETE, w.item_id)
        return writes

    def wait_applied(self, sequence: int, deadline: Deadline) -> None:
        """Block until ``sequence`` is applied here (read-your-writes), within the deadline."""
        limit = deadline.remaining()
        bounded_by_deadline = limit is not None and limit < self.options.read_wait_s
        if bounded_by_deadline and limit is not None:
            # Give up a little before the caller does, so the caller receives our message
            # (which names min_sequence) rather than its own bare deadline expiry.
            end = time.monotonic() + limit - min(DEADLINE_MARGIN_S, limit * 0.1)
        else:
            end = time.monotonic() + self.options.read_wait_s
        while self.index.applied_sequence < sequence:
            self.catch_up()
            left = end - time.monotonic()
            if self.index.applied_sequence >= sequence:
                return
            if left <= 0:
                message = (
                    f"replica has applied the catalog log up to "
                    f"{self.index.applied_sequence}, not yet {sequence}"
                )
                if bounded_by_deadline:
                    raise DeadlineExceeded(message, field="min_sequence")
                raise Unavailable(message, field="min_sequence")
            with self._applied:
                self._applied.wait(min(left, self.options.log_poll_s))

    # -- lifecycle -----------------------------------------------------------------------

    def self_check(self) -> None:
        """Probe: a few items' own vectors recall them first; the encoder and the user tower
        give unit vectors."""
        ids = self.index.live_ids()
        probes = sorted({ids[0], ids[len(ids) // 2], ids[-1]}) if ids else []
        for item_id in probes:
            vec = self.index.vector_of(item_id)
            assert vec is not None
            got = self.recall(
                RecallQuery(k=1, query_vector=vec, omit_vectors=True),
                Deadline.none(),
            )
            if not len(got) or abs(float(got.scores[0]) - 1.0) > 1e-3:
                raise BundleError(
                    f"bundle {self.version}: self-check failed: item "
                    f"{item_id!r} does not recall itself"
                )
        vec = self.encode(["self-check probe text"])[0]
        checked = [vec]
        if self.query_encoder is not self.encoder:
            checked.append(self.encode_items(["self-check probe text"])[0])
        for v in checked:
            if not np.isfinite(v).all() or abs(float(np.linalg.norm(v)) - 1.0) > 1e-3:
                raise BundleError(
                    f"bundle {self.version}: encoder self-check produced a bad vector"
                )
        probe_history = [self.index.vector_of(i) for i in probes]
        users = self.tower.encode(
            [np.stack([v for v in probe_history if v is not None] + [vec]), vec[None]],
            [None, vec],
        )
        if not np.isfinite(users).all() or np.any(np.abs(np.linalg.norm(users, axis=1) - 1) > 1e-3):
            raise BundleError(f"bundle {self.version}: user tower self-check produced a bad vector")
        log.info(
            "recall self-check passed",
            extra={
                "version": self.version,
                "items": len(self.index),
                "provider": self.encoder.provider,
                "applied_sequence": self.index.applied_sequence,
            },
        )

    def info(self) -> RecallInfo:
        p = self.index.params
        return RecallInfo(
            self.version,
            self.dim,
            len(self.index),
            p.m,
            p.ef_construction,
            p.ef_search,
            self.encoder.provider,
            self.options.max_k,
            self.options.shard_index,
            self.options.shard_count,
            self.index.applied_sequence,
            tuple(sorted(self.index.metadata_fields)),
        )
