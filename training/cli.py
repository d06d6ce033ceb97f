"""Command line: ``python -m training fetch-data``, ``build`` (also ``build --from-live``,
the learning loop), ``timesplit`` and ``compare`` (two bundles, paired over users).

User errors (a bad data directory, malformed CSV, an unknown profile, a failed download)
print one ``error:`` line and exit with status 2; a learning-loop run whose gate keeps the
serving bundle exits with status 3; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.events import EVENT_TYPES
from training.data import INTERACTIONS_CSV, ITEMS_CSV, DataError, fetch_ml100k, fingerprint_files
from training.loop import DEFAULT_HOLDOUT_FRACTION, DEFAULT_MIN_GATE_USERS

ML100K = "ml100k"


class UsageError(Exception):
    """A problem with what the user asked for; reported without a traceback."""


def _parser() -> argparse.ArgumentParser:
    from training.pipeline import PROFILES

    p = argparse.ArgumentParser(
        prog="python -m training", description="Train and publish recstack bundles."
    )
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch-data", help="download MovieLens-100K and convert it")
    f.add_argument(
        "--cache", type=Path, default=Path("data"), help="data cache directory (default: data)"
    )
    b = sub.add_parser("build", help="train, export, index, evaluate and publish a bundle")
    b.add_argument(
        "--data",
        required=True,
        help=f"'{ML100K}' (fetched into --cache) or a generic-format directory",
    )
    b.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    b.add_argument(
        "--out",
        type=Path,
        default=Path("bundles"),
        help="bundle root; CURRENT there names the newest (default: bundles)",
    )
    b.add_argument("--version", default=None, help="bundle version (default: UTC time-profile)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--reuse",
        action="store_true",
        help="skip training if CURRENT already has this profile, seed and data",
    )
    b.add_argument("--cache", type=Path, default=Path("data"))
    b.add_argument(
        "--int8",
        action="store_true",
        help="also write encoder/model.int8.onnx (dynamic quantization) and measure it",
    )
    b.add_argument(
        "--fine-tune-layers",
        type=int,
        default=None,
        help="fine-tune the encoder's top N transformer layers jointly with the user tower "
        "(0: frozen encoder, only its projection head trained; default: the profile's, see "
        "docs/model-quality.md)",
    )
    b.add_argument(
        "--warm-start",
        type=Path,
        metavar="BUNDLE",
        help="start the tower, the encoder's head and its fine-tuned layers from this bundle's "
        "training state (a directory or a root with CURRENT; with --from-live, usually the "
        "serving bundle) and train --warm-epochs epochs (training/warm.py)",
    )
    b.add_argument(
        "--warm-epochs",
        type=int,
        default=None,
        help="tower epochs of a warm-started build (default: the profile's warm_epochs)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress output")
    live = b.add_argument_group(
        "learning loop (--from-live; docs/model-quality.md, 'The learning loop')",
        "export the live stores (merged with --data, the base data), hold out the most "
        "recent events, train a candidate on the rest, gate it against the serving bundle, "
        "then refit on everything and publish into --out",
    )
    live.add_argument("--from-live", action="store_true", help="train from the live stores")
    live.add_argument(
        "--events-dsn", help="the gateway's event store (sqlite:/// or postgresql://)"
    )
    live.add_argument("--catalog-dsn", help="recall's catalog log (sqlite:/// or postgresql://)")
    live.add_argument(
        "--serving-bundle",
        type=Path,
        help="the bundle serving now: a directory or a root with CURRENT (default: --out)",
    )
    live.add_argument(
        "--event-types",
        default=",".join(EVENT_TYPES),
        help=f"comma-separated event types that count as interactions (default: all, "
        f"{','.join(EVENT_TYPES)})",
    )
    live.add_argument(
        "--export-dir",
        type=Path,
        help="where the merged data set goes (default: OUT/live-data; it can be the next "
        "run's --data)",
    )
    live.add_argument(
        "--holdout-fraction",
        type=float,
        default=DEFAULT_HOLDOUT_FRACTION,
        help="share of the recorded events (the most recent) the gate holds out "
        f"(default {DEFAULT_HOLDOUT_FRACTION})",
    )
    live.add_argument(
        "--min-gate-users",
        type=int,
        default=DEFAULT_MIN_GATE_USERS,
        help="fewer holdout users than this: the gate keeps the serving bundle "
        f"(default {DEFAULT_MIN_GATE_USERS})",
    )
    live.add_argument(
        "--no-gate",
        action="store_true",
        help="publish without gating (and without refitting: a normal build on the export)",
    )
    t = sub.add_parser(
        "timesplit",
        help="train on the past, evaluate on the future against recent and all-time "
        "popularity (docs/model-quality.md)",
    )
    t.add_argument("--data", required=True, help=f"'{ML100K}' or a generic-format directory")
    t.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    t.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where the past-only bundle and timesplit.json go (not a serving bundle root)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cache", type=Path, default=Path("data"))
    t.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of interactions (the most recent) after the cut (default 0.1)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress output")
    c = sub.add_parser(
        "compare",
        help="served NDCG@10 of two bundles, paired over the users both evaluated",
    )
    c.add_argument("new", type=Path, help="bundle directory, or a root with CURRENT")
    c.add_argument("old", type=Path, help="the bundle to compare against (e.g. the previous)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return p


def _served_per_user(path: Path) -> tuple[str, dict[str, Any]]:
    """A bundle's version and its report's per-user served NDCG@10 (UsageError if none)."""
    from recstack.core.bundle import resolve_bundle_dir
    from recstack.core.errors import BundleError
    from training.pipeline import REPORT

    try:
        bundle = resolve_bundle_dir(path)
    except BundleError as exc:
        raise UsageError(str(exc)) from exc
    report = bundle / REPORT
    if not report.is_file():
        raise UsageError(f"{bundle}: no {REPORT}")
    per_user = json.loads(report.read_text()).get("per_user_served")
    if not per_user:
        raise UsageError(f"{report}: no per_user_served (a refit or an older bundle)")
    return bundle.name, per_user


def _compare(args: argparse.Namespace) -> int:
    from training.evaluate import compare_served

    new_version, new = _served_per_user(args.new)
    old_version, old = _served_per_user(args.old)
    try:
        result = compare_served(new, old)
    except ValueError as exc:
        raise UsageError(f"{new_version} vs {old_version}: {exc}") from exc
    if args.json:
        print(json.dumps({"new": new_version, "old": old_version, "phases": result}, indent=2))
        return 0
    print(f"served NDCG@10, {new_version} (new) vs {old_version} (old), paired over users")
    for phase, r in result.items():
        d = r["new_minus_old"]
        lo, hi = d["ci95"]
        print(
            f"  {phase:<6} {r['users']} users: {r['new']:.4f} vs {r['old']:.4f}, "
            f"new - old {d['mean']:+.4f} ({lo:+.4f} ... {hi:+.4f}) {d['verdict']}"
        )
    return 0


def _timesplit(args: argparse.Namespace) -> int:
    from training.timesplit import run_time_split

    if not 0.0 < args.test_fraction < 0.5:
        raise UsageError(f"--test-fraction {args.test_fraction}: must be in (0, 0.5)")
    data_dir, name = _resolve_data(args.data, args.cache)
    report = run_time_split(
        data_dir,
        args.out,
        args.profile,
        args.seed,
        test_fraction=args.test_fraction,
        progress=not args.quiet,
        dataset_name=name,
    )
    res, st = report["results"], report["stream"]
    _print_protocol(
        f"time split at {report['test_cut']}: {res['users']} users; NDCG@10 (95% CI)",
        res,
        (
            ("ranked", "served (tower -> HNSW -> ranker)"),
            ("hnsw", "recall only"),
            ("popularity_recent", f"recent popularity ({report['recent_window_days']} days)"),
            ("popularity_all_time", "all-time popularity"),
        ),
    )
    days = {kind: st["windows"][kind]["days"] for kind in ("frozen", "live")}
    _print_protocol(
        f"stream after the cut: {st['requests']} requests of {st['users']} users; "
        "NDCG@10 per user (95% CI)",
        st,
        (
            ("ranked", "served (bundle's recency)"),
            ("ranked_live_recency", "served, recency counted live"),
            ("hnsw", "recall only"),
            ("popularity_recent_frozen", f"recent popularity at the cut ({days['frozen']} days)"),
            ("popularity_recent_live", f"recent popularity live ({days['live']} days)"),
            ("popularity_all_time", "all-time popularity"),
        ),
    )
    print(f"report: {args.out / 'timesplit.json'}")
    return 0


def _print_protocol(title: str, res: dict[str, Any], rows: tuple[tuple[str, str], ...]) -> None:
    """One protocol's NDCG@10 per pipeline and its paired differences, with intervals."""
    print(title)
    for name, label in rows:
        lo, hi = res[name]["ci95"]["ndcg@10"]
        print(f"  {label:<40} {res[name]['ndcg@10']:.4f} ({lo:.4f}-{hi:.4f})")
    for other, d in res["paired"].items():
        nd = d["ndcg@10"]
        lo, hi = nd["ci95"]
        print(f"  {other}: {nd['mean']:+.4f} ({lo:+.4f} ... {hi:+.4f}) {nd['verdict']}")


