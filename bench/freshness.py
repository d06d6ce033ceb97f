"""Freshness: does the learning loop make the stack better at what users do next?

The measurement (issue 16; ``tests/process/test_freshness.py`` runs it at small scale):

1. The data's interactions are cut in time: **past** (before the ``1 - replay_fraction``
   quantile), **replayed** (the first ``1 - follow_fraction`` of the rest) and **follow**
   (the last part: the events that follow). Items first seen after the past are **new**:
   the stale bundle's catalog lacks them.
2. The **stale** bundle is built from the past alone and served by the three services as
   processes (``recstack.tools.procs.Stack``) on a bundles root.
3. Through the gRPC API, as production traffic would: every new item is upserted by text
   through recall (encoded by the serving encoder), then the replayed interactions are sent
   to the gateway as ``RecordEvents`` with their original times.
4. ``python -m training build --from-live`` (:func:`training.loop.run_loop`) exports the
   gateway's events and recall's catalog log, gates and refits; it publishes into the same
   root, and the running services hot-swap to it (their CURRENT watchers); the report
   records the version the gateway then answers in.
5. Both bundles answer the follow cases — each user active before and after the follow cut,
   history = all of their interactions before it (past + replayed: the stale bundle, too,
   has the live profile the gateway keeps), target = their first new item after it -- through
   the served path over the same live catalog
   (:func:`training.timesplit.evaluate_bundle_on_future`), paired over users; plus how often
   the targets that are new items are hit.

Usage: ``python -m bench.freshness --data ml100k --profile quick`` (results in
``bench/results/freshness.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recstack.client import RecstackClient, item_write
from recstack.core.bundle import point_current
from recstack.tools.procs import Stack
from training import evaluate as ev
from training.data import Dataset, Interaction, load_dataset, write_dataset

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 500  # events per RecordEvents (the gateway's default limit is 1000)
POLL = ["--bundle-poll-s", "1"]


def cut_at(stamps: list[int], quantile: float) -> int:
    ordered = sorted(stamps)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def plan(
    dataset: Dataset,
    replay_fraction: float,
    follow_fraction: float,
    cuts: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The two cuts (from the fractions, or ``cuts`` = (past, follow) times), the new items,
    and the interactions of each part (time order)."""
    everything = sorted(
        (x for seq in dataset.user_interactions.values() for x in seq),
        key=lambda x: (x.timestamp, x.user_id),
    )
    stamps = [x.timestamp for x in everything]
    if cuts is None:
        past_cut = cut_at(stamps, 1.0 - replay_fraction)
        follow_cut = cut_at([t for t in stamps if t >= past_cut], 1.0 - follow_fraction)
    else:
        past_cut, follow_cut = cuts
    past = [x for x in everything if x.timestamp < past_cut]
    seen = {x.item_id for x in past}
    new = [it for it in dataset.items if it.id not in seen]
    return {
        "past_cut": past_cut,
        "follow_cut": follow_cut,
        "past": past,
        "replay": [x for x in everything if past_cut <= x.timestamp < follow_cut],
        "follow": [x for x in everything if x.timestamp >= follow_cut],
        "new_items": new,
    }


def replay(
    client: RecstackClient, new_items: list[Any], events: list[Interaction]
) -> dict[str, int]:
    """Upsert the new items, then send the replayed interactions as timed events."""
    sequence = 0
    for i in range(0, len(new_items), 100):
        sequence = client.upsert(
            [
                item_write(it.id, title=it.title, text=it.text, metadata=it.metadata)
                for it in new_items[i : i + 100]
            ]
        )
    for i in range(0, len(events), BATCH):
        client.record_events(
            [(x.user_id, x.item_id, "view", x.timestamp * 1000) for x in events[i : i + BATCH]]
        )
    return {"upserted": len(new_items), "catalog_sequence": sequence, "events": len(events)}


def wait_for_version(client: RecstackClient, user: str, version: str, timeout: float) -> str:
    """The version the gateway answers in once the services swapped (or the last seen)."""
    end, got = time.monotonic() + timeout, ""
    while time.monotonic() < end:
        got = client.recommend(user_id=user, k=10).bundle_version
        if got == version:
            break
        time.sleep(1)
    return got


