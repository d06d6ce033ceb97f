"""The learning loop: export from the live stores (SQLite and a real PostgreSQL), the
deletion rule, the gate's decision, and one whole run (export → candidate → gate → refit →
publish) on the tiny profile."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.events import Event, EventStore
from recall_service.catalog_log import DELETE, UPSERT, LogWrite, open_log
from recstack.core.bundle import CURRENT, PREVIOUS, Bundle, copy_bundle, point_current
from training.cli import main as cli_main
from training.data import load_dataset, write_synthetic_dataset
from training.live import export_live
from training.loop import decide

# Recorded events happen long after the synthetic base data (t0 = 1.7e9 s).
LIVE_T0_MS = 1_800_000_000_000
NEW_ITEM_TEXT = "Deep space freighter adventure. A space story about a freighter crew."


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dsns(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(events DSN, catalog DSN) of fresh stores on either backend."""
    if request.param == "sqlite":
        tmp = tmp_path_factory.mktemp("stores")
        yield f"sqlite:///{tmp}/events.db", f"sqlite:///{tmp}/catalog.db"
        return
    from tests.postgres import postgres_cluster

    with postgres_cluster() as dsn:
        yield dsn, dsn


@pytest.fixture(scope="module")
def base_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data the tiny session bundle was trained on (same seed)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("base") / "data")


def fill_stores(events_dsn: str, catalog_dsn: str) -> None:
    store = EventStore(events_dsn)
    store.record(
        [
            Event("u000", "i0006", "view", LIVE_T0_MS),
            Event("u000", "i0012", "click", LIVE_T0_MS + 1_000),
            Event("u000", "i0012", "click", LIVE_T0_MS + 1_400),  # same second: once
            Event("u001", "i0007", "like", LIVE_T0_MS + 2_000),
            Event("u001", "no-such-item", "view", LIVE_T0_MS + 3_000),
            Event("u002", "i0008", "view", LIVE_T0_MS + 4_000),  # deleted below
            Event("new-user", "new-1", "purchase", LIVE_T0_MS + 5_000),
        ]
    )
    assert store.delete_user("u002") == 1
    # After the deletion: new data from a returning user.
    store.record([Event("u002", "i0014", "view", LIVE_T0_MS + 9_000)])
    store.close()
    log = open_log(catalog_dsn)
    vec = np.zeros(4, np.float32)
    log.append(
        [
            LogWrite(UPSERT, "new-1", "Freighter", NEW_ITEM_TEXT, {"topic": "space"}, vec, "x"),
            LogWrite(UPSERT, "i0001", "Renamed", "A changed text.", {}, vec, "x"),
            LogWrite(DELETE, "i0003"),
        ]
    )
    log.close()


