"""Which recall shard owns an item: a stable hash of the id, modulo the shard count.

Python's ``hash()`` is salted per process, so a keyed BLAKE2b digest is used instead: every
process, language and restart agrees on the owner of an id.
"""

from __future__ import annotations

import hashlib


def shard_of(item_id: str, shard_count: int) -> int:
    """Shard index in ``[0, shard_count)`` owning ``item_id``."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be >= 1, got {shard_count}")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count
