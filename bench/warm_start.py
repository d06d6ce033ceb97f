"""Warm start against a cold build, both asked about the future (the learning loop's case).

Three cuts in time, all quantiles of the data's interaction times: the **stale** bundle
trains on everything before ``--stale-quantile`` (0.8; it plays the serving bundle), the
**candidates** on everything before ``--cut-quantile`` (0.9; the time split's ``T``): one
**cold** (the profile's normal build) and one **warm** per ``--warm-epochs`` value
(``--warm-start`` from the stale bundle, :mod:`training.warm`). Every bundle answers the same
users, each asked for their first new item at or after ``T`` (``training.timesplit``'s
protocol: history before ``T`` excluded, full catalog). The stale bundle saw nothing after its
own cut, so the warm candidates see nothing of what they are asked about.

Printed and written to ``bench/results/warm_start.json``: served NDCG@10 and Recall@20 with
95% intervals, each warm candidate paired against the cold one (and the stale bundle against
both), tower training seconds and whole-build seconds. Builds run one after another in this
process (same threads); their times are single runs on a shared machine, indicative only.

Usage: ``python -m bench.warm_start --data ml100k --profile quick [--workdir DIR]``
(a workdir keeps the bundles; a rerun reuses the ones already built).
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

RESULTS = Path(__file__).resolve().parent / "results"


def _build(
    root: Path,
    version: str,
    data_dir: Path,
    profile: Any,
    seed: int,
    warm_start: Path | None,
) -> tuple[Path, float]:
    from training.pipeline import build_bundle

    existing = root / version
    if (existing / "manifest.json").is_file():
        return existing, 0.0
    start = time.perf_counter()
    bundle = build_bundle(
        data_dir,
        root,
        profile,
        version=version,
        seed=seed,
        progress=True,
        warm_start=warm_start,
    )
    return bundle, time.perf_counter() - start


def run(
    data_dir: Path,
    workdir: Path,
    profile_name: str,
    warm_epochs: list[int],
    stale_quantile: float,
    cut_quantile: float,
    seed: int,
) -> dict[str, Any]:
    from dataclasses import replace

    from training import evaluate as ev
    from training.data import load_dataset, write_dataset
    from training.loop import RECENT_DAYS
    from training.pipeline import PROFILES
    from training.timesplit import cut_time, evaluate_bundle_on_future, past

    dataset = load_dataset(data_dir)
    stale_cut = cut_time(dataset, stale_quantile)
    cut = cut_time(dataset, cut_quantile)
    prof = PROFILES[profile_name]
    roots = workdir / "bundles"
    stale_data = write_dataset(workdir / "stale-data", dataset.items, past(dataset, stale_cut))
    cand_data = write_dataset(workdir / "candidate-data", dataset.items, past(dataset, cut))
    built: dict[str, tuple[Path, float]] = {}
    built["stale"] = _build(roots, "stale", stale_data, prof, seed, None)
    built["cold"] = _build(roots, "cold", cand_data, prof, seed, None)
    for n in warm_epochs:
        built[f"warm{n}"] = _build(
            roots, f"warm{n}", cand_data, replace(prof, warm_epochs=n), seed, built["stale"][0]
        )

    per_user: dict[str, np.ndarray] = {}
    rows: dict[str, Any] = {}
    for name, (bundle, wall) in built.items():
        arrays: dict[str, dict[str, np.ndarray]] = {}
        res = evaluate_bundle_on_future(bundle, dataset, cut, RECENT_DAYS, arrays)
        per_user[name] = arrays["ranked"]["ndcg@10"]
        training = json.loads((bundle / "manifest.json").read_text())["training"]
        rows[name] = {
            "ndcg@10": res["ranked"]["ndcg@10"],
            "ndcg@10_ci95": res["ranked"]["ci95"]["ndcg@10"],
            "recall@20": res["ranked"]["recall@20"],
            "tower_epochs": training["tower"]["epochs"],
            "tower_best_epoch": training["tower_best_epoch"],
            "train_tower_s": training["seconds"].get("train_tower"),
            "build_s": training["seconds"].get("total"),
            "wall_s_this_run": round(wall, 1) if wall else None,
            "own_valid_curve": training["tower_valid_curve"],
        }
    # The baselines depend on the users and the data only: the same for every bundle.
    reference = {
        "users": res["users"],
        "recent_popularity_ndcg@10": res["popularity_recent"]["ndcg@10"],
        "all_time_popularity_ndcg@10": res["popularity_all_time"]["ndcg@10"],
    }
    paired = {
        f"{name}_minus_cold": ev.paired_difference(per_user[name], per_user["cold"])
        for name in per_user
        if name != "cold"
    }
    return {
        "protocol": __doc__.split("\n\n")[1],
        "profile": profile_name,
        "seed": seed,
        "stale_cut": stale_cut,
        "cut": cut,
        "bundles": rows,
        "reference": reference,
        "paired_ndcg@10": paired,
        "machine": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    from training.cli import _resolve_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ml100k", help="'ml100k' or a generic-format directory")
    parser.add_argument("--cache", type=Path, default=Path("data"))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--warm-epochs", default="5", help="comma-separated, one build each")
    parser.add_argument("--stale-quantile", type=float, default=0.8)
    parser.add_argument("--cut-quantile", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the bundles here")
    parser.add_argument("--out", type=Path, default=RESULTS / "warm_start.json")
    args = parser.parse_args(argv)
    if not 0.0 < args.stale_quantile < args.cut_quantile < 1.0:
        parser.error("need 0 < --stale-quantile < --cut-quantile < 1")
    epochs = [int(x) for x in args.warm_epochs.split(",") if x.strip()]
    if not epochs or min(epochs) < 1:
        parser.error("--warm-epochs: positive integers")
    data_dir, _ = _resolve_data(args.data, args.cache)
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(
            data_dir,
            workdir,
            args.profile,
            epochs,
            args.stale_quantile,
            args.cut_quantile,
            args.seed,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    users = report["reference"]["users"]
    print(f"{users} users asked about the future (cut {report['cut']})")
    print(f"{'bundle':<8} {'NDCG@10 (95% CI)':<26} {'Recall@20':>9} {'epochs':>6} {'tower s':>8}")
    for name, row in report["bundles"].items():
        lo, hi = row["ndcg@10_ci95"]
        print(
            f"{name:<8} {row['ndcg@10']:.4f} ({lo:.3f}-{hi:.3f})       {row['recall@20']:9.4f} "
            f"{row['tower_epochs']:6d} {row['train_tower_s'] or 0:8.1f}"
        )
    for name, diff in report["paired_ndcg@10"].items():
        lo, hi = diff["ci95"]
        print(f"{name}: {diff['mean']:+.4f} ({lo:+.4f} … {hi:+.4f}) {diff['verdict']}")
    ref = report["reference"]
    print(
        f"same users: recent popularity {ref['recent_popularity_ndcg@10']:.4f}, "
        f"all-time {ref['all_time_popularity_ndcg@10']:.4f}"
    )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
