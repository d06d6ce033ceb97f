"""Global time split: train on the past, evaluate on the future.

Leave-last-out (the build's own protocol) holds out each user's last items wherever they
fall in time, so a model is asked about the past of other users' futures. A recommender
serves the future: here **one cut-off time** ``T`` (the ``1 - test_fraction`` quantile of
all interaction timestamps) splits the data.

- The model is a normal bundle built (same profile, same code, its own leave-last-out
  validation for its choices) from the interactions **before** ``T`` only.
- Test cases: every user with interactions both before and after ``T``; history = all of
  their interactions before ``T``; target = their **first** interaction at or after ``T``;
  the history is excluded from the ranking (full catalog otherwise).
- Baselines from the past only: all-time popularity (users per item before ``T``) and
  **recent popularity** (interactions in the ``w`` days before ``T``). ``w`` is chosen on
  a validation cut ``T_v`` (the ``1 - test_fraction - valid_fraction`` quantile, same
  construction, counts before ``T_v``), never on the test cases.

``python -m training timesplit`` runs it and writes ``timesplit.json`` (with 95% bootstrap
intervals and paired differences over users) next to the bundle it built.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import evaluate as ev
from training.data import DataError, Dataset, Interaction, load_dataset, write_dataset

DAY_S = 86_400
RECENT_WINDOWS_DAYS = (1, 3, 7, 14, 30, 60)


@dataclass
class FutureCase:
    """A user at the cut: everything before it (oldest first), the first item after it."""

    case: ev.EvalCase
    cut: int


def cut_time(dataset: Dataset, quantile: float) -> int:
    """The timestamp at ``quantile`` of all interactions (interactions at or after it are
    the future)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), not {quantile}")
    stamps = np.sort([x.timestamp for v in dataset.user_interactions.values() for x in v])
    if len(stamps) < 2:
        raise DataError("a time split needs at least two interactions")
    return int(stamps[min(len(stamps) - 1, int(quantile * len(stamps)))])


def past(dataset: Dataset, cut: int) -> list[Interaction]:
    """Every interaction strictly before ``cut`` (time order within each user)."""
    return [
        x
        for user in sorted(dataset.user_interactions)
        for x in dataset.user_interactions[user]
        if x.timestamp < cut
    ]


def future_cases(dataset: Dataset, cut: int, until: int | None = None) -> list[ev.EvalCase]:
    """Per user with a history before ``cut``: the first later interaction (before
    ``until`` when given) whose item is not in that history."""
    cases = []
    for user in sorted(dataset.user_interactions):
        seq = dataset.user_interactions[user]
        history = [x.item_id for x in seq if x.timestamp < cut]
        if not history:
            continue
        seen = set(history)
        after = [
            x.item_id
            for x in seq
            if x.timestamp >= cut
            and (until is None or x.timestamp < until)
            and x.item_id not in seen
        ]
        if after:
            last = max(x.timestamp for x in seq if x.timestamp < cut)
            cases.append(ev.EvalCase(user, history, seen, after[0], time=cut, last_time=last))
    return cases


def popularity(interactions: Sequence[Interaction], since: int | None = None) -> Counter[str]:
    """Users per item over ``interactions`` (only those at or after ``since``, if given)."""
    counts: Counter[str] = Counter()
    for item, _ in {
        (x.item_id, x.user_id) for x in interactions if since is None or x.timestamp >= since
    }:
        counts[item] += 1
    return counts


def popularity_lists(
    counts: Counter[str], order: Sequence[str], cases: Sequence[ev.EvalCase], k: int
) -> list[list[str]]:
    """Top-``k`` unseen items by ``counts`` (ties: all-time ``order``)."""
    rank = {i: n for n, i in enumerate(order)}
    ranked = sorted(order, key=lambda i: (-counts.get(i, 0), rank[i]))
    return ev.unseen_lists(ranked, cases, k)


