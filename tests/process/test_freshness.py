"""The freshness measurement (bench/freshness.py) at small scale: a stale bundle served as
processes, new items upserted and interactions replayed through the gRPC API, the learning
loop run on the services' own stores, the services swapped to its bundle, both bundles
compared on the events that follow."""

from __future__ import annotations

import json

import pytest

from bench.freshness import run
from recstack.core.bundle import Bundle
from training.data import Interaction, Item, load_dataset, write_dataset, write_synthetic_dataset

pytestmark = pytest.mark.process

ROUND_S = 3600
LATE = 20  # rounds >= LATE are live: 20 and 21 replayed, 22 follows


def timed_dataset(tmp_path):
    """The synthetic topics, users interacting in interleaved rounds (one item per user per
    hour), and two new items per topic that exist only in the live rounds, where every user
    has moved on to another topic."""
    base = load_dataset(write_synthetic_dataset(tmp_path / "synthetic"))
    topics = sorted({it.metadata["topic"] for it in base.items})
    new = {
        t: [
            Item(f"new-{t}-{n}", f"New {t} {n}", f"Brand new {t} story number {n}.", {"topic": t})
            for n in range(2)
        ]
        for t in topics
    }
    topic = {it.id: it.metadata["topic"] for it in base.items}
    inters = []
    for u, user in enumerate(sorted(base.user_interactions)):
        seq = base.user_interactions[user]
        inters += [Interaction(user, x.item_id, k * ROUND_S + u) for k, x in enumerate(seq)]
        # Taste drifts live: each user moves to the next topic, which the stale bundle cannot
        # know and the loop's candidate learns (so the gate publishes).
        home = topics[(topics.index(topic[seq[-1].item_id]) + 1) % len(topics)]
        same = [i for i in topic if topic[i] == home and i not in {x.item_id for x in seq}]
        late = [new[home][0].id, same[0], new[home][1].id]
        inters += [Interaction(user, i, (LATE + k) * ROUND_S + u) for k, i in enumerate(late)]
    items = [*base.items, *(it for t in topics for it in new[t])]
    return write_dataset(tmp_path / "timed", items, inters), len(topics) * 2


def test_freshness_measurement_runs_the_loop_through_the_services(tmp_path):
    data, n_new = timed_dataset(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    # Gate off: whether a tiny candidate beats the stale bundle on a few dozen users is not
    # behaviour to assert (tests/integration/test_learning_loop.py covers the gate and refit).
    report = run(
        data, work, profile="tiny", progress=False, gate=False,
        cuts=(LATE * ROUND_S, (LATE + 2) * ROUND_S),
    )  # fmt: skip
    assert report["sizes"]["new_items"] == n_new
    assert report["replayed"] == {"upserted": n_new, "catalog_sequence": n_new, "events": 80}
    assert report["gate"]["publish"] is True and "--no-gate" in report["gate"]["reason"]
    # The services hot-swapped to what the loop published, and drained cleanly.
    assert report["gateway_answered_in_after_publish"] == "retrained"
    assert set(report["exit_codes"].values()) == {0}
    fresh = Bundle.open(work / "bundles" / "retrained")
    assert sum(it.id.startswith("new-") for it in fresh.iter_catalog()) == n_new
    res = report["results"]
    assert res["users"] == 40 and res["new_item_targets"] == 40
    for name in ("stale", "retrained"):
        assert 0.0 <= res[name]["ndcg@10"] <= 1.0
        lo, hi = res[name]["ndcg@10_ci95"]
        assert lo <= res[name]["ndcg@10"] <= hi
        assert 0 <= res[name]["users_with_a_new_item_in_top10"] <= res["users"]
        assert 0 <= res[name]["new_items_in_some_top10"] <= n_new
    diff = res["retrained_minus_stale"]
    assert diff["mean"] == pytest.approx(res["retrained"]["ndcg@10"] - res["stale"]["ndcg@10"])
    json.dumps(report)  # the bench writes it as JSON
