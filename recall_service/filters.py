"""Metadata filters for recall: compiled once per request into a predicate on metadata.

Semantics (documented in recall.proto): ``any_of`` matches a scalar equal to one of the
values, or a list containing one of them, compared as text; ``min``/``max`` bound a numeric
field inclusively; an item lacking the field never matches; all filters must hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

from recstack.core.domain import MetadataFilter
from recstack.core.errors import InvalidArgument

Predicate = Callable[[dict[str, Any]], bool]


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _one(f: MetadataFilter) -> Predicate:
    accepted = frozenset(f.any_of)
    lo = -math.inf if f.min is None else f.min
    hi = math.inf if f.max is None else f.max

    def test(metadata: dict[str, Any]) -> bool:
        if f.field not in metadata:
            return False
        value = metadata[f.field]
        if accepted:
            values = value if isinstance(value, list) else [value]
            if not any(_text(v) in accepted for v in values):
                return False
        if f.min is not None or f.max is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            # Compared as is: float() of a huge JSON int would raise OverflowError.
            return bool(lo <= value <= hi)
        return True

    return test


def compile_filters(
    filters: Sequence[MetadataFilter], known_fields: Collection[str]
) -> Predicate | None:
    """A predicate that is true when every filter holds (None when there are no filters)."""
    for i, f in enumerate(filters):
        where = f"filters[{i}]"
        if f.field not in known_fields:
            raise InvalidArgument(
                f"unknown metadata field {f.field!r}; known: {sorted(known_fields)[:20]}",
                field=f"{where}.field",
            )
        if not f.any_of and f.min is None and f.max is None:
            raise InvalidArgument("needs any_of or min/max", field=where)
        for name, bound in (("min", f.min), ("max", f.max)):
            if bound is not None and not math.isfinite(bound):
                raise InvalidArgument("must be finite", field=f"{where}.{name}")
        if f.min is not None and f.max is not None and f.min > f.max:
            raise InvalidArgument(f"min {f.min} > max {f.max}", field=where)
    if not filters:
        return None
    tests = [_one(f) for f in filters]
    return lambda metadata: all(t(metadata) for t in tests)
