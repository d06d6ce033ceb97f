"""Recent-popularity candidates: the one join rule (recstack.core.features.join_recent) as the
recall core, the shard merge and the evaluation apply it."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.core.domain import RecallResult
from recstack.core.features import join_recent
from training import evaluate as ev


def test_join_keeps_every_recent_row_and_fills_with_the_best_others_in_score_order() -> None:
    scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.1, 0.2], np.float32)
    recent = np.asarray([False, True, False, False, True, True])
    keep = join_recent(scores, recent, 4)
    # recent rows 1, 5, 4 are kept; one place left: the best other (row 0)
    assert keep.tolist() == [0, 1, 5, 4]
    # more recent rows than places: the best of them
    assert join_recent(scores, recent, 2).tolist() == [1, 5]
    # no flags: the plain top-k (ties keep input order)
    tied = np.asarray([0.5, 0.7, 0.5], np.float32)
    assert join_recent(tied, np.zeros(3, bool), 2).tolist() == [1, 0]
    assert join_recent(scores, recent, 0).tolist() == []
    with pytest.raises(ValueError, match="length"):
        join_recent(scores, recent[:2], 2)


def _part(ids: list[str], scores: list[float], recent: list[bool]) -> RecallResult:
    n = len(ids)
    return RecallResult(
        ids,
        np.asarray(scores, np.float32),
        None,
        np.zeros((n, 3), np.float32),
        [""] * n,
        [False] * n,
        [False] * n,
        np.ones(4, np.float32) / 2,
        "v1",
        recent=recent,
    )


def test_shard_merge_keeps_each_shards_recent_items() -> None:
    a = _part(["a1", "a2", "r1"], [0.9, 0.8, 0.1], [False, False, True])
    b = _part(["b1", "r2"], [0.85, 0.2], [False, True])
    merged = RecallResult.concat([a, b], 3)
    assert list(merged.ids) == ["a1", "r2", "r1"]
    assert list(merged.recent) == [False, True, True]
    plain = RecallResult.concat([_part(["a1", "a2"], [0.9, 0.8], []), _part(["b1"], [0.85], [])], 2)
    assert list(plain.ids) == ["a1", "b1"] and list(plain.recent) == []


def test_evaluation_join_excludes_seen_items_and_scores_by_the_user_vector() -> None:
    vecs = np.eye(4, dtype=np.float32)
    pos = {f"i{n}": n for n in range(4)}
    user = np.asarray([[0.8, 0.5, 0.3, 0.1]], np.float32)
    case = ev.EvalCase("u", ["i2"], {"i2"}, "i3")
    recalled = [(["i0", "i1"], [0.8, 0.5])]
    # i2 is seen (never joined), i3 joins with score 0.1 and keeps its place; i1 is
    # recent and already recalled: one entry.
    got = ev.with_recent(recalled, user, [case], [["i2", "i3", "i1"]], vecs, pos, 2)
    assert got[0][0] == ["i1", "i3"]
    assert got[0][1] == pytest.approx([0.5, 0.1])
    ((ids, scores),) = ev.with_recent(recalled, user, [case], [[]], vecs, pos, 2)
    assert ids == ["i0", "i1"] and scores == pytest.approx([0.8, 0.5])