def _order(counts: Counter[str], item_ids: Sequence[str]) -> list[str]:
    pos = {i: n for n, i in enumerate(item_ids)}
    return sorted(item_ids, key=lambda i: (-counts.get(i, 0), pos[i]))


def choose_recent_window(
    dataset: Dataset, valid_cut: int, test_cut: int, windows_days: Sequence[int]
) -> tuple[int, list[tuple[int, float]]]:
    """The recent-popularity window with the best NDCG@10 on the validation cut."""
    cases = future_cases(dataset, valid_cut, until=test_cut)
    if not cases:
        raise DataError("no validation users around the validation cut")
    before = past(dataset, valid_cut)
    order = _order(popularity(before), [it.id for it in dataset.items])
    targets: list[str | None] = [c.target for c in cases]
    curve = []
    for days in windows_days:
        counts = popularity(before, since=valid_cut - days * DAY_S)
        lists = popularity_lists(counts, order, cases, 10)
        curve.append((days, ev.ndcg_at_k(lists, targets, 10)))
    best = max(curve, key=lambda dc: (dc[1], -dc[0]))[0]
    return best, curve


def catalog_vectors(bundle: Any, dataset: Dataset) -> tuple[np.ndarray, Any]:
    """Item vectors in ``dataset.items`` order and an HNSW index over them, as the bundle
    serves that catalog. The bundle's own catalog: its vectors and index. Another one (the
    live catalog, after upserts and deletes): the bundle's vector where an item's text is
    unchanged, the bundle's encoder on the text otherwise (what recall does on an upsert),
    and a fresh index with the bundle's HNSW parameters."""
    import hnswlib

    from recstack.models.encoder import TextEncoder
    from recstack.models.ort import SessionOptions

    spec = bundle.section("index")
    stored = np.load(bundle.path(bundle.section("items")["vectors"]), allow_pickle=False)
    catalog = list(bundle.iter_catalog())
    index = hnswlib.Index(space="ip", dim=bundle.dim)
    if [(c.id, c.text) for c in catalog] == [(it.id, it.text) for it in dataset.items]:
        index.load_index(str(bundle.path(spec["path"])))
        index.set_ef(int(spec["ef_search"]))
        return stored, index
    row = {(c.id, c.text): n for n, c in enumerate(catalog)}
    vecs = np.zeros((len(dataset.items), bundle.dim), np.float32)
    fresh = []
    for n, it in enumerate(dataset.items):
        if (it.id, it.text) in row:
            vecs[n] = stored[row[(it.id, it.text)]]
        else:
            fresh.append(n)
    if fresh:
        encoder = TextEncoder(bundle, SessionOptions(device="cpu"))
        vecs[fresh] = ev.encode_texts(encoder, [dataset.items[n].text for n in fresh], bundle.dim)
    index.init_index(
        max_elements=len(vecs),
        M=int(spec["M"]),
        ef_construction=int(spec["ef_construction"]),
        random_seed=0,
    )
    index.add_items(vecs, np.arange(len(vecs)), num_threads=1)
    index.set_ef(int(spec["ef_search"]))
    return vecs, index


