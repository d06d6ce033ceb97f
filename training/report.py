"""Cold-start measurements and the PNG plots of the training report.

Cold items: a seeded ``fraction`` of the items that some user holds out (validation or
test), so that there are users who "later interacted with them". Every interaction with
them is removed from the tower's training sequences, they are left out of its softmax's
catalog (unknown then: neither positives nor negatives), and the tower and head are
re-trained on what is left for the warm model's chosen number of epochs. The items then
enter the catalog by their text alone (the cold model's encoder head over their text);
for each held-out event on a cold item the cold model's user vector ranks the full catalog
(input history excluded) and we count Recall@20 of that item, next to the random
expectation ``20 / (catalog - history)`` and to the same events under the warm model.
The figure depends on which items are drawn more than on the users, so its 95% intervals
resample cold items (all of an item's events together), and it is also given for disjoint
draws of the cold set (``cold_draw_fraction`` of the catalog each, the one-draw size the
protocol once used) to show how far one draw can move it.

Query-only users: every test user is served as if new, from a short query, with nothing
excluded, in two protocols (``training.evaluate.QUERY_KINDS``): ``query_users``, the
genre they watched most in train (``metadata.genres`` or ``metadata.topic``: a stated
taste), and ``search_users``, one of their test item's own genres (a search: the text says
what is wanted). The served path: the query's vector blended with the prior, HNSW top-N,
then the ranker (history length 0) over every candidate, that order fused with the recent
popularity at the request's time (the build's ``query_recent_weight``, as the gateway does);
Recall@20 / NDCG@10 of their test item vs most popular, recent popularity (the items most
interacted with in the window before each request), the query genre's most popular (the
metadata baseline: it reads genre labels the served path never sees) and random, and how
far the lists differ between queries.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training import evaluate as ev
from training.data import Dataset, Split


def cold_start(
    dataset: Dataset,
    split: Split,
    prof: Any,
    body_items: np.ndarray,
    served_encoder: Any,
    served_items: np.ndarray,
    tower: Any,
    index: Any,
    ranker: Any,
    epochs: int,
    seed: int,
    progress: bool = False,
    k: int = 20,
    encoder_top: Any = None,
    recency: Any = None,
    recent_top: Any = None,
    query_recent_weight: float = 0.0,
) -> dict[str, Any]:
    from training.pipeline import _train_rows
    from training.tower import make_windows, train_tower, user_vectors

    item_ids = [it.id for it in dataset.items]
    n = len(item_ids)
    held = sorted({*split.valid.values(), *split.test.values()})
    rng = random.Random(seed)
    n_cold = max(1, round(prof.cold_fraction * n))
    cold_ids_sorted = sorted(rng.sample(held, min(n_cold, len(held))))
    cold_ids = set(cold_ids_sorted)
    cold_idx = {dataset.item_index[i] for i in cold_ids}

    rows = [
        [r for r in seq if r not in cold_idx]
        for seq in _train_rows(dataset, split, prof.ranker_holdout)
    ]
    windows = make_windows(rows, prof.tower.max_len)
    catalog = np.asarray([j for j in range(n) if j not in cold_idx], dtype=np.int64)
    result: dict[str, Any] = {
        "cold_items": len(cold_ids),
        "train_sequences": len(windows.inputs),
    }
    if len(windows.inputs):
        cold = train_tower(
            body_items,
            windows,
            # The encoder joins after the same share of the (shorter) run as in the build.
            replace(
                prof.tower,
                epochs=max(1, epochs),
                finetune_start=prof.tower.finetune_start * max(1, epochs) // prof.tower.epochs,
            ),
            seed=seed,
            catalog=catalog,
            progress=progress,
            encoder_top=encoder_top,
        )
        # Held-out events on cold items: (history before it, target).
        cases: list[ev.EvalCase] = []
        for user in sorted(split.test):
            for phase, target in (("valid", split.valid[user]), ("test", split.test[user])):
                if target not in cold_ids:
                    continue
                before = list(split.train[user]) + ([split.valid[user]] if phase == "test" else [])
                cases.append(ev.case_at(dataset, user, before, target))
        result["events"] = len(cases)
        if cases:
            targets: list[str | None] = [c.target for c in cases]
            hist_rows = [[dataset.item_index[i] for i in c.history] for c in cases]
            cold_users = user_vectors(cold.model, hist_rows, cold.item_vectors)
            cold_lists = ev.exact_lists(cold_users, cold.item_vectors, cases, item_ids, k)
            warm_users = ev.user_vectors(tower, cases, served_items, dataset.item_index)
            warm_lists = ev.exact_lists(warm_users, served_items, cases, item_ids, k)
            hits = ev.per_user(cold_lists, targets, k, "recall")
            warm_hits = ev.per_user(warm_lists, targets, k, "recall")
            chance = np.asarray([k / (n - len(c.seen)) for c in cases])
            ones = np.ones(len(cases))
            item_of = [c.target for c in cases]
            result["recall@20_cold_model"] = float(hits.mean())
            result["recall@20_warm_model"] = float(warm_hits.mean())
            result["recall@20_random"] = float(chance.mean())
            result["recall@20_x_random"] = float(hits.sum() / max(chance.sum(), 1e-12))
            # Intervals over the cold *items* (each item's events resampled together).
            result["ci95_over_items"] = {
                "recall@20_cold_model": ev.group_bootstrap_ratio(hits, ones, item_of, seed),
                "recall@20_warm_model": ev.group_bootstrap_ratio(warm_hits, ones, item_of, seed),
                "recall@20_x_random": ev.group_bootstrap_ratio(hits, chance, item_of, seed),
            }
            # The same figure for disjoint draws of the cold set, each the size the
            # protocol used before (``cold_draw_fraction`` of the catalog): how much one
            # draw's figure says about the model (their spread) and about the draw.
            order = list(cold_ids_sorted)
            random.Random(seed + 1).shuffle(order)
            per_draw = max(1, round(prof.cold_draw_fraction * n))
            draws = []
            for start in range(0, len(order) - per_draw + 1, per_draw):
                members = set(order[start : start + per_draw])
                sel = np.asarray([t in members for t in item_of])
                if sel.any():
                    draws.append(
                        {
                            "items": len(members),
                            "events": int(sel.sum()),
                            "recall@20_x_random": float(hits[sel].sum() / chance[sel].sum()),
                        }
                    )
            result["draws"] = draws
            # How often a cold item shows up at all in the top-20 of users (exposure).
            result["cold_share_of_top20"] = float(
                np.mean([sum(i in cold_ids for i in lst) / max(1, len(lst)) for lst in cold_lists])
            )

    # Query-only users, per protocol: "query_users" (taste) and "search_users" (search).
    for kind, key in (("taste", "query_users"), ("search", "search_users")):
        q_cases = ev.query_cases(dataset, split, "test", kind)
        if q_cases:
            result[key] = _query_users(
                dataset,
                split,
                q_cases,
                served_encoder,
                served_items,
                tower,
                index,
                ranker,
                prof,
                recency,
                recent_top,
                query_recent_weight,
                k,
            )
    return result


def _query_users(
    dataset: Dataset,
    split: Split,
    q_cases: list[ev.EvalCase],
    served_encoder: Any,
    served_items: np.ndarray,
    tower: Any,
    index: Any,
    ranker: Any,
    prof: Any,
    recency: Any,
    recent_top: Any,
    query_recent_weight: float,
    k: int,
) -> dict[str, Any]:
    """The served query-only path's test metrics for ``q_cases`` next to most popular, the
    genre's most popular (the metadata baseline) and random, with paired differences."""
    item_ids = [it.id for it in dataset.items]
    qv = ev.encode_texts(served_encoder, [c.query for c in q_cases], served_items.shape[1])
    q_targets: list[str | None] = [c.target for c in q_cases]
    served, ranked = ev.served_query_only(
        q_cases,
        qv,
        tower,
        item_ids,
        served_items,
        dataset.item_index,
        index,
        ranker,
        prof.rerank_n,
        ev.input_counts(split, "test"),
        prof.tower.max_len,
        recency,
        recent_top,
    )
    # What the gateway serves them: the ranker's order fused with recent popularity.
    fused = ev.fused_query_lists(ranked, q_cases, recent_top, query_recent_weight, k)
    model, model_arrays = ev.with_intervals(fused, q_targets)
    pop = ev.popularity_order(split, "test")[:k]
    pop_m, pop_arrays = ev.with_intervals([pop] * len(q_cases), q_targets)
    genre_m, genre_arrays = ev.with_intervals(
        ev.genre_popular_lists(dataset, split, q_cases, "test", k), q_targets
    )
    baselines = {"most_popular": pop_arrays, "genre_popular": genre_arrays}
    if recent_top is not None:
        recent_m, baselines["recent_popular"] = ev.with_intervals(
            [list(recent_top(c.time))[:k] for c in q_cases], q_targets
        )
    keys = ("recall@20", "ndcg@10", "ci95")
    # How much the text moves the list: the mean share of a served top-10 that is not
    # in the top-10 most users get (1: every query gets its own list, 0: one list for all).
    top10 = Counter(tuple(lst[:10]) for lst in fused).most_common(1)[0][0] if fused else ()
    return {
        "users": len(q_cases),
        "example_query": q_cases[0].query,
        "distinct_queries": len({c.query for c in q_cases}),
        "top10_differs_from_commonest": float(
            np.mean([len(set(lst[:10]) - set(top10)) / 10 for lst in fused])
        ),
        "model": {m: model[m] for m in keys},
        "ranker_only": {m: served["ranked"][m] for m in keys},
        "recall_only": {m: served["hnsw"][m] for m in keys},
        "most_popular": {m: pop_m[m] for m in keys},
        "genre_popular": {m: genre_m[m] for m in keys},
        **({"recent_popular": {m: recent_m[m] for m in keys}} if recent_top is not None else {}),
        **{
            f"model_vs_{name}": {
                m: ev.paired_difference(model_arrays[m], arrays[m])
                for m in ("recall@20", "ndcg@10")
            }
            for name, arrays in baselines.items()
        },
        "query_prior_weight": tower.query_prior_weight,
        "query_recent_weight": query_recent_weight,
        "random": {"recall@20": k / len(item_ids)},
    }


