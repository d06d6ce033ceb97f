"""The time split's stream protocol over a real bundle: every request after the cut, served
with the history recorded by then, against popularity baselines (training.timesplit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import timesplit as ts
from training.data import load_dataset, write_synthetic_dataset


def test_stream_evaluation_of_a_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    # The session's tiny bundle was built from this same synthetic dataset (seed 0).
    ds = load_dataset(write_synthetic_dataset(tmp_path / "data"))
    valid_cut, cut = ts.cut_time(ds, 0.5), ts.cut_time(ds, 0.75)
    windows = ts.choose_stream_windows(ds, valid_cut, cut, (1, 30))
    assert {k: v["days"] in (1, 30) for k, v in windows.items()} == {
        "frozen": True,
        "live": True,
    }
    served = ts.PastBundle.open(bundle_dir, ds)
    res = ts.evaluate_bundle_on_stream(served, ds, cut, windows)

    cases = ts.stream_cases(ds, cut)
    assert res["requests"] == len(cases) > 0
    assert res["users"] == len({c.user_id for c in cases})
    assert sum(g["users"] for g in res["by_users"].values()) == res["users"]
    fresh = res["new_items"]
    for name in ("ranked", "popularity_all_time"):
        assert 0 <= fresh[name]["hits@20"] <= fresh["target_requests"] <= res["requests"]
    runs = (
        "ranked",
        "ranked_live_recency",
        "hnsw",
        "popularity_all_time",
        "popularity_recent_frozen",
        "popularity_recent_live",
    )
    for name in runs:
        m = res[name]
        for metric in ("ndcg@10", "recall@20"):
            lo, hi = m["ci95"][metric]
            assert 0.0 <= lo <= m[metric] <= hi <= 1.0
    # Users are loyal to one topic: the served path knows it, popularity does not.
    assert res["ranked"]["recall@20"] > res["popularity_all_time"]["recall@20"]
    d = res["paired"]["ranked_vs_popularity_all_time"]["ndcg@10"]
    assert d["mean"] == pytest.approx(
        res["ranked"]["ndcg@10"] - res["popularity_all_time"]["ndcg@10"]
    )
    assert np.isfinite(d["ci95"]).all()

    first = ts.evaluate_bundle_on_future(
        bundle_dir, ds, cut, windows["frozen"]["days"], past_bundle=served
    )
    png = ts.write_plot(tmp_path / "timesplit.png", {"results": first, "stream": res})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