def _resolve_data(arg: str, cache: Path) -> tuple[Path, str]:
    if arg == ML100K:
        return fetch_ml100k(cache), ML100K
    path = Path(arg)
    if not path.is_dir():
        raise UsageError(f"--data {arg}: not '{ML100K}' and not a directory")
    for name in (ITEMS_CSV, INTERACTIONS_CSV):
        if not (path / name).is_file():
            raise UsageError(f"--data {arg}: missing {name} (see docs/data-format.md)")
    return path, path.resolve().name


def _reusable(out: Path, profile: str, seed: int, data_dir: Path, layers: int) -> Path | None:
    """The CURRENT bundle if built from the same profile, seed, fine-tuned layers and data."""
    from recstack.core.bundle import Bundle
    from recstack.core.errors import BundleError

    if not (out / "CURRENT").is_file():
        return None
    try:
        bundle = Bundle.open(out)
    except BundleError:
        return None
    training = bundle.manifest.get("training", {})
    fingerprint = fingerprint_files([data_dir / ITEMS_CSV, data_dir / INTERACTIONS_CSV])
    same = (
        training.get("profile") == profile
        and training.get("seed") == seed
        and training.get("finetune_layers") == layers
        and bundle.manifest.get("dataset", {}).get("fingerprint") == fingerprint
    )
    return bundle.root if same else None


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _summary(bundle_dir: Path, seconds: float) -> str:
    manifest: dict[str, Any] = json.loads((bundle_dir / "manifest.json").read_text())
    m = manifest.get("metrics", {})
    pop = m.get("most_popular", {})

    def f(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, int | float) else "n/a"

    lines = [
        f"bundle:    {bundle_dir}",
        f"version:   {manifest['version']}",
        f"size:      {_dir_mb(bundle_dir):.1f} MB",
        f"wall time: {seconds:.1f} s",
        f"test users {m.get('eval_users', 0)}:  Recall@10 {f(m.get('recall@10'))}  "
        f"NDCG@10 {f(m.get('ndcg@10'))}  (HNSW recall)",
        f"{'':16}Recall@10 {f(m.get('ranked_recall@10'))}  "
        f"NDCG@10 {f(m.get('ranked_ndcg@10'))}  (recall + ranker: served path)",
        f"{'':16}Recall@10 {f(pop.get('recall@10'))}  "
        f"NDCG@10 {f(pop.get('ndcg@10'))}  (most-popular baseline)",
    ]
    zs = m.get("zero_shot")
    if zs:
        lines.append(
            f"{'':16}Recall@10 {f(zs.get('recall@10'))}  "
            f"NDCG@10 {f(zs.get('ndcg@10'))}  (zero-shot MiniLM)"
        )
    lines.append(f"report:    {bundle_dir / 'report' / 'report.json'}")
    return "\n".join(lines)