def write_plots(out_dir: Path, report: dict[str, Any]) -> list[Path]:
    """loss_curves.png, metrics.png (test, every pipeline and baseline), cold_start.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    losses = report["losses"]
    panels = [(n, v) for n, v in losses.items() if v]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    labels = {
        "tower": ("user tower + head + encoder top, full-catalog softmax", "epoch"),
        "ranker": ("ranker, listwise softmax over recall's top-N", "epoch"),
    }
    for ax, (name, values) in zip(axes[0], panels, strict=True):
        title, xl = labels.get(name, (name, "step"))
        ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) < 50 else None)
        ax.set(title=title, xlabel=xl, ylabel="train loss")
    fig.tight_layout()
    paths.append(out_dir / "loss_curves.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    test = report["results"]["test"]
    names = [n for n in ("ranked", "hnsw", "exact", "zero_shot", "most_popular") if n in test]
    shown = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    x = np.arange(len(shown))
    for j, name in enumerate(names):
        ax.bar(x + j * width, [test[name][m] for m in shown], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, shown)
    ax.set(title=f"test split, {test['users']} users, full-catalog ranking", ylabel="value")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "metrics.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    cold = report["cold_start"]
    # (label, value, 95% interval or None): cold items' intervals are over items,
    # query-only users' over users.
    bars: list[tuple[str, float, list[float] | None]] = []
    if "recall@20_cold_model" in cold:
        over_items = cold.get("ci95_over_items", {})
        bars += [
            (
                "cold items:\nwarm model",
                cold["recall@20_warm_model"],
                over_items.get("recall@20_warm_model"),
            ),
            (
                "cold items:\ntext only",
                cold["recall@20_cold_model"],
                over_items.get("recall@20_cold_model"),
            ),
            ("cold items:\nrandom", cold["recall@20_random"], None),
        ]
    for key, label in (("query_users", "taste query"), ("search_users", "search query")):
        if key in cold:
            q = cold[key]
            bars += [
                (
                    f"{label}:\n{name.replace('_', ' ')}",
                    q[name]["recall@20"],
                    q[name]["ci95"]["recall@20"],
                )
                for name in ("model", "most_popular", "recent_popular", "genre_popular")
                if name in q
            ]
            bars.append((f"{label}:\nrandom", q["random"]["recall@20"], None))
    fig, ax = plt.subplots(figsize=(14, 3.8))
    if bars:
        values = [b[1] for b in bars]
        err = np.asarray([[v - ci[0], ci[1] - v] if ci else [0.0, 0.0] for _, v, ci in bars]).T
        ax.bar(range(len(bars)), values, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set(title="cold start: Recall@20 (95% intervals)", ylabel="Recall@20")
    fig.tight_layout()
    paths.append(out_dir / "cold_start.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def summary_rows(results: dict[str, Any], names: Sequence[str]) -> list[str]:
    """Markdown table rows of ``names`` (pipelines/baselines) over ``ev.METRIC_NAMES``."""
    rows = []
    for name in names:
        if name in results:
            vals = " | ".join(f"{results[name][m]:.4f}" for m in ev.METRIC_NAMES)
            rows.append(f"| {name} | {vals} |")
    return rows
