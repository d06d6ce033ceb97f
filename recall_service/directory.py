"""Vectors of every catalog item, all shards included, for building user histories.

The user tower reads the vectors of a user's history items, and a history may name items
of any shard. On an unsharded replica the index holds every item, so the directory is the
index. A shard's index holds only its own items; the directory adds the other shards'
items: their bundle vectors, overridden by the catalog log's upserts and deletes (every
replica reads the whole log). All vectors are in this replica's bundle's embedding space
(the core re-encodes logged vectors of another version before they get here).

Concurrency: ``apply_foreign`` runs only under the core's ``_apply_lock`` (one writer);
readers call ``get`` under the index's read lock. ``_foreign`` is a dict whose single-key
reads and writes are atomic under the GIL, and an id's entry is replaced whole (never
mutated in place), so a reader sees either the old or the new vector of an item.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from recall_service.catalog_log import DELETE, LogWrite
from recall_service.index import ItemIndex
from recstack.core.bundle import Bundle
from recstack.core.sharding import shard_of
from recstack.core.vectors import F32Array


class VectorDirectory:
    """``get(item_id)`` -> the item's vector in this bundle's space, or None if unknown."""

    def __init__(self, bundle: Bundle, index: ItemIndex, shard_index: int, shard_count: int):
        self._index = index
        self._shard_index = shard_index
        self._shard_count = shard_count
        self._rows: dict[str, int] = {}
        self._bundle_vectors: F32Array = np.zeros((0, bundle.dim), np.float32)
        self._foreign: dict[str, F32Array | None] = {}  # None: deleted
        if shard_count > 1:
            self._bundle_vectors = bundle.load_vectors()
            self._rows = {
                it.id: row for row, it in enumerate(bundle.iter_catalog()) if not self.mine(it.id)
            }

    def mine(self, item_id: str) -> bool:
        return self._shard_count == 1 or shard_of(item_id, self._shard_count) == self._shard_index

    def get(self, item_id: str) -> F32Array | None:
        """Call under the index's read lock."""
        if self.mine(item_id):
            return self._index.vector_of(item_id)
        if item_id in self._foreign:
            return self._foreign[item_id]
        row = self._rows.get(item_id)
        return None if row is None else self._bundle_vectors[row]

    def apply_foreign(self, writes: Iterable[LogWrite]) -> None:
        """Other shards' writes (in log order, vectors already in this space)."""
        for w in writes:
            if not self.mine(w.item_id):
                self._foreign[w.item_id] = None if w.op == DELETE else w.vector
