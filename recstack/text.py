"""How items and users become text for the encoder: one definition for training and serving.

The item tower encodes an item's text; the user tower encodes a text built from the titles
of the user's most recent items and/or a free-text query. Training and the recall service
both call :meth:`UserTextSpec.build`, so the served user vector lives in the space the
encoder was fine-tuned for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class UserTextSpec:
    """Template of the user text; stored in the bundle manifest under ``user_text``."""

    max_history: int = 10
    history_prefix: str = "recently liked: "
    query_prefix: str = "looking for: "
    separator: str = "; "

    def build(self, history_titles: Sequence[str], query: str = "") -> str:
        """User text from titles (most recent first) and an optional query."""
        parts = []
        query = query.strip()
        if query:
            parts.append(self.query_prefix + query)
        titles = [t for t in history_titles[: self.max_history] if t]
        if titles:
            parts.append(self.history_prefix + self.separator.join(titles))
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UserTextSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