def compare(
    stale: Path, fresh: Path, dataset: Dataset, cut: int, new_ids: set[str]
) -> dict[str, Any]:
    """Both bundles on the follow cases: metrics, the paired difference, new items."""
    from training.loop import RECENT_DAYS
    from training.timesplit import evaluate_bundle_on_future, future_cases

    cases = future_cases(dataset, cut)
    out: dict[str, Any] = {"users": len(cases)}
    per_user: dict[str, np.ndarray] = {}
    for name, root in (("stale", stale), ("retrained", fresh)):
        arrays: dict[str, dict[str, np.ndarray]] = {}
        lists: dict[str, list[list[str]]] = {}
        res = evaluate_bundle_on_future(root, dataset, cut, RECENT_DAYS, arrays, lists)
        per_user[name] = arrays["ranked"]["ndcg@10"]
        hits = arrays["ranked"]["recall@20"]
        on_new = np.asarray([c.target in new_ids for c in cases])
        top10 = [set(x[:10]) & new_ids for x in lists["ranked"]]
        out[name] = {
            "ndcg@10": res["ranked"]["ndcg@10"],
            "ndcg@10_ci95": res["ranked"]["ci95"]["ndcg@10"],
            "recall@20": res["ranked"]["recall@20"],
            "recall@20_on_new_item_targets": float(hits[on_new].mean()) if on_new.any() else None,
            # Are the new items recommended at all (to anyone), not only hit?
            "users_with_a_new_item_in_top10": sum(1 for t in top10 if t),
            "new_items_in_some_top10": len(set().union(*top10)) if top10 else 0,
        }
        if name == "stale":
            out["recent_popularity"] = {
                k: res["popularity_recent"][k] for k in ("ndcg@10", "recall@20")
            }
            out["new_item_targets"] = int(on_new.sum())
    out["retrained_minus_stale"] = ev.paired_difference(per_user["retrained"], per_user["stale"])
    return out


