"""Recall/NDCG on hand-computed cases and the evaluation helpers."""

from __future__ import annotations

import math

import pytest

from recstack.text import UserTextSpec
from training.data import Dataset, Interaction, Item, Split
from training.evaluate import eval_cases, hit_rank, most_popular_lists, ndcg_at_k, recall_at_k


def test_hit_rank() -> None:
    assert hit_rank(["a", "b", "c"], "b", 10) == 1
    assert hit_rank(["a", "b", "c"], "c", 2) is None
    assert hit_rank([], "a", 10) is None


def test_recall_and_ndcg_hand_computed() -> None:
    ranked = [["x", "t1", "y"], ["t2", "x"], ["a", "b"], ["a", "b", "c", "t4"]]
    targets = ["t1", "t2", "t3", "t4"]
    # hits: rank 1, rank 0, miss, rank 3 (outside k=3)
    assert recall_at_k(ranked, targets, 3) == pytest.approx(2 / 4)
    assert recall_at_k(ranked, targets, 4) == pytest.approx(3 / 4)
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx((1 / math.log2(3) + 1.0) / 4)
    assert ndcg_at_k(ranked, targets, 4) == pytest.approx(
        (1 / math.log2(3) + 1.0 + 1 / math.log2(5)) / 4
    )


def test_metrics_edge_cases() -> None:
    assert recall_at_k([], [], 10) == 0.0
    assert ndcg_at_k([], [], 10) == 0.0
    with pytest.raises(ValueError):
        recall_at_k([["a"]], [], 10)
    with pytest.raises(ValueError):
        ndcg_at_k([["a"]], [], 10)


def _dataset() -> tuple[Dataset, Split]:
    items = [Item(i, f"T{i}", f"text {i}") for i in "abcdef"]
    seqs = {"u1": "abcd", "u2": "bcae", "u3": "f"}
    inters = {u: [Interaction(u, i, t) for t, i in enumerate(s)] for u, s in seqs.items()}
    ds = Dataset("t", items, inters, "0" * 64)
    split = Split(
        train={"u1": ["a", "b"], "u2": ["b", "c"], "u3": ["f"]},
        valid={"u1": "c", "u2": "a"},
        test={"u1": "d", "u2": "e"},
    )
    return ds, split


def test_eval_cases_use_train_and_valid_most_recent_first() -> None:
    ds, split = _dataset()
    cases = eval_cases(ds, split, UserTextSpec())
    assert [c.user_id for c in cases] == ["u1", "u2"]
    assert cases[0].text == "recently liked: Tc; Tb; Ta"
    assert cases[0].seen == {"a", "b", "c"}
    assert cases[0].target == "d"


def test_most_popular_excludes_seen_items() -> None:
    ds, split = _dataset()
    cases = eval_cases(ds, split, UserTextSpec())
    lists = most_popular_lists(split, cases, 3)
    # counts over train+valid: a2 b2 c2 f1; ties broken by id
    assert lists[0] == ["f"]
    assert lists[1] == ["f"]
