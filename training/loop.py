"""The learning loop: live stores → next bundle, gated against the serving one.

``python -m training build --from-live`` runs, in order:

1. **export** (:mod:`training.live`): base data + recorded events + live catalog, deleted
   users dropped, into ``--export-dir`` (generic format + ``export.json``);
2. **hold out** the most recent events: the cut ``T`` is the ``1 - holdout_fraction``
   quantile of the exported *event* times (so the holdout is live behaviour, never the base
   data the serving bundle learned from), and never earlier than just after the newest
   interaction the serving bundle (and a ``--warm-start`` bundle) trained on, so neither
   side of the gate has seen what it is asked about; each user active before and after
   ``T`` is asked for their first new item at or after ``T``
   (:func:`training.timesplit.future_cases`);
3. **candidate**: a bundle built, with the normal pipeline and its own leave-last-out
   validation for its choices, from everything before ``T`` (a scratch root; never served);
4. **gate**: candidate and serving bundle answer the same holdout users through the served
   path (tower → HNSW → ranker), over the same live catalog (the serving bundle encodes the
   items it lacks, as recall does on an upsert); the paired NDCG@10 difference decides:
   publish unless the candidate is *worse beyond the interval* (the 95% interval of
   candidate - serving lies below 0), or the holdout has fewer than ``min_gate_users``
   users (too few to tell: fail closed);
5. **refit** (:class:`training.pipeline.Refit`): the published bundle trains on **every**
   exported interaction, holdout included, with the candidate's choices (tower epochs,
   new users' prior weight), so what users did last is what it serves. Its report carries
   the candidate's evaluation and the gate (the refit itself has nothing held out).

With ``warm_start`` the candidate and the refit start from that bundle's training state
(:mod:`training.warm`) and train the profile's ``warm_epochs``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training import evaluate as ev
from training.data import DataError, load_dataset, write_dataset

DEFAULT_HOLDOUT_FRACTION = 0.2
DEFAULT_MIN_GATE_USERS = 20
GATE_REPORT = "gate.json"
RECENT_DAYS = 14  # the recent-popularity reference's window (timesplit's choice on ML-100K)


class GateRefused(Exception):
    """The gate kept the serving bundle; the message says why (scores in gate.json)."""


@dataclass(frozen=True)
class LoopOptions:
    """One run of the loop; see the module docstring and ``python -m training build -h``."""

    base_data: Path
    serving: Path  # the serving bundle (a directory or a root with CURRENT)
    events_dsn: str
    catalog_dsn: str
    out: Path  # the refit bundle's root (CURRENT is pointed at it)
    export_dir: Path
    profile: str = "quick"
    seed: int = 0
    version: str | None = None
    event_types: Sequence[str] | None = None
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    min_gate_users: int = DEFAULT_MIN_GATE_USERS
    gate: bool = True
    progress: bool = True
    # Candidate and refit start from the serving bundle's training state (training.warm).
    warm_start: Path | None = None
    warm_epochs: int | None = None


def holdout_cut(event_seconds: Sequence[int], fraction: float) -> int:
    """The time at the ``1 - fraction`` quantile of the events (events at or after it are
    held out)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), not {fraction}")
    if len(event_seconds) < 2:
        raise DataError(
            f"{len(event_seconds)} recorded event(s): the gate needs recent events to hold out "
            "(record some, or build with --no-gate)"
        )
    stamps = np.sort(np.asarray(event_seconds, np.int64))
    return int(stamps[min(len(stamps) - 1, int((1.0 - fraction) * len(stamps)))])


def decide(
    candidate: np.ndarray, serving: np.ndarray, min_users: int
) -> tuple[bool, dict[str, Any]]:
    """Publish unless the candidate's paired NDCG@10 is worse beyond the interval, or there
    are too few users to tell (fail closed)."""
    users = len(candidate)
    diff = ev.paired_difference(candidate, serving)
    out = {
        "users": users,
        "candidate_ndcg@10": float(np.mean(candidate)) if users else 0.0,
        "serving_ndcg@10": float(np.mean(serving)) if users else 0.0,
        "candidate_minus_serving": diff,
    }
    if users < min_users:
        out["reason"] = f"{users} holdout users, fewer than the {min_users} needed to decide"
        return False, out
    if diff["verdict"] == "worse":
        out["reason"] = "the candidate is worse than the serving bundle beyond the interval"
        return False, out
    out["reason"] = f"the candidate is {diff['verdict']} than the serving bundle"
    if diff["verdict"] == "no difference":
        out["reason"] = "no difference between the candidate and the serving bundle"
    return True, out


