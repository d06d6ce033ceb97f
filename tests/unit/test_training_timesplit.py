"""Global time split: the cut, the future cases, the popularity baselines from the past."""

from __future__ import annotations

import numpy as np
import pytest

from training import timesplit as ts
from training.data import DataError, Dataset, Interaction, Item

DAY = ts.DAY_S


def _dataset(rows: list[tuple[str, str, int]]) -> Dataset:
    items = sorted({i for _, i, _ in rows})
    by_user: dict[str, list[Interaction]] = {}
    for u, i, t in sorted(rows, key=lambda r: (r[0], r[2])):
        by_user.setdefault(u, []).append(Interaction(u, i, t))
    return Dataset("toy", [Item(i, i, i) for i in items], by_user, "f")


ROWS = [
    # u1: active before and after the cut (day 10)
    ("u1", "a", 1 * DAY),
    ("u1", "b", 2 * DAY),
    ("u1", "b2", 11 * DAY),  # first new item after the cut
    ("u1", "c", 12 * DAY),
    # u2: only before
    ("u2", "a", 3 * DAY),
    ("u2", "c", 9 * DAY),
    # u3: only after: no history, not a case
    ("u3", "c", 13 * DAY),
    # u4: repeats a history item after the cut, then a new one
    ("u4", "c", 8 * DAY),
    ("u4", "c", 11 * DAY),
    ("u4", "a", 12 * DAY),
]


def test_cut_and_future_cases() -> None:
    ds = _dataset(ROWS)
    assert ts.cut_time(ds, 0.5) == 11 * DAY  # 10 stamps: the 6th, half are before it
    cut = 10 * DAY
    cases = ts.future_cases(ds, cut)
    assert [(c.user_id, c.history, c.target) for c in cases] == [
        ("u1", ["a", "b"], "b2"),
        ("u4", ["c"], "a"),  # the repeat of c is skipped: it is in the history
    ]
    assert cases[0].seen == {"a", "b"}
    assert ts.future_cases(ds, cut, until=11 * DAY) == []
    assert all(x.timestamp < cut for x in ts.past(ds, cut))
    with pytest.raises(ValueError, match="quantile"):
        ts.cut_time(ds, 1.0)
    with pytest.raises(DataError):
        ts.cut_time(_dataset([("u", "a", 1)]), 0.5)


def test_popularity_counts_users_once_and_recent_windows() -> None:
    ds = _dataset(ROWS)
    before = ts.past(ds, 10 * DAY)
    assert ts.popularity(before) == {"a": 2, "b": 1, "c": 2}
    assert ts.popularity(before, since=8 * DAY) == {"c": 2}
    order = ts._order(ts.popularity(before), [it.id for it in ds.items])
    cases = ts.future_cases(ds, 10 * DAY)
    lists = ts.popularity_lists(ts.popularity(before, since=8 * DAY), order, cases, 2)
    # recent first (c), then ties by all-time order; seen items never appear
    assert lists == [["c", "b2"], ["a", "b"]]


def test_recent_window_is_chosen_on_the_validation_cut() -> None:
    rows = [(f"w{n}", "old", DAY) for n in range(5)]  # popular long ago
    rows += [(f"v{n}", "new", 19 * DAY) for n in range(2)]  # popular just before the cut
    rows += [(f"v{n}", "h", DAY) for n in range(2, 5)]
    rows += [(f"v{n}", "new" if n >= 2 else "x", 21 * DAY) for n in range(5)]
    ds = _dataset(rows)
    best, curve = ts.choose_recent_window(ds, 20 * DAY, 30 * DAY, (3, 60))
    assert best == 3
    assert dict(curve)[3] > dict(curve)[60]