def test_export_merges_base_events_and_catalog_and_drops_deleted_users(
    dsns, base_data, bundle_dir, tmp_path
):
    events_dsn, catalog_dsn = dsns
    fill_stores(events_dsn, catalog_dsn)
    out = tmp_path / "export"
    summary, event_seconds = export_live(base_data, bundle_dir, events_dsn, catalog_dsn, out)

    items = {r["item_id"]: r for r in rows(out / "items.csv")}
    assert "new-1" in items and items["new-1"]["text"] == NEW_ITEM_TEXT
    assert items["i0001"]["text"] == "A changed text." and items["i0001"]["title"] == "Renamed"
    assert "i0003" not in items  # deleted from the catalog
    inter = rows(out / "interactions.csv")
    assert not [r for r in inter if r["item_id"] == "i0003"]
    base = load_dataset(base_data)
    # u002 was deleted: nothing from before the deletion, only the event recorded after it.
    assert [(r["item_id"], r["timestamp"]) for r in inter if r["user_id"] == "u002"] == [
        ("i0014", str((LIVE_T0_MS + 9_000) // 1000))
    ]
    u000 = [r["item_id"] for r in inter if r["user_id"] == "u000"]
    kept = [x.item_id for x in base.user_interactions["u000"] if x.item_id != "i0003"]
    assert u000 == [*kept, "i0006", "i0012"]
    assert [r["item_id"] for r in inter if r["user_id"] == "new-user"] == ["new-1"]
    assert summary["events"]["read"] == 7
    assert summary["events"]["kept_by_type"] == {"click": 1, "like": 1, "purchase": 1, "view": 2}
    assert summary["dropped"]["event_unknown_item"] == 1
    assert summary["dropped"]["base_deleted_user"] == len(base.user_interactions["u002"])
    assert summary["catalog"] == {
        "bundle_items": 60, "upserts": 2, "deletes": 1, "log_sequence": 3, "items": 60,
    }  # fmt: skip
    assert sorted(event_seconds) == sorted(
        (LIVE_T0_MS + d) // 1000 for d in (0, 1_000, 2_000, 5_000, 9_000)
    )
    assert json.loads((out / "export.json").read_text())["fingerprint"] == summary["fingerprint"]

    # Re-exporting onto itself (the previous export as the base) changes nothing.
    again, _ = export_live(out, bundle_dir, events_dsn, catalog_dsn, out)
    assert again["fingerprint"] == summary["fingerprint"]
    assert again["dropped"]["duplicate"] >= summary["events"]["kept"]

    # Only the chosen event types count.
    views, _ = export_live(base_data, bundle_dir, events_dsn, catalog_dsn, tmp_path / "v", ["view"])
    assert views["events"]["kept_by_type"] == {"view": 2}


def test_the_gate_keeps_the_serving_bundle_unless_the_candidate_is_not_worse():
    rng = np.random.default_rng(0)
    serving = rng.uniform(0, 1, 200)
    ok, d = decide(serving + 0.001 * rng.standard_normal(200), serving, 20)
    assert ok and d["candidate_minus_serving"]["verdict"] == "no difference"
    ok, d = decide(serving - 0.2, serving, 20)
    assert not ok and "worse" in d["reason"]
    ok, d = decide(serving + 0.2, serving, 20)
    assert ok and d["candidate_minus_serving"]["verdict"] == "better"
    ok, d = decide(serving[:5] + 0.2, serving[:5], 20)
    assert not ok and "5 holdout users" in d["reason"]


def test_a_loop_run_gates_refits_on_everything_and_publishes(bundle_dir, base_data, tmp_path):
    """Serving = the tiny bundle; every user moves to another topic live; the loop's bundle
    learns all of it, holds the upserted item, forgets the deleted user."""
    root = tmp_path / "bundles"
    serving = Bundle.open(bundle_dir)
    copy_bundle(bundle_dir, root / serving.version)
    point_current(root, serving.version)
    events_dsn = f"sqlite:///{tmp_path}/events.db"
    catalog_dsn = f"sqlite:///{tmp_path}/catalog.db"
    base = load_dataset(base_data)
    topic = {it.id: it.metadata["topic"] for it in base.items}
    store = EventStore(events_dsn)
    events = []
    topics = sorted(set(topic.values()))
    for n, user in enumerate(sorted(base.user_interactions)):
        # Taste drifts live (each user moves to the next topic): the serving bundle cannot
        # know it, the candidate learns it, so the gate publishes.
        last = topic[base.user_interactions[user][-1].item_id]
        home = topics[(topics.index(last) + 1) % len(topics)]
        fresh = [i for i in topic if topic[i] == home and i not in set(base.sequence(user))]
        for k, item in enumerate(fresh[:3]):
            events.append(Event(user, item, "view", LIVE_T0_MS + k * 1_000_000 + n * 1_000))
    store.record(events)
    store.delete_user("u005")
    store.close()
    open_log(catalog_dsn).append([LogWrite(UPSERT, "new-1", "Freighter", NEW_ITEM_TEXT)])

    argv = [
        "build", "--from-live", "--data", str(base_data), "--profile", "tiny",
        "--out", str(root), "--version", "loop-1", "--events-dsn", events_dsn,
        "--catalog-dsn", catalog_dsn, "--holdout-fraction", "0.34", "--min-gate-users", "5",
        "--warm-start", str(root), "--quiet",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    assert (root / CURRENT).read_text().strip() == "loop-1"
    assert (root / PREVIOUS).read_text().strip() == serving.version
    bundle = Bundle.open(root)
    report = json.loads((bundle.root / "report" / "report.json").read_text())
    gate = json.loads((root / "live-data" / "gate.json").read_text())
    assert gate["publish"] is True and gate["users"] >= 5
    # Neither side of the gate trained on what it was asked about.
    assert gate["bundles_trained_until"] < gate["holdout_cut"]
    assert gate["bundles_trained_until"] == serving.manifest["ranker"]["recency"]["as_of"]
    # Candidate and refit both started from the serving bundle's state.
    warm = {"from_version": serving.version, "epochs": 3}
    assert bundle.manifest["training"]["warm_start"] == warm
    assert report["refit"]["tower_epochs"] == 3
    assert report["refit"]["gate"]["candidate_minus_serving"] == gate["candidate_minus_serving"]
    held_out = report["refit"]["held_out_version"]
    assert report["training"]["tower"]["epochs"] == report["refit"]["tower_epochs"]
    assert bundle.manifest["training"]["refit"]["held_out_version"] == held_out
    # Trained on every interaction: the histories it seeds are whole, holdout included.
    histories = dict(bundle.iter_user_histories())
    assert "u005" not in histories
    for e in events:
        if e.user_id != "u005":
            assert e.item_id in histories[e.user_id]
    assert bundle.manifest["dataset"]["interactions"] == sum(len(h) for h in histories.values())
    assert "new-1" in {it.id for it in bundle.iter_catalog()}

    # Too few holdout users for the bar: the serving bundle stays (decided before training).
    argv[argv.index("loop-1")] = "loop-2"
    argv[argv.index("5")] = "100000"
    assert cli_main(argv) == 3
    assert (root / CURRENT).read_text().strip() == "loop-1" and not (root / "loop-2").exists()
    refused = json.loads((root / "live-data" / "gate.json").read_text())
    assert refused["publish"] is False and "fewer than the 100000" in refused["reason"]


def test_from_live_usage_errors(base_data, tmp_path, capsys):
    start = ["build", "--from-live", "--data", str(base_data), "--out", str(tmp_path), "--quiet"]
    assert cli_main(start) == 2
    assert "--from-live needs --events-dsn and --catalog-dsn" in capsys.readouterr().err
    stores = ["--events-dsn", f"sqlite:///{tmp_path}/e.db", "--catalog-dsn", "mysql://x"]
    assert cli_main([*start, *stores]) == 2
    assert "neither a bundle nor a root with CURRENT" in capsys.readouterr().err
    assert cli_main([*start, *stores, "--event-types", "view,teleport"]) == 2
    assert "--event-types view,teleport" in capsys.readouterr().err
