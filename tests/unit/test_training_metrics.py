"""Recall/NDCG on hand-computed cases and the evaluation helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import Dataset, Interaction, Item, Split
from training.evaluate import (
    METRIC_NAMES,
    EvalCase,
    all_metrics,
    bootstrap_ci,
    eval_cases,
    exact_lists,
    genre_popular_lists,
    group_bootstrap_ratio,
    hit_rank,
    most_popular_lists,
    mrr_at_k,
    ndcg_at_k,
    paired_difference,
    per_user,
    pick_query_weight,
    query_cases,
    recall_at_k,
    search_genre,
    top_k_from_scores,
)


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


def test_eval_cases_use_train_and_valid_oldest_first() -> None:
    ds, split = _dataset()
    cases = eval_cases(ds, split)
    assert [c.user_id for c in cases] == ["u1", "u2"]
    assert cases[0].history == ["a", "b", "c"]
    assert cases[0].seen == {"a", "b", "c"}
    assert cases[0].target == "d"


def test_most_popular_excludes_seen_items() -> None:
    ds, split = _dataset()
    cases = eval_cases(ds, split)
    lists = most_popular_lists(split, cases, 3)
    # counts over train+valid: a2 b2 c2 f1; ties broken by id
    assert lists[0] == ["f"]
    assert lists[1] == ["f"]


def test_mrr_hit_and_all_metrics_hand_computed() -> None:
    ranked = [["x", "t1", "y"], ["t2", "x"], ["a", "b"]]
    targets: list[str | None] = ["t1", "t2", "t3"]
    assert mrr_at_k(ranked, targets, 10) == pytest.approx((1 / 2 + 1) / 3)
    assert mrr_at_k(ranked, targets, 1) == pytest.approx(1 / 3)
    m = all_metrics(ranked, targets)
    assert set(m) == set(METRIC_NAMES)
    assert m["hit@10"] == m["recall@10"] == pytest.approx(2 / 3)
    assert m["ndcg@20"] == pytest.approx((1 / math.log2(3) + 1) / 3)


def test_users_without_a_test_item_are_not_counted() -> None:
    ranked = [["t1"], ["a"], ["b"]]
    targets: list[str | None] = ["t1", None, None]
    assert recall_at_k(ranked, targets, 10) == 1.0
    assert ndcg_at_k(ranked, targets, 10) == 1.0
    assert mrr_at_k(ranked, targets, 10) == 1.0
    assert recall_at_k([["a"]], [None], 10) == 0.0  # nobody to evaluate


def test_ties_are_broken_by_catalog_order() -> None:
    ids = ["a", "b", "c", "d"]
    scores = np.array([0.5, 0.9, 0.9, 0.5], dtype=np.float32)
    assert top_k_from_scores(scores, ids, set(), 4) == ["b", "c", "a", "d"]
    assert top_k_from_scores(scores, ids, {"b"}, 2) == ["c", "a"]
    # Target "c" tied with "b" at the top: it is ranked second, NDCG@10 = 1/log2(3).
    lst = top_k_from_scores(scores, ids, set(), 10)
    assert ndcg_at_k([lst], ["c"], 10) == pytest.approx(1 / math.log2(3))


def test_validation_phase_uses_train_only() -> None:
    ds, split = _dataset()
    cases = eval_cases(ds, split, phase="valid")
    assert [c.user_id for c in cases] == ["u1", "u2"]
    assert cases[0].history == ["a", "b"]
    assert cases[0].seen == {"a", "b"}
    assert cases[0].target == "c"
    with pytest.raises(ValueError):
        eval_cases(ds, split, phase="train")


def test_exact_lists_exclude_history() -> None:
    ds, split = _dataset()
    cases = eval_cases(ds, split)
    items = np.eye(6, dtype=np.float32)
    users = np.stack([items[0] + 0.5 * items[3], items[4]])  # u1 likes a (seen), then d
    lists = exact_lists(users, items, cases, [it.id for it in ds.items], 2)
    assert lists[0][0] == "d" and "a" not in lists[0]
    assert lists[1][0] == "e"


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_users() -> None:
    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(10_000) < 0.3).astype(float)
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_ci(large)
    assert lo2 < large.mean() < hi2
    assert hi2 - lo2 < (hi - lo) / 3  # ~1/sqrt(100) narrower
    assert bootstrap_ci(np.zeros(0)) == [0.0, 0.0]


def test_paired_difference_verdicts() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    assert paired_difference(base + 0.05, base)["verdict"] == "better"
    assert paired_difference(base - 0.05, base)["verdict"] == "worse"
    noisy = base + rng.normal(0, 0.5, size=2000) * 0.01
    same = paired_difference(noisy, base + 0.0001 * rng.standard_normal(2000))
    assert same["ci95"][0] <= same["mean"] <= same["ci95"][1]
    d = paired_difference(np.array([1.0, 0.0]), np.array([0.0, 0.0]))
    assert d["mean"] == 0.5


def test_per_user_values_average_to_the_metric() -> None:
    ranked = [["x", "t1", "y"], ["t2", "x"], ["a", "b"]]
    targets: list[str | None] = ["t1", "t2", "t3"]
    assert per_user(ranked, targets, 10, "ndcg").mean() == pytest.approx(
        ndcg_at_k(ranked, targets, 10)
    )
    assert per_user(ranked, targets, 20, "recall").tolist() == [1.0, 1.0, 0.0]


def test_group_bootstrap_resamples_whole_groups() -> None:
    rng = np.random.default_rng(1)
    # 40 items with 5 events each; an item's events all hit or all miss.
    groups = [f"i{g}" for g in range(40) for _ in range(5)]
    hits = np.repeat(rng.random(40) < 0.3, 5).astype(np.float64)
    ones = np.ones(len(hits))
    lo, hi = group_bootstrap_ratio(hits, ones, groups)
    assert lo <= hits.mean() <= hi
    # Events of one item are not independent: the interval over items is wider than the
    # one that treats the 200 events as independent draws.
    e_lo, e_hi = bootstrap_ci(hits)
    assert hi - lo > 1.5 * (e_hi - e_lo)
    # A ratio: sum(num) / sum(den) for the point estimate lies inside.
    den = np.full(len(hits), 0.01)
    r_lo, r_hi = group_bootstrap_ratio(hits, den, groups)
    assert r_lo <= hits.sum() / den.sum() <= r_hi
    # One group: nothing to resample, the interval is the point.
    assert group_bootstrap_ratio(hits[:5], ones[:5], groups[:5]) == [hits[0], hits[0]]
    assert group_bootstrap_ratio(np.zeros(0), np.zeros(0), []) == [0.0, 0.0]


def _genre_dataset() -> tuple[Dataset, Split]:
    ds, split = _dataset()
    genres = {"a": ["Drama"], "b": ["Drama"], "c": ["Comedy", "Drama"], "d": ["Horror"]}
    ds.items = [
        Item(it.id, it.title, it.text, {"genres": genres.get(it.id, [])}) for it in ds.items
    ]
    return ds, split


def test_query_protocols_taste_and_search() -> None:
    ds, split = _genre_dataset()
    taste = query_cases(ds, split, "test", "taste")
    search = query_cases(ds, split, "test", "search")
    # Taste: the genre most watched in train (u1: a, b -> Drama; u2: b, c -> Drama);
    # search: one of the test item's own genres (u1's d is Horror; u2's e has none).
    assert [(c.user_id, c.query) for c in taste] == [("u1", "Drama"), ("u2", "Drama")]
    assert [(c.user_id, c.query, c.target) for c in search] == [("u1", "Horror", "d")]
    assert all(not c.history and not c.seen for c in taste + search)
    # Validation: u1's item c has two genres; the draw is seeded, so every run agrees.
    (u1,) = [c for c in query_cases(ds, split, "valid", "search") if c.user_id == "u1"]
    assert u1.query in ("Comedy", "Drama")
    assert search_genre(ds, "u1", "c") == u1.query == search_genre(ds, "u1", "c")
    assert search_genre(ds, "u1", "e") is None
    with pytest.raises(ValueError, match="kind"):
        query_cases(ds, split, "test", "browse")


def test_genre_popular_lists_keep_the_query_genre_by_popularity() -> None:
    ds, split = _genre_dataset()
    cases = [
        EvalCase("u", [], set(), "d", query="Drama"),
        EvalCase("v", [], set(), "d", query="Comedy"),
        EvalCase("w", [], set(), "d", query="Western"),
    ]
    # Counts over train + valid: a 2, b 2, c 2 (ties by id), f 1.
    assert genre_popular_lists(ds, split, cases, "test", k=2) == [["a", "b"], ["c"], []]


def test_pick_query_weight_best_mean_above_the_taste_floor() -> None:
    curve = [
        {"weight": 0.0, "taste": 0.05, "search": 0.30, "mean": 0.175, "taste_margin": -0.01},
        {"weight": 1.0, "taste": 0.08, "search": 0.20, "mean": 0.14, "taste_margin": 0.0},
        {"weight": 2.0, "taste": 0.09, "search": 0.19, "mean": 0.14, "taste_margin": 0.01},
        {"weight": 4.0, "taste": 0.10, "search": 0.10, "mean": 0.10, "taste_margin": 0.02},
    ]
    assert pick_query_weight(curve) == 0.0
    assert pick_query_weight(curve, constrained=True) == 1.0  # tie on the mean: smaller
    below = [{**p, "taste_margin": p["taste_margin"] - 0.015} for p in curve]
    assert pick_query_weight(below, constrained=True) == 4.0
    none = [{**p, "taste_margin": -1.0} for p in curve]
    assert pick_query_weight(none, constrained=True) == 4.0  # none clears it: best taste


def test_floor_margin_is_the_paired_mean_less_one_standard_error() -> None:
    from training.evaluate import floor_margin

    model = np.array([1.0, 0.0, 1.0, 1.0])
    floor = np.array([0.0, 0.0, 1.0, 0.0])
    d = model - floor  # 1, 0, 0, 1: mean 0.5, sd 0.577, se 0.289
    assert floor_margin(model, floor) == pytest.approx(0.5 - d.std(ddof=1) / 2)
    assert floor_margin(floor, floor) == 0.0  # equal lists: exactly at the floor
    assert floor_margin(np.array([1.0]), np.array([0.0])) == 1.0
