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

A second protocol on the same past-only bundle, the **stream** (:func:`stream_cases`):
every interaction after ``T`` whose item is new to its user is one request, asked at its
own time with everything the user did before it as history (the events the gateway has
recorded since the cut included), as the bundle would serve the weeks until the next one.
It is GRU4Rec's protocol (time split, every next event of the test period) and holds
~100x more requests than the first-item protocol; metrics are averaged per user, then over
users, so intervals stay over users. The served path keeps the bundle's recency (as of
its data's end, what serving has); baselines: popularity frozen at ``T`` (the same
information), popularity counted live at each request (more information than the served
path has), all-time popularity; each window chosen on the validation cut's stream.

``python -m training timesplit`` runs both and writes ``timesplit.json`` (with 95% bootstrap
intervals and paired differences over users) and ``timesplit.png`` next to the bundle it
built.
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


def stream_cases(dataset: Dataset, cut: int, until: int | None = None) -> list[ev.EvalCase]:
    """Every request after the cut as serving meets it: one case per interaction at or
    after ``cut`` (before ``until`` when given) whose item is new to its user and who has
    an earlier interaction, with **all** those earlier interactions as history (before the
    cut from the bundle's data, after it what the gateway has recorded since), asked at the
    interaction's own time. Users first seen after the cut count from their second
    interaction (the first has nothing to recommend from but popularity)."""
    cases = []
    for user in sorted(dataset.user_interactions):
        seq = dataset.user_interactions[user]
        for n in range(1, len(seq)):
            x = seq[n]
            if until is not None and x.timestamp >= until:
                break
            if x.timestamp < cut:
                continue
            before = [y.item_id for y in seq[:n]]
            seen = set(before)
            if x.item_id in seen:
                continue
            cases.append(
                ev.EvalCase(
                    user, before, seen, x.item_id, time=x.timestamp, last_time=seq[n - 1].timestamp
                )
            )
    return cases


def user_means(values: np.ndarray, cases: Sequence[ev.EvalCase]) -> np.ndarray:
    """Per user (sorted by id) the mean of ``values`` over their cases: every user weighs
    the same however many requests they made, so intervals and paired differences over
    these are over users, as in the other protocols."""
    users = sorted({c.user_id for c in cases})
    at = {u: n for n, u in enumerate(users)}
    which = np.asarray([at[c.user_id] for c in cases], np.int64)
    sums = np.bincount(which, weights=np.asarray(values, np.float64), minlength=len(users))
    return sums / np.bincount(which, minlength=len(users))