def evaluate_bundle_on_future(
    bundle_root: Path,
    dataset: Dataset,
    cut: int,
    recent_days: int,
    arrays: dict[str, dict[str, np.ndarray]] | None = None,
    lists: dict[str, list[list[str]]] | None = None,
) -> dict[str, Any]:
    """Served path (tower → HNSW → ranker, as ``training.evaluate`` runs it), recall only,
    all-time and recent popularity on the future cases, with intervals and paired
    differences (per-user values into ``arrays``, the served lists into ``lists`` when
    given). The bundle serves
    ``dataset``'s catalog (:func:`catalog_vectors`)."""
    from recstack.core.bundle import Bundle
    from recstack.core.features import load_recent_top
    from recstack.models.ort import SessionOptions, create_session
    from recstack.models.user_tower import UserTower
    from training.recency import RecentCounts

    bundle = Bundle.open(bundle_root)
    options = SessionOptions(device="cpu")
    tower = UserTower(bundle, options)
    ranker, _ = create_session(bundle.path(bundle.section("ranker")["model"]), options)
    item_vecs, index = catalog_vectors(bundle, dataset)
    item_ids = [it.id for it in dataset.items]
    item_index = dataset.item_index

    cases = future_cases(dataset, cut)
    before = past(dataset, cut)
    counts = popularity(before)
    uv = ev.user_vectors(tower, cases, item_vecs, item_index)
    arrays = {} if arrays is None else arrays
    rerank_n = int(bundle.manifest["training"]["rerank_n"])
    # Recency at the cut from the whole dataset: only interactions before it count.
    recent = RecentCounts(dataset).at(cut)
    # The recent-popularity candidates the bundle serves (as of its data's end, just
    # before the cut): exactly what a request at the cut gets.
    top = load_recent_top(bundle)
    res: dict[str, Any] = ev.evaluate_pipelines(
        cases,
        uv,
        item_ids,
        item_vecs,
        index,
        ranker,
        rerank_n,
        counts,
        arrays,
        tower.max_len,
        lambda _time: recent,
        (lambda _time: top) if top else None,
        lists,
        tuple(bundle.section("ranker").get("side_features", ())),
    )
    order = _order(counts, item_ids)
    targets: list[str | None] = [c.target for c in cases]
    for name, pop in (
        ("popularity_all_time", counts),
        ("popularity_recent", popularity(before, since=cut - recent_days * DAY_S)),
    ):
        res[name], arrays[name] = ev.with_intervals(
            popularity_lists(pop, order, cases, 20), targets
        )
    res["paired"] = {
        f"ranked_vs_{other}": {
            m: ev.paired_difference(arrays["ranked"][m], arrays[other][m])
            for m in ("ndcg@10", "recall@20")
        }
        for other in ("hnsw", "popularity_all_time", "popularity_recent")
    }
    res["users"] = len(cases)
    res["recent_candidates"] = len(top)
    return res


def run_time_split(
    data_dir: Path,
    out_root: Path,
    profile: str,
    seed: int,
    test_fraction: float = 0.1,
    valid_fraction: float = 0.1,
    progress: bool = True,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """Build a bundle from the past (``out_root/<version>``), evaluate it on the future,
    write ``out_root/timesplit.json`` and return the report."""
    from training.pipeline import build_bundle

    dataset = load_dataset(data_dir, name=dataset_name)
    test_cut = cut_time(dataset, 1.0 - test_fraction)
    valid_cut = cut_time(dataset, 1.0 - test_fraction - valid_fraction)
    recent_days, curve = choose_recent_window(dataset, valid_cut, test_cut, RECENT_WINDOWS_DAYS)
    with tempfile.TemporaryDirectory(prefix="timesplit-past-") as tmp:
        past_dir = write_dataset(Path(tmp), dataset.items, past(dataset, test_cut))
        root = build_bundle(
            past_dir,
            out_root,
            profile=profile,
            seed=seed,
            progress=progress,
            dataset_name=f"{dataset.name}-before-{test_cut}",
        )
    results = evaluate_bundle_on_future(root, dataset, test_cut, recent_days)
    report = {
        "protocol": (
            "global time split: bundle trained on interactions before the cut; each user "
            "with a history before it is asked for their first new item after it (history "
            "excluded, full catalog); baselines from the past only; 95% bootstrap intervals"
        ),
        "test_cut": test_cut,
        "valid_cut": valid_cut,
        "test_fraction": test_fraction,
        "recent_window_days": recent_days,
        "recent_window_valid_ndcg@10": curve,
        "bundle": str(root),
        "profile": profile,
        "seed": seed,
        "results": results,
    }
    (out_root / "timesplit.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
