"""User texts for the optional transformer fine-tuning stage (training only).

``Profile.steps > 0`` first fine-tunes MiniLM with in-batch InfoNCE between a text built
from the titles of a user's recent items and the next item's text
(:mod:`training.two_tower`). Serving never builds user texts: the user vector comes from
the user tower over item vectors (:mod:`recstack.user_tower`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class UserTextSpec:
    """Template of a fine-tuning user text."""

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