def test_recent_counts_only_count_the_window_strictly_before_now() -> None:
    from training.recency import RecentCounts

    ds = _dataset(ROWS)
    rec = RecentCounts(ds, windows_s=(DAY, 5 * DAY))
    rows = {it.id: n for n, it in enumerate(ds.items)}
    at = rec.at(11 * DAY)  # u1's b2 and u4's repeat of c are *at* 11d: not counted
    assert at[rows["c"]].tolist() == [0, 2]  # 9d (u2) and 8d (u4) fall in the 5-day window
    assert at[rows["b2"]].tolist() == [0, 0]
    assert rec.at(11 * DAY + 1)[rows["b2"]].tolist() == [1, 1]
    assert rec.latest == 13 * DAY
    # As of just after the newest interaction (13d): c at 13d in the last day; 9d, 11d,
    # 12d and 13d in the last five (8d is outside).
    assert rec.snapshot()[rows["c"]].tolist() == [1, 4]


def test_recent_top_orders_by_window_count_then_catalog_and_drops_unseen_items() -> None:
    from training.recency import RecentCounts

    ds = _dataset(ROWS)
    rec = RecentCounts(ds)
    rows = {it.id: n for n, it in enumerate(ds.items)}
    # In [6d, 13d): c at 8d, 9d, 11d, 12d; a at 12d; b2 at 11d (a before b2: catalog order).
    assert rec.top(13 * DAY, 7 * DAY, 5) == [rows["c"], rows["a"], rows["b2"]]
    assert rec.top(13 * DAY, 7 * DAY, 1) == [rows["c"]]
    assert rec.top(13 * DAY, 7 * DAY, 0) == []
    assert rec.top(DAY, DAY, 3) == []  # nothing strictly before 1d


def test_stream_cases_are_every_new_item_after_the_cut_with_everything_before_it() -> None:
    ds = _dataset(ROWS)
    cases = ts.stream_cases(ds, 10 * DAY)
    assert [(c.user_id, c.history, c.target, c.time, c.last_time) for c in cases] == [
        ("u1", ["a", "b"], "b2", 11 * DAY, 2 * DAY),
        # the event recorded after the cut is history for the next request
        ("u1", ["a", "b", "b2"], "c", 12 * DAY, 11 * DAY),
        # u3's only interaction has nothing before it; u4's repeat of c is not a request
        ("u4", ["c", "c"], "a", 12 * DAY, 11 * DAY),
    ]
    assert cases[1].seen == {"a", "b", "b2"}
    assert [c.target for c in ts.stream_cases(ds, 10 * DAY, until=12 * DAY)] == ["b2"]


def test_stream_metrics_weigh_users_equally() -> None:
    ds = _dataset(ROWS)
    cases = ts.stream_cases(ds, 10 * DAY)
    assert ts.user_means(np.asarray([1.0, 0.0, 0.5]), cases).tolist() == [0.5, 0.5]
    m, arrays = ts.over_users([["b2"], ["x"], ["a"]], cases)
    assert arrays["ndcg@10"].tolist() == [0.5, 1.0]
    assert m["ndcg@10"] == pytest.approx(0.75)
    assert m["ndcg@10_per_request"] == pytest.approx(2 / 3)
    lo, hi = m["ci95"]["ndcg@10"]
    assert 0.5 <= lo <= 0.75 <= hi <= 1.0


def test_live_popularity_counts_the_window_before_each_request() -> None:
    ds = _dataset(ROWS)
    cut = 10 * DAY
    cases = ts.stream_cases(ds, cut)
    order = ts._order(ts.popularity(ts.past(ds, cut)), [it.id for it in ds.items])
    assert order == ["a", "c", "b", "b2"]
    lists = ts.live_popularity_lists(ds, 2, order, cases, 2)
    # at 11d nothing in [9d, 11d) but u2's c at 9d; at 12d b2 and c (both at 11d) count,
    # ties by the all-time order; seen items never appear
    assert lists == [["c", "b2"], ["c"], ["b2", "a"]]
    frozen = ts.popularity_lists(
        ts.popularity(ts.past(ds, cut), since=cut - 2 * DAY), order, cases, 2
    )
    assert frozen[2] == ["a", "b"]  # counts frozen at the cut know nothing of 11d