def over_users(
    lists: Sequence[Sequence[str]], cases: Sequence[ev.EvalCase], seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """NDCG@10 and Recall@20 averaged per user then over users, with 95% bootstrap
    intervals over users, the per-request (micro) averages, and the per-user arrays."""
    targets: list[str | None] = [c.target for c in cases]
    arrays: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {}
    for name, k, kind in (("ndcg@10", 10, "ndcg"), ("recall@20", 20, "recall")):
        per_case = ev.per_user(lists, targets, k, kind)
        arrays[name] = user_means(per_case, cases)
        out[name] = float(arrays[name].mean()) if len(arrays[name]) else 0.0
        out[f"{name}_per_request"] = float(per_case.mean()) if len(per_case) else 0.0
    out["ci95"] = {name: ev.bootstrap_ci(v, seed) for name, v in arrays.items()}
    return out, arrays


def live_popularity_lists(
    dataset: Dataset, window_days: int, order: Sequence[str], cases: Sequence[ev.EvalCase], k: int
) -> list[list[str]]:
    """Top-``k`` unseen items by interactions in the ``window_days`` before each case's own
    time (counts that move with the stream; ties: ``order``)."""
    from training.recency import RecentCounts

    rec = RecentCounts(dataset, windows_s=(window_days * DAY_S,))
    item_ids = [it.id for it in dataset.items]
    tie = np.empty(len(item_ids), np.int64)
    tie[[dataset.item_index[i] for i in order]] = np.arange(len(order))
    out = []
    for c in cases:
        counts = rec.at(c.time)[:, 0]
        ranked = [item_ids[int(j)] for j in np.lexsort((tie, -counts))]
        out += ev.unseen_lists(ranked, [c], k)
    return out


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


@dataclass
class PastBundle:
    """A past-only bundle loaded once, as the evaluation serves it over a dataset's
    catalog (:func:`catalog_vectors`), to run the served path on any set of cases."""

    tower: Any
    ranker: Any
    item_ids: list[str]
    item_vecs: np.ndarray
    index: Any
    rerank_n: int
    top: list[str]
    recent_window_s: int
    side_features: tuple[str, ...]

    @classmethod
    def open(cls, root: Path, dataset: Dataset) -> PastBundle:
        from recstack.core.bundle import Bundle
        from recstack.core.features import load_recent_top
        from recstack.models.ort import SessionOptions, create_session
        from recstack.models.user_tower import UserTower

        bundle = Bundle.open(root)
        options = SessionOptions(device="cpu")
        ranker, _ = create_session(bundle.path(bundle.section("ranker")["model"]), options)
        item_vecs, index = catalog_vectors(bundle, dataset)
        spec = bundle.section("items").get("recent_top") or {}
        return cls(
            UserTower(bundle, options),
            ranker,
            [it.id for it in dataset.items],
            item_vecs,
            index,
            int(bundle.manifest["training"]["rerank_n"]),
            load_recent_top(bundle),
            int(spec.get("window_s", 0)),
            tuple(bundle.section("ranker").get("side_features", ())),
        )

    def user_vectors(self, dataset: Dataset, cases: Sequence[ev.EvalCase]) -> np.ndarray:
        """The served user vectors of ``cases`` (the tower over their histories)."""
        return ev.user_vectors(self.tower, cases, self.item_vecs, dataset.item_index)

    def run(
        self,
        cases: Sequence[ev.EvalCase],
        user_vecs: np.ndarray,
        counts: Counter[str],
        recency: Any,
        recent_top: Any,
        arrays: dict[str, dict[str, np.ndarray]],
        lists: dict[str, list[list[str]]] | None = None,
    ) -> dict[str, Any]:
        """Served path (tower → HNSW → ranker, as ``training.evaluate`` runs it) and recall
        only on ``cases`` from their :meth:`user_vectors`; ``recency(time)`` /
        ``recent_top(time)`` as :func:`training.evaluate.evaluate_pipelines` takes them."""
        return ev.evaluate_pipelines(
            cases,
            user_vecs,
            self.item_ids,
            self.item_vecs,
            self.index,
            self.ranker,
            self.rerank_n,
            counts,
            arrays,
            self.tower.max_len,
            recency,
            recent_top if self.top else None,
            lists,
            self.side_features,
        )


def evaluate_bundle_on_future(
    bundle_root: Path,
    dataset: Dataset,
    cut: int,
    recent_days: int,
    arrays: dict[str, dict[str, np.ndarray]] | None = None,
    lists: dict[str, list[list[str]]] | None = None,
    past_bundle: PastBundle | None = None,
) -> dict[str, Any]:
    """Served path, recall only, all-time and recent popularity on the future cases
    (:func:`future_cases`), with intervals and paired differences (per-user values into
    ``arrays``, the served lists into ``lists`` when given). The bundle serves
    ``dataset``'s catalog (:func:`catalog_vectors`); ``past_bundle``: it already opened
    (else it is opened from ``bundle_root``)."""
    from training.recency import RecentCounts

    served = past_bundle or PastBundle.open(bundle_root, dataset)
    cases = future_cases(dataset, cut)
    before = past(dataset, cut)
    counts = popularity(before)
    arrays = {} if arrays is None else arrays
    # Recency at the cut from the whole dataset: only interactions before it count.
    recent = RecentCounts(dataset).at(cut)
    # The recent-popularity candidates the bundle serves (as of its data's end, just
    # before the cut): exactly what a request at the cut gets.
    uv = served.user_vectors(dataset, cases)
    res = served.run(cases, uv, counts, lambda _t: recent, lambda _t: served.top, arrays, lists)
    order = _order(counts, served.item_ids)
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
    res["recent_candidates"] = len(served.top)
    return res


def choose_stream_windows(
    dataset: Dataset, valid_cut: int, test_cut: int, windows_days: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Recent popularity's window for the stream protocol, chosen on the validation
    cut's stream (``[valid_cut, test_cut)``, NDCG@10 over users) for each kind: counts
    frozen at the cut (``frozen``) and counts at each request's time (``live``)."""
    cases = stream_cases(dataset, valid_cut, until=test_cut)
    if not cases:
        raise DataError("no validation requests between the validation and test cuts")
    before = past(dataset, valid_cut)
    order = _order(popularity(before), [it.id for it in dataset.items])
    curves: dict[str, list[tuple[int, float]]] = {"frozen": [], "live": []}
    for days in windows_days:
        frozen = popularity_lists(
            popularity(before, since=valid_cut - days * DAY_S), order, cases, 10
        )
        live = live_popularity_lists(dataset, days, order, cases, 10)
        for kind, lists in (("frozen", frozen), ("live", live)):
            curves[kind].append((days, over_users(lists, cases)[0]["ndcg@10"]))
    return {
        kind: {"days": max(curve, key=lambda dc: (dc[1], -dc[0]))[0], "valid_ndcg@10": curve}
        for kind, curve in curves.items()
    }


def evaluate_bundle_on_stream(
    served: PastBundle, dataset: Dataset, cut: int, windows: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The stream protocol (:func:`stream_cases`): every request after the cut, the
    past-only bundle serving with the history the gateway has recorded by then and its
    recency as of its data's end (what serving does until the next bundle); also the
    served path with recency counted at each request (what live counts would add, not
    what serving does today), recall only, and popularity from counts frozen at the cut,
    live counts, and all time. Metrics are averaged per user, then over users."""
    from training.recency import RecentCounts

    cases = stream_cases(dataset, cut)
    if not cases:
        raise DataError("no requests after the cut")
    before = past(dataset, cut)
    counts = popularity(before)
    rec = RecentCounts(dataset)
    frozen = rec.at(cut)
    row_ids = served.item_ids
    runs: dict[str, list[list[str]]] = {}
    lists: dict[str, list[list[str]]] = {}
    # One set of user vectors for both served runs: only the recency they see differs.
    uv = served.user_vectors(dataset, cases)
    served.run(cases, uv, counts, lambda _t: frozen, lambda _t: served.top, {}, lists)
    runs["ranked"], runs["hnsw"] = lists["ranked"], lists["hnsw"]
    live: dict[str, list[list[str]]] = {}
    count = len(served.top)
    served.run(
        cases,
        uv,
        counts,
        rec.at,
        lambda t: [row_ids[r] for r in rec.top(t, served.recent_window_s, count)],
        {},
        live,
    )
    runs["ranked_live_recency"] = live["ranked"]
    order = _order(counts, row_ids)
    runs["popularity_all_time"] = popularity_lists(counts, order, cases, 20)
    runs["popularity_recent_frozen"] = popularity_lists(
        popularity(before, since=cut - windows["frozen"]["days"] * DAY_S), order, cases, 20
    )
    runs["popularity_recent_live"] = live_popularity_lists(
        dataset, windows["live"]["days"], order, cases, 20
    )
    res: dict[str, Any] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name, got in runs.items():
        res[name], arrays[name] = over_users(got, cases)
    res["paired"] = {
        f"{a}_vs_{b}": {
            m: ev.paired_difference(arrays[a][m], arrays[b][m]) for m in ("ndcg@10", "recall@20")
        }
        for a, b in (
            ("ranked", "hnsw"),
            ("ranked", "popularity_all_time"),
            ("ranked", "popularity_recent_frozen"),
            ("ranked", "popularity_recent_live"),
            ("ranked_live_recency", "ranked"),
            ("ranked_live_recency", "popularity_recent_live"),
        )
    }
    users = sorted({c.user_id for c in cases})
    had = {x.user_id for x in before}
    known = np.asarray([u in had for u in users])
    # The same comparisons over each group of users alone: those the bundle knew (history
    # before the cut) and those who arrived after it (the gateway's recorded events only).
    res["by_users"] = {
        group: {
            "users": int(mask.sum()),
            **{
                f"{a}_vs_{b}": ev.paired_difference(
                    arrays[a]["ndcg@10"][mask], arrays[b]["ndcg@10"][mask]
                )
                for a, b in (("ranked", "hnsw"), ("ranked", "popularity_recent_frozen"))
            },
            "ndcg@10": {n: float(arrays[n]["ndcg@10"][mask].mean()) for n in runs},
        }
        for group, mask in (("known_before_cut", known), ("new_after_cut", ~known))
        if mask.any()
    }
    # Items nobody had touched before the cut (first seen after it): how often they are
    # the target, and how often each pipeline finds or shows them.
    fresh = {i for i in row_ids if counts.get(i, 0) == 0}
    on_fresh = [n for n, c in enumerate(cases) if c.target in fresh]
    res["new_items"] = {
        "items": len(fresh),
        "target_requests": len(on_fresh),
        **{
            name: {
                "hits@20": sum(cases[n].target in got[n][:20] for n in on_fresh),
                "requests_showing_one@10": sum(any(i in fresh for i in g[:10]) for g in got),
            }
            for name, got in runs.items()
        },
    }
    res["users"] = len(users)
    res["requests"] = len(cases)
    res["windows"] = windows
    return res


FIRST_ITEM_BARS: tuple[tuple[str, str], ...] = (
    ("ranked", "served"),
    ("hnsw", "recall only"),
    ("popularity_recent", "recent\npopularity"),
    ("popularity_all_time", "all-time\npopularity"),
)
STREAM_BARS: tuple[tuple[str, str], ...] = (
    ("ranked", "served"),
    ("ranked_live_recency", "served,\nlive recency"),
    ("hnsw", "recall only"),
    ("popularity_recent_frozen", "recent pop.\nat the cut"),
    ("popularity_recent_live", "recent pop.\nlive"),
    ("popularity_all_time", "all-time\npopularity"),
)


def write_plot(path: Path, report: dict[str, Any]) -> Path:
    """``timesplit.png``: NDCG@10 with 95% intervals of every pipeline and baseline, the
    first-item protocol and the stream side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            f"first new item after the cut ({report['results']['users']} users)",
            report["results"],
            FIRST_ITEM_BARS,
        ),
    ]
    if "stream" in report:
        st = report["stream"]
        panels.append(
            (
                f"stream: every request after the cut\n({st['requests']} requests, "
                f"{st['users']} users; mean per user)",
                st,
                STREAM_BARS,
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, res, bars) in zip(axes[0], panels, strict=True):
        shown = [(label, res[name]) for name, label in bars if name in res]
        values = [m["ndcg@10"] for _, m in shown]
        err = np.asarray(
            [
                [v - m["ci95"]["ndcg@10"][0], m["ci95"]["ndcg@10"][1] - v]
                for v, (_, m) in zip(values, shown, strict=True)
            ]
        ).T
        colors = ["tab:blue" if label.startswith("served") else "tab:gray" for label, _ in shown]
        ax.bar(range(len(shown)), values, yerr=err, capsize=3, color=colors)
        ax.set_xticks(range(len(shown)), [label for label, _ in shown], fontsize=8)
        ax.set(title=title, ylabel="NDCG@10 (95% interval over users)")
    fig.suptitle("global time split: trained before the cut, asked about after it")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


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
    served = PastBundle.open(root, dataset)
    results = evaluate_bundle_on_future(root, dataset, test_cut, recent_days, past_bundle=served)
    stream = evaluate_bundle_on_stream(
        served,
        dataset,
        test_cut,
        choose_stream_windows(dataset, valid_cut, test_cut, RECENT_WINDOWS_DAYS),
    )
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
        "stream": stream,
    }
    (out_root / "timesplit.json").write_text(json.dumps(report, indent=2) + "\n")
    write_plot(out_root / "timesplit.png", report)
    return report