def _from_live(args: argparse.Namespace, data_dir: Path, start: float) -> int:
    from recstack.core.errors import BundleError
    from training.loop import GateRefused, LoopOptions, run_loop

    missing = [f for f in ("events_dsn", "catalog_dsn") if not getattr(args, f)]
    if missing:
        flags = " and ".join("--" + f.replace("_", "-") for f in missing)
        raise UsageError(f"--from-live needs {flags}")
    for flag in ("reuse", "int8"):
        if getattr(args, flag):
            raise UsageError(f"--{flag} does not apply to --from-live")
    if args.fine_tune_layers is not None:
        raise UsageError("--fine-tune-layers does not apply to --from-live (the profile's)")
    if not 0.0 < args.holdout_fraction < 1.0:
        raise UsageError(f"--holdout-fraction {args.holdout_fraction}: must be in (0, 1)")
    types = [t.strip() for t in args.event_types.split(",") if t.strip()]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or not types:
        raise UsageError(f"--event-types {args.event_types}: choose from {','.join(EVENT_TYPES)}")
    serving = args.serving_bundle or args.out
    if not (serving / "CURRENT").is_file() and not (serving / "manifest.json").is_file():
        raise UsageError(f"--serving-bundle {serving}: neither a bundle nor a root with CURRENT")
    opts = LoopOptions(
        base_data=data_dir,
        serving=serving,
        events_dsn=args.events_dsn,
        catalog_dsn=args.catalog_dsn,
        out=args.out,
        export_dir=args.export_dir or args.out / "live-data",
        profile=args.profile,
        seed=args.seed,
        version=args.version,
        event_types=types,
        holdout_fraction=args.holdout_fraction,
        min_gate_users=args.min_gate_users,
        gate=not args.no_gate,
        warm_start=args.warm_start,
        warm_epochs=args.warm_epochs,
        progress=not args.quiet,
    )
    try:
        bundle = run_loop(opts)
    except BundleError as exc:  # an unreadable serving bundle or store DSN
        raise UsageError(str(exc)) from exc
    except GateRefused as exc:
        print(f"not published: {exc} (see {opts.export_dir / 'gate.json'})")
        return 3
    print(_summary(bundle, time.perf_counter() - start))
    print(f"gate:      {opts.export_dir / 'gate.json'}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from training.base_encoder import BASE_LAYERS
    from training.pipeline import PROFILES, build_bundle, profile_with

    start = time.perf_counter()
    data_dir, name = _resolve_data(args.data, args.cache)
    if args.from_live:
        return _from_live(args, data_dir, start)
    profile = PROFILES[args.profile]
    if args.warm_epochs is not None:
        if args.warm_start is None:
            raise UsageError("--warm-epochs needs --warm-start")
        if args.warm_epochs < 1:
            raise UsageError(f"--warm-epochs {args.warm_epochs}: must be at least 1")
        profile = replace(profile, warm_epochs=args.warm_epochs)
    if args.fine_tune_layers is not None:
        if not 0 <= args.fine_tune_layers <= BASE_LAYERS:
            raise UsageError(
                f"--fine-tune-layers {args.fine_tune_layers}: must be 0..{BASE_LAYERS}"
            )
        tower = replace(profile.tower, finetune_layers=args.fine_tune_layers)
        profile = profile_with(args.profile, tower=tower)
    if args.reuse and args.warm_start is None:
        existing = _reusable(
            args.out, args.profile, args.seed, data_dir, profile.tower.finetune_layers
        )
        if existing is not None:
            print(f"reusing {existing}: same profile, seed and data fingerprint")
            print(_summary(existing, time.perf_counter() - start))
            return 0
    if args.version and (args.out / args.version).exists():
        raise UsageError(f"--version {args.version}: {args.out / args.version} already exists")
    bundle = build_bundle(
        data_dir,
        args.out,
        profile,
        version=args.version,
        seed=args.seed,
        progress=not args.quiet,
        dataset_name=name,
        int8=args.int8,
        warm_start=args.warm_start,
    )
    print(_summary(bundle, time.perf_counter() - start))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch-data":
            path = fetch_ml100k(args.cache)
            print(f"MovieLens-100K ready in {path}")
            return 0
        if args.command == "timesplit":
            return _timesplit(args)
        if args.command == "compare":
            return _compare(args)
        return _build(args)
    except (DataError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
