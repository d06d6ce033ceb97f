"""The build's query-only choices and report cover both protocols (taste and search)."""

from __future__ import annotations

import json
from pathlib import Path

from recstack.core.bundle import Bundle
from recstack.core.features import QUERY_RECENT_WEIGHTS
from training.evaluate import pick_query_weight
from training.pipeline import QUERY_PRIOR_WEIGHTS


def test_the_build_chooses_query_weights_on_both_protocols(bundle_dir: Path) -> None:
    report = json.loads((bundle_dir / "report" / "report.json").read_text())
    training = report["training"]
    prior = training["query_prior_valid_recall@20"]
    assert [p["weight"] for p in prior] == list(QUERY_PRIOR_WEIGHTS)
    for p in prior:
        assert 0 <= p["taste"] <= 1 and 0 <= p["search"] <= 1
        assert abs(p["mean"] - (p["taste"] + p["search"]) / 2) < 1e-9
    assert training["query_prior_weight"] == pick_query_weight(prior)
    manifest = Bundle.open(bundle_dir).manifest
    assert manifest["user"]["query_prior_weight"] == training["query_prior_weight"]
    fusion = training["query_recent_valid_recall@20"]
    assert [p["weight"] for p in fusion] == list(QUERY_RECENT_WEIGHTS)
    # Chosen with the taste lists held above the popularity floor by one standard error.
    assert all(p["taste_margin"] <= p["taste"] - p["taste_floor"] + 1e-9 for p in fusion)
    assert training["query_recent_weight"] == pick_query_weight(fusion, constrained=True)


def test_the_report_measures_taste_and_search_users(bundle_dir: Path) -> None:
    cold = json.loads((bundle_dir / "report" / "report.json").read_text())["cold_start"]
    for key in ("query_users", "search_users"):
        q = cold[key]
        assert q["users"] > 0 and q["distinct_queries"] >= 1
        for name in ("model", "ranker_only", "most_popular", "genre_popular"):
            lo, hi = q[name]["ci95"]["recall@20"]
            assert lo <= q[name]["recall@20"] <= hi
        assert q["model_vs_genre_popular"]["recall@20"]["verdict"] in (
            "better",
            "worse",
            "no difference",
        )
        assert 0 <= q["top10_differs_from_commonest"] <= 1
    # The synthetic users' search queries name their item's topic: the served lists follow
    # the text, so they are far from one list for everyone and beat most popular.
    search = cold["search_users"]
    assert search["top10_differs_from_commonest"] > 0.3
    assert search["model"]["recall@20"] > search["most_popular"]["recall@20"]
