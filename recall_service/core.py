"""Recall core: HNSW nearest neighbours over the bundle's item vectors (no grpc here).

A query is a user text (built from history item titles and/or a free-text query with the
bundle's ``user_text`` template, then encoded by the bundle's ONNX encoder) or an explicit
vector. Scores are inner products of unit vectors (cosine similarity).

Concurrency: the index is read-only in this version, and hnswlib's ``knn_query`` is safe
to call from many threads at once when nothing inserts (it releases the GIL). Live writes
must go through a one-writer/many-readers wrapper (ARCHITECTURE invariant 4).
"""

from __future__ import annotations

import logging
import threading

import hnswlib
import numpy as np

from recstack import metrics
from recstack.bundle import Bundle, CatalogItem
from recstack.config import RecallOptions
from recstack.deadline import Deadline
from recstack.domain import RecallCandidate, RecallInfo, RecallQuery, RecallResult
from recstack.encoder import TextEncoder
from recstack.errors import BundleError, InvalidArgument, ResourceExhausted
from recstack.ort import SessionOptions
from recstack.vectors import F32Array, l2_normalize

log = logging.getLogger(__name__)

QUERY_FIELDS = "query_text|history_item_ids|query_vector"


class RecallCore:
    """Serves one bundle version: encoder + HNSW index + catalog."""

    def __init__(self, bundle: Bundle, options: RecallOptions, ort: SessionOptions) -> None:
        self.bundle = bundle
        self.options = options
        self.version = bundle.version
        self.dim = bundle.dim
        self.items: list[CatalogItem] = list(bundle.iter_catalog())
        self.label_of: dict[str, int] = {}
        for label, item in enumerate(self.items):
            if item.id in self.label_of:
                raise BundleError(f"bundle {self.version}: duplicate item id {item.id!r}")
            self.label_of[item.id] = label
        self.vectors = bundle.load_vectors()
        if len(self.vectors) != len(self.items):
            raise BundleError(
                f"bundle {self.version}: {len(self.items)} catalog items but "
                f"{len(self.vectors)} vectors"
            )
        spec = bundle.section("index")
        self.hnsw_m = int(spec["M"])
        self.ef_construction = int(spec["ef_construction"])
        self.ef_search = options.ef_search or int(spec["ef_search"])
        self.index = hnswlib.Index(space=spec["space"], dim=self.dim)
        self.index.load_index(str(bundle.path(spec["path"])), max_elements=len(self.items))
        if self.index.get_current_count() != len(self.items):
            raise BundleError(
                f"bundle {self.version}: index holds "
                f"{self.index.get_current_count()} items, catalog {len(self.items)}"
            )
        self.index.set_ef(self.ef_search)
        self.encoder = TextEncoder(bundle, ort)
        # The encoder's ORT session is thread-safe for run(); the tokenizer object is not
        # documented as such, so tokenisation+run is serialised per core.
        self._encode_lock = threading.Lock()

    # -- queries -------------------------------------------------------------------------

    def validate(self, q: RecallQuery) -> None:
        """Reject malformed queries with the offending field named."""
        o = self.options
        if q.k <= 0:
            raise InvalidArgument(f"must be positive, got {q.k}", field="k")
        if q.k > o.max_k:
            raise ResourceExhausted(f"{q.k} exceeds the limit of {o.max_k}", field="k")
        has_text = bool(q.query_text.strip()) or bool(q.history_item_ids)
        if q.query_vector is None and not has_text:
            raise InvalidArgument(
                "a query needs text, history item ids or a vector", field=QUERY_FIELDS
            )
        if q.query_vector is not None and has_text:
            raise InvalidArgument(
                "give either a vector or text/history, not both", field="query_vector"
            )
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
        unknown = [i for i in q.history_item_ids if i not in self.label_of]
        if unknown:
            raise InvalidArgument(
                f"unknown item ids {unknown[:5]}"
                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""),
                field="history_item_ids",
            )

    def user_text(self, history_item_ids: tuple[str, ...], query_text: str) -> str:
        """The text the user tower encodes (same template as training)."""
        titles = [self.items[self.label_of[i]].display_title for i in history_item_ids]
        return self.bundle.user_text.build(titles, query_text)

    def encode(self, texts: list[str]) -> F32Array:
        with self._encode_lock:
            return self.encoder.encode(texts)

    def recall(self, q: RecallQuery, deadline: Deadline) -> RecallResult:
        """Top-k items by inner product with the query vector, excluding ``exclude_ids``."""
        self.validate(q)
        deadline.check("encoding")
        if q.query_vector is not None:
            if q.query_vector.shape != (self.dim,):
                raise InvalidArgument(
                    f"expected {self.dim} dims, got {q.query_vector.shape}", field="query_vector"
                )
            if float(np.linalg.norm(q.query_vector)) == 0.0:
                raise InvalidArgument("must not be the zero vector", field="query_vector")
            query = l2_normalize(q.query_vector)
        else:
            query = self.encode([self.user_text(q.history_item_ids, q.query_text)])[0]
        deadline.check("search")
        return RecallResult(
            self.search(query, q.k, q.exclude_ids, q.omit_vectors), query, self.version
        )

    def search(
        self, query: F32Array, k: int, exclude_ids: tuple[str, ...] = (), omit_vectors: bool = False
    ) -> list[RecallCandidate]:
        """k nearest items not in ``exclude_ids`` (fewer only if the catalog runs out)."""
        excluded = {self.label_of[i] for i in exclude_ids if i in self.label_of}
        total = len(self.items)
        # Over-fetch by the number of excluded labels: even if all of them rank in the top,
        # k others remain (hnswlib searches with max(ef, fetch) candidates).
        fetch = min(k + len(excluded), total)
        if fetch == 0:
            return []
        labels, distances = self.index.knn_query(query[None, :], k=fetch, num_threads=1)
        out: list[RecallCandidate] = []
        for label, dist in zip(labels[0], distances[0], strict=True):
            if int(label) in excluded:
                continue
            item = self.items[int(label)]
            out.append(
                RecallCandidate(
                    id=item.id,
                    score=float(1.0 - dist),
                    vector=None if omit_vectors else self.vectors[int(label)],
                    title=item.title,
                    text=item.text,
                )
            )
            if len(out) == k:
                break
        return out

    def self_check(self) -> None:
        """Probe query: each of a few items' own vectors must recall that item first."""
        probes = sorted({0, len(self.items) // 2, len(self.items) - 1})
        for label in probes:
            got = self.search(self.vectors[label], 1, omit_vectors=True)
            if not got or got[0].id != self.items[label].id:
                raise BundleError(
                    f"bundle {self.version}: self-check failed: item "
                    f"{self.items[label].id!r} does not recall itself"
                )
        vec = self.encode([self.items[probes[0]].text])[0]
        if not np.isfinite(vec).all() or abs(float(np.linalg.norm(vec)) - 1.0) > 1e-3:
            raise BundleError(f"bundle {self.version}: encoder self-check produced a bad vector")
        log.info(
            "recall self-check passed",
            extra={
                "version": self.version,
                "items": len(self.items),
                "provider": self.encoder.provider,
            },
        )

    def info(self) -> RecallInfo:
        return RecallInfo(
            self.version,
            self.dim,
            len(self.items),
            self.hnsw_m,
            self.ef_construction,
            self.ef_search,
            self.encoder.provider,
            self.options.max_k,
        )


def load_core(options: RecallOptions, ort: SessionOptions) -> RecallCore:
    """Open and verify the bundle, build the core, self-check it."""
    core = RecallCore(Bundle.open(options.bundle), options, ort)
    core.self_check()
    metrics.BUNDLE_INFO.labels("recall", core.version, core.encoder.provider).set(1)
    metrics.INDEX_ITEMS.set(len(core.items))
    return core