def run(
    data_dir: Path,
    work: Path,
    profile: str = "quick",
    replay_fraction: float = 0.1,
    follow_fraction: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    min_gate_users: int = 20,
    cuts: tuple[int, int] | None = None,
    holdout_fraction: float = 0.4,
    gate: bool = True,
) -> dict[str, Any]:
    """The whole measurement in ``work``; returns the report. A ``work`` that already holds
    the stale bundle and the replayed stores (``replayed.json``, from an earlier run) is
    reused: only the loop and the comparison run again."""
    from training.loop import LoopOptions, run_loop
    from training.pipeline import build_bundle

    dataset = load_dataset(data_dir)
    parts = plan(dataset, replay_fraction, follow_fraction, cuts)
    new_ids = {it.id for it in parts["new_items"]}
    past_items = [it for it in dataset.items if it.id not in new_ids]
    past_dir = write_dataset(work / "past", past_items, parts["past"])
    root = work / "bundles"
    marker = work / "replayed.json"
    started = time.perf_counter()
    resumed = marker.is_file() and (root / "stale").is_dir()
    if resumed:
        stale = root / "stale"
        point_current(root, "stale")  # a refused loop left it; a published one moved it
    else:
        stale = build_bundle(
            past_dir, root, profile, version="stale", seed=seed, progress=progress,
            dataset_name=f"{dataset.name}-past",
        )  # fmt: skip
    timings = {"stale_build_s": round(time.perf_counter() - started, 1)}
    state = {name: work / "state" / name for name in ("recall", "gateway")}
    extra = {
        "recall": ["--state-dir", str(state["recall"]), *POLL],
        "rank": POLL,
        "gateway": ["--state-dir", str(state["gateway"])],
    }
    stack = Stack(str(root), work, extra).start()
    try:
        with RecstackClient(
            f"127.0.0.1:{stack.gateway.port}", f"127.0.0.1:{stack.by_name('recall').port}"
        ) as client:
            started = time.perf_counter()
            if resumed:
                replayed = json.loads(marker.read_text())
            else:
                replayed = replay(client, parts["new_items"], parts["replay"])
                marker.write_text(json.dumps(replayed) + "\n")
            timings["replay_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            fresh = run_loop(
                LoopOptions(
                    base_data=past_dir,
                    serving=root,
                    events_dsn=f"sqlite:///{state['gateway'].resolve()}/events.db",
                    catalog_dsn=f"sqlite:///{state['recall'].resolve()}/catalog.db",
                    out=root,
                    export_dir=work / "live-data",
                    profile=profile,
                    seed=seed,
                    version="retrained",
                    min_gate_users=min_gate_users,
                    holdout_fraction=holdout_fraction,
                    gate=gate,
                    progress=progress,
                )
            )
            timings["loop_s"] = round(time.perf_counter() - started, 1)
            probe = parts["follow"][0].user_id
            answered = wait_for_version(client, probe, "retrained", timeout=300)
    finally:
        codes = stack.stop()
    decision = json.loads((work / "live-data" / "gate.json").read_text())
    # Evaluation data: the live catalog (the export's items) and every interaction.
    export = load_dataset(work / "live-data")
    full = write_dataset(
        work / "eval",
        export.items,
        [*parts["past"], *parts["replay"], *parts["follow"]],
    )
    results = compare(stale, fresh, load_dataset(full), parts["follow_cut"], new_ids)
    return {
        "data": dataset.name,
        "profile": profile,
        "seed": seed,
        "cuts": {"past": parts["past_cut"], "follow": parts["follow_cut"]},
        "sizes": {
            "past": len(parts["past"]),
            "replayed": len(parts["replay"]),
            "follow": len(parts["follow"]),
            "new_items": len(new_ids),
        },
        "replayed": replayed,
        "resumed": resumed,
        "holdout_fraction": holdout_fraction,
        "gate": {
            k: decision.get(k) for k in ("publish", "reason", "users", "candidate_minus_serving")
        },
        "gateway_answered_in_after_publish": answered,
        "exit_codes": codes,
        "seconds": timings,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    from training.cli import _resolve_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ml100k", help="'ml100k' or a generic-format directory")
    parser.add_argument("--cache", type=Path, default=Path("data"))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--replay-fraction", type=float, default=0.1)
    parser.add_argument("--follow-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.4,
        help="the loop's gate holdout (share of the replayed events; default 0.4: ML-100K's "
        "last 10%% is mostly new users' first sessions, so its last 20%% holds only 10 users "
        "with a history, too few for the gate)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "freshness.json")
    parser.add_argument("--workdir", type=Path, help="keep bundles, stores and logs here")
    args = parser.parse_args(argv)
    data_dir, _ = _resolve_data(args.data, args.cache)
    with tempfile.TemporaryDirectory(prefix="freshness-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        report = run(
            data_dir,
            work,
            args.profile,
            args.replay_fraction,
            args.follow_fraction,
            args.seed,
            holdout_fraction=args.holdout_fraction,
        )
    report["machine"] = platform.platform()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    r = report["results"]
    print(f"follow cases: {r['users']} users ({r['new_item_targets']} targets are new items)")
    for name in ("stale", "retrained"):
        lo, hi = r[name]["ndcg@10_ci95"]
        print(
            f"  {name:<10} NDCG@10 {r[name]['ndcg@10']:.4f} ({lo:.4f}-{hi:.4f})  "
            f"Recall@20 {r[name]['recall@20']:.4f}  on new-item targets "
            f"{r[name]['recall@20_on_new_item_targets']}; users with a new item in their top 10: "
            f"{r[name]['users_with_a_new_item_in_top10']} (distinct new items shown: "
            f"{r[name]['new_items_in_some_top10']})"
        )
    d = r["retrained_minus_stale"]
    print(f"  retrained - stale: {d['mean']:+.4f} {d['ci95']} {d['verdict']}")
    print(f"  gate: {report['gate']['reason']}; gateway answers in "
          f"{report['gateway_answered_in_after_publish']}")  # fmt: skip
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