def run_loop(opts: LoopOptions) -> Path:
    """Export, hold out, train the candidate, gate, refit and publish; returns the new
    bundle's directory. Raises :class:`GateRefused` when the gate keeps the serving bundle."""
    from recstack.core.bundle import Bundle, resolve_bundle_dir
    from training.live import export_live
    from training.pipeline import PROFILES, REPORT, Refit, build_bundle
    from training.timesplit import evaluate_bundle_on_future, future_cases, past
    from training.warm import keeps_state, trained_until

    serving = resolve_bundle_dir(opts.serving)
    if opts.warm_start is not None and not keeps_state(opts.warm_start):
        # A bundle from before bundles kept their state (the first run after an upgrade):
        # train from scratch this once rather than fail the scheduled run.
        print(f"warm start: {opts.warm_start} keeps no training state; training from scratch")
        opts = replace(opts, warm_start=None)
    summary, event_seconds = export_live(
        opts.base_data,
        serving,
        opts.events_dsn,
        opts.catalog_dsn,
        opts.export_dir,
        opts.event_types,
    )
    if opts.progress:
        print(f"exported: {json.dumps(summary['events'])}", flush=True)
    dataset = load_dataset(opts.export_dir, name=f"live-{summary['fingerprint'][:12]}")
    prof = PROFILES[opts.profile]
    if opts.warm_epochs is not None:
        prof = replace(prof, warm_epochs=opts.warm_epochs)
    gate: dict[str, Any] = {"export": summary}
    with tempfile.TemporaryDirectory(prefix="recstack-gate-") as tmp:
        scratch = Path(tmp)
        if opts.gate:
            seen = [serving] + ([] if opts.warm_start is None else [opts.warm_start])
            seen_until = max(trained_until(Bundle.open(b, verify="none").manifest) for b in seen)
            quantile = holdout_cut(event_seconds, opts.holdout_fraction)
            cut = max(quantile, seen_until + 1)
            gate.update(
                holdout_cut=cut,
                holdout_fraction=opts.holdout_fraction,
                holdout_quantile_cut=quantile,
                bundles_trained_until=seen_until,
            )
            users = len(future_cases(dataset, cut))
            if users < opts.min_gate_users:
                # Undecidable whatever the candidate scores: no need to train it.
                reason = (
                    f"{users} holdout users, fewer than the {opts.min_gate_users} needed to decide"
                )
                gate.update(publish=False, users=users, reason=reason)
                (opts.export_dir / GATE_REPORT).write_text(json.dumps(gate, indent=2) + "\n")
                print(f"gate: keep serving: {reason}", flush=True)
                raise GateRefused(f"gate kept {serving.name}: {reason}")
            before = write_dataset(scratch / "past", dataset.items, past(dataset, cut))
            candidate = build_bundle(
                before,
                scratch / "candidate",
                prof,
                seed=opts.seed,
                progress=opts.progress,
                dataset_name=f"{dataset.name}-before-{cut}",
                warm_start=opts.warm_start,
            )
            scores: dict[str, np.ndarray] = {}
            for name, root in (("candidate", candidate), ("serving", serving)):
                arrays: dict[str, dict[str, np.ndarray]] = {}
                res = evaluate_bundle_on_future(root, dataset, cut, RECENT_DAYS, arrays)
                scores[name] = arrays["ranked"]["ndcg@10"]
                gate[f"{name}_served"] = {k: res["ranked"][k] for k in ("ndcg@10", "recall@20")}
            # For reading the scores: the same users under recent popularity.
            gate["recent_popularity"] = {
                k: res["popularity_recent"][k] for k in ("ndcg@10", "recall@20")
            }
            publish, decision = decide(scores["candidate"], scores["serving"], opts.min_gate_users)
            gate.update(decision, publish=publish, serving_version=serving.name)
            (opts.export_dir / GATE_REPORT).write_text(json.dumps(gate, indent=2) + "\n")
            # The decision is the run's outcome: printed even with --quiet.
            print(
                f"gate: {'publish' if publish else 'keep serving'} (candidate "
                f"{decision['candidate_ndcg@10']:.4f}, serving {decision['serving_ndcg@10']:.4f}"
                f" NDCG@10, {decision['users']} users): {decision['reason']}",
                flush=True,
            )
            if not publish:
                raise GateRefused(f"gate kept {serving.name}: {decision['reason']}")
            report = json.loads((candidate / REPORT).read_text())
            training = report["training"]
            refit: Refit | None = Refit(
                tower_epochs=int(training["tower_best_epoch"]),
                query_prior_weight=float(training["query_prior_weight"]),
                held_out_report=report,
                gate=gate,
            )
        else:
            refit = None
            gate["publish"], gate["reason"] = True, "gate skipped (--no-gate)"
            (opts.export_dir / GATE_REPORT).write_text(json.dumps(gate, indent=2) + "\n")
        bundle = build_bundle(
            opts.export_dir,
            opts.out,
            prof,
            version=opts.version,
            seed=opts.seed,
            progress=opts.progress,
            dataset_name=dataset.name,
            refit=refit,
            warm_start=opts.warm_start,
        )
    return bundle
