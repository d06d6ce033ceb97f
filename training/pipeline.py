"""End to end: data -> encoder -> item vectors -> user tower -> ranker -> ONNX -> bundle.

Model v2 (docs/model-quality.md):

1. **Item vectors**: MiniLM (mean pooling) plus a linear projection head, over each item's
   text; computed once per item (here for the catalog, by the recall service for upserts).
2. **User tower** (:mod:`training.tower`): a small causal transformer over the vectors of
   the user's recent items, trained jointly with the head by full-catalog softmax at every
   position of every train sequence; early-stopped on validation NDCG@10.
3. **Ranker** (:mod:`training.ranker`): listwise over recall's top-N candidates with side
   features (:mod:`recstack.core.features`), at train positions the tower was not trained on.

Every vector in the bundle is computed by the *serving* code (:class:`TextEncoder`,
:class:`recstack.models.user_tower.UserTower` over the exported ONNX models), not by torch, so the
index holds exactly what the recall service computes; parity checks tie each ONNX model
to its torch model (encoder and tower 1e-4, ranker 1e-5).

A bundle is assembled in ``out_root/.<version>.tmp``, sealed with
:func:`recstack.core.bundle.write_manifest` (sha256 of every file), renamed to
``out_root/<version>`` and only then published by atomically replacing ``out_root/CURRENT``.
A crash at any point leaves the previous CURRENT bundle untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recstack.core.bundle import Bundle, point_current, write_manifest
from recstack.core.features import (
    DAY_S,
    QUERY_RECENT_WEIGHTS,
    RANKER_FEATURES,
    RECENCY_WINDOWS_S,
    candidate_features,
    history_similarities,
)
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions, create_session
from recstack.models.user_tower import UserTower
from training import evaluate as ev
from training.base_encoder import BASE_MODEL_NAME
from training.data import DataError, Dataset, Split, leave_last_out, load_dataset
from training.ranker import (
    FEATURES_INPUT,
    FUSION,
    INPUTS,
    OUTPUT,
    RankerConfig,
    RankerLists,
    check_ranker_parity,
    export_ranker,
    train_ranker,
)
from training.recency import RecentCounts
from training.tower import HISTORY_INPUT, MASK_INPUT, USER_OUTPUT, TowerConfig

DIM = 384
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 64
EVAL_K = 10
RERANK_N = 100
RECENT_COUNTS = "items/recent.npy"
RECENT_TOP = "items/recent_top.json"
# The build's evaluation and choices (what `python -m training compare` and the learning
# loop's refit read back).
REPORT = "report/report.json"


@dataclass(frozen=True)
class Profile:
    """How much work a build does; ``tiny`` is for tests, ``quick`` for a few minutes' run."""

    name: str
    max_length: int = 128  # encoder tokens per item text
    # User tower + the encoder's projection head + its fine-tuned top layers.
    tower: TowerConfig = field(default_factory=TowerConfig)
    validate_every: int = 5
    # The cold-start protocol re-trains the tower without the cold items: for this many
    # epochs (at most the warm model's best), to keep the build inside its time budget.
    cold_epochs: int = 10
    # Tower epochs of a warm-started build (``--warm-start``, training.warm).
    warm_epochs: int = 5
    # Ranker: trained on each user's last ``ranker_holdout`` train positions, which the
    # tower is not trained to predict (their recall scores look like serving's).
    ranker_holdout: int = 3
    # Also a list at every earlier train position that follows a break of more than this
    # many days (a returning user; 0 = none): the last positions are mostly mid-session
    # (3% follow a break of a day or more), so without them the ranker barely sees the
    # since_last_interaction feature vary. The tower did train on those positions, so
    # their recall scores are a little optimistic. Quick, chosen on the time split's
    # validation cut (docs/model-quality.md): NDCG@10 0.0971 without them; 0.1208, 0.1257,
    # **0.1313**, 0.1309 for 0.25, 1, 3, 7 days; leave-last-out validation level for all.
    ranker_returning_days: float = 3.0
    # Query-only lists per user, at the first this many of those last positions
    # (_ranker_lists). Quick, validation query-only users' served Recall@20: 1 list 0.0679,
    # 3 lists 0.0870 (paired +0.0191 (+0.0053 ... +0.0329), better; most popular 0.0700);
    # leave-last-out validation NDCG@10 0.0891 -> 0.0940, no difference.
    ranker_query_lists: int = 3
    # Also search lists at the same positions: the user served as new from one of the
    # next item's genres (``training.evaluate.search_genre``, the "search" protocol), so
    # that the ranker learns the query text can name what is wanted. Taste lists alone
    # teach it to ignore the text (docs/model-quality.md, "Query-only users: two protocols").
    # Quick, validation, mean over 3 ranker seeds: 0 / 1 / 3 lists -> mean of the taste and
    # search protocols' served Recall@20 0.120 / 0.138 / 0.157; history users level.
    ranker_search_lists: int = 3
    # Quick, 6 epochs, validation NDCG@10: hidden (64,) 0.0833 vs (256, 64) 0.0826 — no
    # difference (intervals ~±0.012), so the one at half the training time.
    # Schedule: quick, one tower, ranker seeds 0 / 1 / 2, validation served NDCG@10: 6
    # epochs at lr 1e-3 0.0888 / 0.0953 / 0.0937; 12 at 1e-3 0.0904 / 0.0974 / 0.0942;
    # **12 at 5e-4** 0.0948 / 0.1007 / 0.0966 (higher for every seed, each paired
    # difference inside its interval; query-only mean Recall@20 higher for 2 of 3 seeds;
    # docs/model-quality.md, "a longer ranker"). The slower rate needs the longer schedule.
    ranker_epochs: int = 12
    ranker_lr: float = 5e-4
    ranker_hidden: tuple[int, ...] = (64,)
    # The exported ranker is an exponential moving average of its weights (decay per
    # step; 0 = the last step's). Quick, same tower and trajectory, ranker seeds 0 / 1 / 2,
    # validation served NDCG@10: last weights 0.0948 / 0.1007 / 0.0966, EMA 0.995
    # 0.0979 / 0.0991 / 0.0991, SWA of the second half's epoch ends 0.0974 / 0.0994 /
    # 0.0973: each paired difference inside its interval, EMA the highest mean and a
    # fifth of the seed spread (docs/model-quality.md, "averaged ranker weights").
    ranker_ema: float = 0.995
    rerank_n: int = RERANK_N
    # Recent-popularity candidates: the items most interacted with in the
    # ``recent_window_days`` before each request always join recall's top-``rerank_n``
    # (``recstack.core.features.join_recent``); 0 = recall's candidates alone. Quick,
    # validation served NDCG@10: 0 → 0.0816, 20 → 0.0868, 50 → 0.0789. The window is
    # recent popularity's best on the time split's validation cut (14 days).
    recent_candidates: int = 20
    recent_window_days: int = 14
    parity_texts: int = 16
    # Cold-start protocol (training.report.cold_start): this share of the catalog is held
    # out of one re-trained tower, and its figure is reported with an interval over the
    # cold items and for disjoint draws of ``cold_draw_fraction`` each. One draw of 5% (~83
    # ML-100K items) was the protocol before; its figure moved 6.0x -> 1.86x random with
    # the draw alone (docs/model-quality.md), so one draw cannot decide a 5x goal.
    cold_fraction: float = 0.15
    cold_draw_fraction: float = 0.05
    int8: bool = False


@dataclass(frozen=True)
class Refit:
    """Train on **every** interaction with the choices a held-out run made (the learning
    loop's publish step, ``training.loop``): the tower trains ``tower_epochs`` epochs (the
    held-out run's best) with no validation, new users' prior weight is the held-out run's,
    and no stage that needs held-out items runs (evaluation, cold start, int8). The bundle's
    report carries the held-out run's evaluation (``report["refit"]`` says so) and the gate."""

    tower_epochs: int
    query_prior_weight: float
    held_out_report: dict[str, Any]
    gate: dict[str, Any]


PROFILES: dict[str, Profile] = {
    # Integration tests on the synthetic dataset: exercises every stage in seconds.
    "tiny": Profile(
        "tiny",
        max_length=32,
        tower=TowerConfig(
            max_len=8,
            d_model=32,
            layers=1,
            epochs=6,
            batch_size=32,
            finetune_items=16,
            finetune_start=3,
        ),
        cold_epochs=3,
        warm_epochs=3,
        validate_every=3,
        ranker_holdout=1,
        ranker_epochs=5,
        ranker_lr=1e-3,
        rerank_n=20,
        recent_candidates=5,
        parity_texts=8,
        cold_fraction=0.1,
        int8=True,  # the serving tests cover the int8 query encoder
    ),
    # ML-100K in a few minutes on 2 CPU cores.
    "quick": Profile("quick"),
    # Longer tower training and a larger ranker budget.
    "full": Profile(
        "full",
        tower=TowerConfig(d_model=128, epochs=60, finetune_start=30),
        cold_epochs=30,
        warm_epochs=15,
        ranker_epochs=10,
        ranker_lr=1e-3,
        ranker_hidden=(256, 64),
        parity_texts=64,
    ),
}


def default_version(profile: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{profile}"


class _Timer:
    """Wall seconds per named stage, for the manifest and the progress log."""

    def __init__(self, progress: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str, what: str = "") -> Iterator[None]:
        if self.progress:
            print(f"[build] {name}{f' ({what})' if what else ''} ...", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.progress:
            print(f"[build] {name} done in {self.seconds[name]:.1f}s", flush=True)


def _staging_bundle(root: Path, version: str, sections: dict[str, dict[str, Any]]) -> Bundle:
    """An in-memory Bundle over exported files, so serving classes can load them pre-seal."""
    files: dict[str, dict[str, Any]] = {}
    for spec in sections.values():
        for key in ("model", "tokenizer", "prior"):
            if key in spec:
                files[spec[key]] = {}
    return Bundle(
        root, {"version": version, "dim": DIM, **sections, "files": files}, verify_on_use=False
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _train_rows(dataset: Dataset, split: Split, holdout: int) -> list[list[int]]:
    """Per user (sorted), the item rows the tower trains on: train minus the last
    ``holdout`` items (kept for the ranker), when at least two remain."""
    out = []
    for user in sorted(split.train):
        seq = [dataset.item_index[i] for i in split.train[user]]
        cut = seq[:-holdout] if holdout and len(seq) - holdout >= 2 else seq
        out.append(cut)
    return out


def recent_top_ids(
    recency: RecentCounts, prof: Profile, item_ids: list[str], now: int
) -> list[str]:
    """The profile's recent-popularity candidates of a request at ``now`` (item ids)."""
    rows = recency.top(now, prof.recent_window_days * DAY_S, prof.recent_candidates)
    return [item_ids[r] for r in rows]


def _ranker_lists(
    dataset: Dataset,
    split: Split,
    tower: UserTower,
    item_vecs: np.ndarray,
    index: Any,
    prof: Profile,
    encoder: TextEncoder,
    recency: RecentCounts,
) -> tuple[RankerLists, int]:
    """Listwise examples at each user's last ``ranker_holdout`` train positions and at
    every earlier one that follows a break of more than ``ranker_returning_days`` (a
    returning user), plus query-only lists (the request a new user makes) at the first
    ``ranker_query_lists`` (taste queries) and ``ranker_search_lists`` (search queries) of
    the last positions.

    History = the train items before the position; candidates = the HNSW top-N of the
    served user vector with the history excluded (as recall serves them); features as the
    gateway computes them. A query-only list is the user at one of those positions served
    as new, nothing excluded, from the genre they watched most before it
    (:func:`training.evaluate.top_genre`, the taste protocol) or from one of the next
    item's genres (:func:`training.evaluate.search_genre`, the search protocol): without
    them the ranker never sees ``history_length`` 0 and has no reason to lean on popularity
    there (one per user was too few to learn that regime; three measured better), and with
    taste queries alone it learns to ignore the text. Recency counts are taken at each
    list's own time: its target's, when the user acts (only interactions strictly before it
    count). Returns the lists that contain their target, and how many positions were tried.
    """
    from training import evaluate as ev

    counts = ev.input_counts(split, "valid")
    item_ids = [it.id for it in dataset.items]
    cases, q_cases = [], []
    for user in sorted(split.train):
        seq = split.train[user]
        stamps = [x.timestamp for x in dataset.user_interactions[user]]
        first = max(1, len(seq) - prof.ranker_holdout)
        away = prof.ranker_returning_days * DAY_S
        breaks = [t for t in range(1, first) if 0 < away < stamps[t] - stamps[t - 1]]
        for t in [*breaks, *range(first, len(seq))]:
            cases.append(ev.case_at(dataset, user, list(seq[:t]), seq[t]))
        for t in range(first, len(seq)):
            asked = [
                ev.top_genre(dataset, seq[:t]) if t - first < prof.ranker_query_lists else None,
                ev.search_genre(dataset, user, seq[t])
                if t - first < prof.ranker_search_lists
                else None,
            ]
            q_cases += [
                ev.EvalCase(user, [], set(), seq[t], query=q, time=stamps[t])
                for q in asked
                if q is not None
            ]
    if not cases:
        raise DataError("no ranker training positions (need users with 2+ train items)")
    uv = ev.user_vectors(tower, cases, item_vecs, dataset.item_index)
    if q_cases:
        queries = ev.encode_texts(encoder, [c.query for c in q_cases], item_vecs.shape[1])
        qv = ev.user_vectors(tower, q_cases, item_vecs, dataset.item_index, queries)
        cases, uv = cases + q_cases, np.concatenate([uv, qv])
    recalled = ev.recall_lists(index, uv, cases, item_ids, prof.rerank_n)
    if prof.recent_candidates:
        recalled = ev.with_recent(
            recalled,
            uv,
            cases,
            [recent_top_ids(recency, prof, item_ids, c.time) for c in cases],
            item_vecs,
            dataset.item_index,
            prof.rerank_n,
        )
    users, cands, feats, target = [], [], [], []
    for case, vec, (ids, scores) in zip(cases, uv, recalled, strict=True):
        if case.target not in ids or len(ids) < prof.rerank_n:
            continue
        rows = [dataset.item_index[i] for i in ids]
        users.append(vec)
        cands.append(rows)
        history = ev.history_matrix(case, item_vecs, dataset.item_index, tower.max_len)
        feats.append(
            candidate_features(
                np.asarray(scores),
                np.asarray([counts[i] for i in ids]),
                len(case.history),
                history_similarities(item_vecs[rows], history),
                recent_counts=recency.at(case.time)[rows],
                gap_s=case.gap_s,
            )
        )
        target.append(ids.index(case.target))
    if not users:
        raise DataError("no ranker training list contains its target item")
    lists = RankerLists(
        np.stack(users), np.asarray(cands), np.stack(feats), np.asarray(target, np.int64)
    )
    return lists, len(cases)


def build_bundle(
    data_dir: Path,
    out_root: Path,
    profile: str | Profile = "quick",
    *,
    version: str | None = None,
    seed: int = 0,
    progress: bool = True,
    dataset_name: str | None = None,
    int8: bool = False,
    refit: Refit | None = None,
    warm_start: Path | None = None,
) -> Path:
    """Train, export, index, evaluate and publish a bundle; returns its directory
    (``refit``: train on everything with a held-out run's choices, see :class:`Refit`;
    ``warm_start``: a bundle whose training state the tower, head and encoder layers start
    from, see :mod:`training.warm`)."""
    if isinstance(profile, Profile):
        prof = profile
    elif profile in PROFILES:
        prof = PROFILES[profile]
    else:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    version = version or default_version(prof.name)
    if not version or "/" in version or version.startswith("."):
        raise ValueError(f"invalid version name {version!r}")
    out_root = Path(out_root)
    final = out_root / version
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    out_root.mkdir(parents=True, exist_ok=True)
    work = out_root / f".{version}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _build_into(
            work,
            Path(data_dir),
            prof,
            version,
            seed,
            progress,
            dataset_name,
            int8,
            refit,
            warm_start,
        )
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    point_current(out_root, version)
    return final


def _build_into(
    work: Path,
    data_dir: Path,
    prof: Profile,
    version: str,
    seed: int,
    progress: bool,
    dataset_name: str | None,
    int8: bool = False,
    refit: Refit | None = None,
    warm_start: Path | None = None,
) -> None:
    # Heavy imports live here so `python -m training --help` and data errors stay fast.
    import hnswlib

    from training import evaluate as ev
    from training.base_encoder import embed_eval, load_base, seed_everything
    from training.export import (
        append_head,
        check_encoder_parity,
        export_encoder,
        quantize_int8,
    )
    from training.finetune import CachedTop
    from training.report import cold_start, write_plots
    from training.tower import (
        check_tower_parity,
        export_tower,
        make_windows,
        popularity_prior,
        train_tower,
        user_vectors,
    )
    from training.warm import load_state, save_state

    timer = _Timer(progress)
    started = time.perf_counter()
    seed_everything(seed)

    with timer.stage("load_data"):
        dataset = load_dataset(data_dir, name=dataset_name)
        split = (
            leave_last_out(dataset)
            if refit is None
            else Split({u: dataset.sequence(u) for u in dataset.user_interactions}, {}, {})
        )
        shape = asdict(prof.tower)
        warm = None if warm_start is None else load_state(warm_start, shape, BASE_MODEL_NAME)
        if warm is not None:
            # The encoder layers are adapted already: they train from the first epoch.
            prof = replace(
                prof, tower=replace(prof.tower, epochs=prof.warm_epochs, finetune_start=0)
            )
        if refit is not None:
            prof = replace(prof, tower=replace(prof.tower, epochs=refit.tower_epochs))
        tower_rows = _train_rows(dataset, split, prof.ranker_holdout)
        windows = make_windows(tower_rows, prof.tower.max_len)
        if not len(windows.inputs):
            raise DataError(
                f"{data_dir}: no training sequences (need users with at least 2 train "
                "interactions before their held-out items)"
            )
    item_ids = [it.id for it in dataset.items]

    model, tokenizer = load_base()
    model.eval()

    encoder_spec: dict[str, Any] = {
        "model": "encoder/model.onnx",
        "tokenizer": "encoder/tokenizer.json",
        "max_length": prof.max_length,
        "pooling": "mean",
        "base_model": BASE_MODEL_NAME,
        "output": "last_hidden_state",
    }
    user_spec: dict[str, Any] = {
        "model": "user/tower.onnx",
        "prior": "user/prior.npy",
        "inputs": [HISTORY_INPUT, MASK_INPUT],
        "output": USER_OUTPUT,
        "max_len": prof.tower.max_len,
        "d_model": prof.tower.d_model,
        "layers": prof.tower.layers,
    }
    ort_options = SessionOptions(device="cpu", intra_op_threads=os.cpu_count() or 1)
    valid_cases = ev.eval_cases(dataset, split, "valid")
    valid_targets: list[str | None] = [c.target for c in valid_cases]
    valid_rows = [[dataset.item_index[i] for i in c.history] for c in valid_cases]
    texts = [it.text for it in dataset.items]
    top: Any = None  # a training.finetune.CachedTop when the encoder is fine-tuned
    layers = prof.tower.finetune_layers
    with timer.stage(
        "encode_items",
        f"{len(texts)} item texts, torch"
        + (f" (lower layers cached for fine-tuning the top {layers})" if layers else ""),
    ):
        if layers:
            top = CachedTop.build(model, tokenizer, texts, layers, prof.max_length)
            if warm is not None and warm.encoder_top:
                top.load_top(warm.encoder_top)
            body_items = top.all_vectors().numpy()
        else:
            body_items = embed_eval(model, tokenizer, texts, prof.max_length).numpy()

    def validate(tower_model: Any, vecs: np.ndarray) -> float:
        uv = user_vectors(tower_model, valid_rows, vecs)
        lists = ev.exact_lists(uv, vecs, valid_cases, item_ids, 10)
        return ev.ndcg_at_k(lists, valid_targets, 10)

    with timer.stage(
        "train_tower",
        f"{prof.tower.epochs} epochs over {len(windows.inputs)} sequences, "
        "full-catalog softmax at every position"
        + (f", encoder's top {layers} layers fine-tuned" if layers else ""),
    ):
        tw = train_tower(
            body_items,
            windows,
            prof.tower,
            seed=seed,
            validate=None if refit else validate,
            validate_every=prof.validate_every,
            progress=progress,
            encoder_top=top,
            init=warm,
        )
        warm_spec = save_state(
            work,
            {k: v.detach().numpy().copy() for k, v in tw.model.state_dict().items()},
            tw.head,
            {} if top is None else top.top_state(),
            shape,
            BASE_MODEL_NAME,
        )
    served_model = top.merged_model() if top is not None else model

    with timer.stage("export_encoder", "optimum ONNX export, head appended, parity check"):
        export_encoder(served_model, tokenizer, work / "encoder")
        append_head(work / "encoder" / "model.onnx", tw.head)
        encoder = TextEncoder(
            _staging_bundle(work, version, {"encoder": encoder_spec}), ort_options
        )
        sample = texts[: prof.parity_texts]
        encoder_diff = check_encoder_parity(
            served_model, tokenizer, encoder, sample, prof.max_length, head=tw.head
        )

    with timer.stage("encode_catalog", f"{len(dataset.items)} items, serving encoder"):
        item_vecs = ev.encode_texts(encoder, [it.text for it in dataset.items], DIM)
        (work / "items").mkdir()
        np.save(work / "items" / "vectors.npy", item_vecs, allow_pickle=False)
        _write_jsonl(
            work / "items" / "catalog.jsonl",
            [
                {"id": it.id, "title": it.title, "text": it.text, "metadata": it.metadata}
                for it in dataset.items
            ],
        )

    with timer.stage("export_tower", "torch.onnx + parity check + prior"):
        export_tower(tw.model, work / user_spec["model"])
        sample_rows = (valid_rows or tower_rows)[: max(prof.parity_texts, 2)]
        tower_diff = check_tower_parity(tw.model, work / user_spec["model"], item_vecs, sample_rows)
        counts = ev.input_counts(split, "valid")
        prior = popularity_prior(item_vecs, np.asarray([counts[i] for i in item_ids]))
        np.save(work / user_spec["prior"], prior, allow_pickle=False)

    with timer.stage("query_prior", "new users' query + prior weight, chosen on validation"):
        if refit is None:
            user_spec["query_prior_weight"], prior_curve = _choose_query_prior(
                dataset, split, encoder, item_vecs, work, version, user_spec, ort_options
            )
        else:
            user_spec["query_prior_weight"], prior_curve = refit.query_prior_weight, []
        tower = UserTower(_staging_bundle(work, version, {"user": user_spec}), ort_options)

    with timer.stage("build_index", "HNSW"):
        index = hnswlib.Index(space="ip", dim=DIM)
        index.init_index(
            max_elements=len(item_vecs),
            M=HNSW_M,
            ef_construction=HNSW_EF_CONSTRUCTION,
            random_seed=seed,
        )
        # One insertion thread keeps the graph (and so its checksum) reproducible for
        # small catalogs; large ones use every core.
        threads = 1 if len(item_vecs) <= 20_000 else -1
        index.add_items(item_vecs, np.arange(len(item_vecs)), num_threads=threads)
        index.set_ef(HNSW_EF_SEARCH)
        (work / "index").mkdir()
        index.save_index(str(work / "index" / "hnsw.bin"))

    with timer.stage("ranker", "lists from recall's top-N, train + ONNX export + parity"):
        seed_everything(seed)
        recency = RecentCounts(dataset)
        lists, positions = _ranker_lists(
            dataset, split, tower, item_vecs, index, prof, encoder, recency
        )
        np.save(work / RECENT_COUNTS, recency.snapshot(), allow_pickle=False)
        # Served recent-popularity candidates: as of just after the data's newest
        # interaction (what the recency counts are too).
        served_top = recent_top_ids(recency, prof, item_ids, recency.latest + 1)
        if prof.recent_candidates:
            (work / RECENT_TOP).write_text(json.dumps(served_top) + "\n")

        def top_at(now: int) -> list[str]:
            return recent_top_ids(recency, prof, item_ids, now)

        recent_top = top_at if prof.recent_candidates else None

        r_config = RankerConfig(
            epochs=prof.ranker_epochs,
            lr=prof.ranker_lr,
            hidden=prof.ranker_hidden,
            ema=prof.ranker_ema,
        )
        rk = train_ranker(lists, item_vecs, r_config, seed=seed, progress=progress)
        ranker_path = export_ranker(rk.model, work / "ranker" / "model.onnx", DIM)
        ranker_diff = check_ranker_parity(rk.model, ranker_path, DIM, seed=seed)

    results: dict[str, Any] = {}
    per_user_served: dict[str, Any] = {}
    with timer.stage(
        "evaluate",
        "ONNX tower + HNSW + ONNX ranker, valid and test"
        if refit is None
        else "refit on everything: the held-out run's evaluation stands",
    ):
        ranker_session, _ = create_session(ranker_path, ort_options)
        for phase in ("valid", "test") if refit is None else ():
            cases = ev.eval_cases(dataset, split, phase)
            uv = ev.user_vectors(tower, cases, item_vecs, dataset.item_index)
            arrays: dict[str, dict[str, np.ndarray]] = {}
            res: dict[str, Any] = ev.evaluate_pipelines(
                cases,
                uv,
                item_ids,
                item_vecs,
                index,
                ranker_session,
                prof.rerank_n,
                ev.input_counts(split, phase),
                arrays,
                prof.tower.max_len,
                recency.at,
                recent_top,
            )
            res["most_popular"] = ev.baseline_most_popular(split, cases, phase, arrays)
            zs = ev.mean_vectors(cases, body_items, dataset.item_index)
            res["zero_shot"], arrays["zero_shot"] = ev.with_intervals(
                ev.exact_lists(zs, body_items, cases, item_ids, 20),
                [c.target for c in cases],
            )
            res["users"] = len(cases)
            # Per-user served NDCG@10, so that a later bundle can be compared *paired*
            # with this one on the same users (``evaluate.paired_difference``).
            per_user_served[phase] = {
                "users": [c.user_id for c in cases],
                "ndcg@10": [round(float(x), 6) for x in arrays["ranked"]["ndcg@10"]],
            }
            res["paired"] = {
                f"ranked_vs_{other}": {
                    m: ev.paired_difference(arrays["ranked"][m], arrays[other][m])
                    for m in ("ndcg@10", "recall@20")
                }
                for other in ("hnsw", "most_popular", "zero_shot")
            }
            results[phase] = res

    query_recent_curve: list[dict[str, float]] = []
    if refit is not None:
        query_recent_weight = float(
            refit.held_out_report.get("training", {}).get("query_recent_weight", 0.0)
        )
        results = refit.held_out_report["results"]
        per_user_served = refit.held_out_report.get("per_user_served", {})
        cold = refit.held_out_report["cold_start"]
    else:
        with timer.stage("query_fusion", "query-only order: ranker + recent popularity, on valid"):
            query_recent_weight, query_recent_curve = _choose_query_recent_weight(
                dataset, split, prof, encoder, item_vecs, tower, index, ranker_session, recency
            )
        with timer.stage("cold_start", "held-out items: tower (+ encoder) re-trained without them"):
            cold = cold_start(
                dataset,
                split,
                prof,
                body_items,
                encoder,
                item_vecs,
                tower,
                index,
                ranker_session,
                # A warm build's few epochs are not a from-scratch budget.
                prof.cold_epochs if warm else min(tw.best_epoch, prof.cold_epochs),
                seed,
                progress,
                encoder_top=None if top is None else top.fresh_copy(),
                recency=recency.at,
                recent_top=recent_top,
                query_recent_weight=query_recent_weight,
            )

    int8_report: dict[str, Any] | None = None
    if (int8 or prof.int8) and refit is None:
        with timer.stage("int8", "per-channel dynamic int8, speed/quality vs fp32, torch"):
            quantize_int8(work / "encoder" / "model.onnx", work / "encoder" / "model.int8.onnx")
            encoder_spec["int8_model"] = "encoder/model.int8.onnx"
            int8_report = _int8_report(
                work,
                version,
                encoder_spec,
                encoder,
                dataset,
                split,
                tower,
                ort_options,
                (model, tokenizer, tw.head),
            )

    histories = [
        {
            "user_id": u,
            "items": dataset.sequence(u)[::-1],
            # The gateway's since_last_interaction feature for users without new events.
            "last_time": max(x.timestamp for x in dataset.user_interactions[u]),
        }
        for u in sorted(dataset.user_interactions)
    ]
    _write_jsonl(work / "users" / "history.jsonl", histories)

    test = results["test"]
    metrics = {
        # Served path on the test split, plus the headline comparisons.
        f"recall@{EVAL_K}": test["hnsw"]["recall@10"],
        f"ndcg@{EVAL_K}": test["hnsw"]["ndcg@10"],
        f"ranked_recall@{EVAL_K}": test["ranked"]["recall@10"],
        f"ranked_ndcg@{EVAL_K}": test["ranked"]["ndcg@10"],
        "ranked_ndcg@10_ci95": test["ranked"]["ci95"]["ndcg@10"],
        "ranked_recall@20": test["ranked"]["recall@20"],
        "most_popular": {k: test["most_popular"][k] for k in ("recall@10", "ndcg@10", "recall@20")},
        "zero_shot": {k: test["zero_shot"][k] for k in ("recall@10", "ndcg@10", "recall@20")},
        "eval_users": test["users"],
    }
    training = {
        "profile": prof.name,
        "seed": seed,
        "finetune_layers": prof.tower.finetune_layers,
        "tower": asdict(prof.tower),
        "tower_best_epoch": tw.best_epoch,
        "warm_start": None
        if warm is None
        else {"from_version": warm.version, "epochs": prof.tower.epochs},
        "tower_valid_curve": tw.valid_curve,
        "tower_final_loss": round(tw.losses[-1], 4) if tw.losses else None,
        "tower_sequences": len(windows.inputs),
        "query_prior_weight": user_spec["query_prior_weight"],
        "query_prior_valid_recall@20": prior_curve,
        "query_recent_weight": query_recent_weight,
        "query_recent_valid_recall@20": query_recent_curve,
        "ranker_epochs": prof.ranker_epochs,
        "ranker_lr": prof.ranker_lr,
        "ranker_ema": prof.ranker_ema,
        "ranker_final_loss": round(rk.losses[-1], 4) if rk.losses else None,
        "ranker_lists": rk.lists,
        "ranker_positions": positions,
        "ranker_holdout": prof.ranker_holdout,
        "rerank_n": prof.rerank_n,
        "max_length": prof.max_length,
        "parity": {
            "encoder_max_abs_diff": encoder_diff,
            "tower_max_abs_diff": tower_diff,
            "ranker_max_abs_diff": ranker_diff,
        },
        "seconds": {**timer.seconds, "total": round(time.perf_counter() - started, 2)},
    }
    report = {
        "version": version,
        "protocol": (
            "leave-last-out by time (RecBole LS+TO), full-catalog ranking excluding the "
            "input history (valid: train items; test: train+valid items); 95% bootstrap "
            "intervals over users"
        ),
        "results": results,
        "per_user_served": per_user_served,
        "cold_start": cold,
        "int8": int8_report,
        "training": training,
        "profile": asdict(prof),
        "losses": {"tower": tw.losses, "ranker": rk.losses},
    }
    if refit is not None:
        report["refit"] = {
            "evaluation": (
                "this bundle trained on every interaction (nothing held out); `results` and "
                "`cold_start` are those of the held-out run with the same settings, which "
                "the gate compared with the serving bundle"
            ),
            "tower_epochs": refit.tower_epochs,
            "query_prior_weight": refit.query_prior_weight,
            "held_out_version": refit.held_out_report.get("version"),
            "gate": refit.gate,
        }
        training["refit"] = {"held_out_version": refit.held_out_report.get("version")}
    write_plots(work / "report", report)
    (work / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    manifest: dict[str, Any] = {
        "version": version,
        "dim": DIM,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {
            "name": dataset.name,
            "items": len(dataset.items),
            "users": len(dataset.user_interactions),
            "interactions": dataset.n_interactions,
            "fingerprint": dataset.fingerprint,
        },
        "encoder": encoder_spec,
        "user": user_spec,
        "ranker": {
            "model": "ranker/model.onnx",
            "inputs": list(INPUTS),
            "output": OUTPUT,
            "fusion": list(FUSION),
            "side_features": list(RANKER_FEATURES),
            "features_input": FEATURES_INPUT,
            # Query-only requests: the ranker's order fused with items.recent_top.
            "query_recent_weight": query_recent_weight,
            # Served recency counts: as of the training data's newest interaction.
            "recency": {
                "counts": RECENT_COUNTS,
                "windows_s": list(RECENCY_WINDOWS_S),
                "as_of": recency.latest,
            },
        },
        "items": {
            "catalog": "items/catalog.jsonl",
            "vectors": "items/vectors.npy",
            "count": len(dataset.items),
            **(
                {
                    "recent_top": {
                        "ids": RECENT_TOP,
                        "count": len(served_top),
                        "window_s": prof.recent_window_days * DAY_S,
                        "as_of": recency.latest,
                    }
                }
                if prof.recent_candidates
                else {}
            ),
        },
        "index": {
            "path": "index/hnsw.bin",
            "space": "ip",
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": HNSW_EF_SEARCH,
            "count": len(dataset.items),
        },
        "users": {"history": "users/history.jsonl", "count": len(histories)},
        "warm_start": warm_spec,
        "training": training,
        "metrics": metrics,
    }
    write_manifest(work, manifest)
    # Fail the build, not the first service start, if anything does not verify.
    Bundle.open(work)


QUERY_PRIOR_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def _query_protocols(
    dataset: Dataset, split: Split, encoder: TextEncoder
) -> list[tuple[str, list[ev.EvalCase], np.ndarray]]:
    """The validation query-only users of each protocol that has any (kind, cases, query
    vectors): what the build chooses query-only settings on (``training.evaluate.QUERY_KINDS``)."""
    out = []
    for kind in ev.QUERY_KINDS:
        cases = ev.query_cases(dataset, split, "valid", kind)
        if cases:
            out.append((kind, cases, ev.encode_texts(encoder, [c.query for c in cases], DIM)))
    return out


def _choose_query_prior(
    dataset: Dataset,
    split: Split,
    encoder: TextEncoder,
    item_vecs: np.ndarray,
    work: Path,
    version: str,
    user_spec: dict[str, Any],
    ort_options: SessionOptions,
) -> tuple[float, list[dict[str, float]]]:
    """The weight of the prior in a new user's query vector with the best mean validation
    Recall@20 (exact search) over the query-only protocols (taste and search, equally
    weighted: one lists what a stated preference adds to popularity, the other whether the
    text is followed) among :data:`QUERY_PRIOR_WEIGHTS` (ties: the smaller); 0 when the data
    has no genres to build validation queries from. Returns it and the curve (per weight:
    each protocol's Recall@20 and their mean)."""
    protocols = _query_protocols(dataset, split, encoder)
    if not protocols:
        return 0.0, []
    item_ids = [it.id for it in dataset.items]
    curve: list[dict[str, float]] = []
    for w in QUERY_PRIOR_WEIGHTS:
        tower = UserTower(
            _staging_bundle(work, version, {"user": {**user_spec, "query_prior_weight": w}}),
            ort_options,
        )
        point = {"weight": w}
        for kind, cases, queries in protocols:
            uv = ev.user_vectors(tower, cases, item_vecs, dataset.item_index, queries)
            lists = ev.exact_lists(uv, item_vecs, cases, item_ids, 20)
            point[kind] = ev.recall_at_k(lists, [c.target for c in cases], 20)
        point["mean"] = float(np.mean([point[kind] for kind, _, _ in protocols]))
        curve.append(point)
    return ev.pick_query_weight(curve), curve


def _choose_query_recent_weight(
    dataset: Dataset,
    split: Split,
    prof: Profile,
    encoder: TextEncoder,
    item_vecs: np.ndarray,
    tower: UserTower,
    index: Any,
    ranker: Any,
    recency: RecentCounts,
) -> tuple[float, list[dict[str, float]]]:
    """The query-only fusion weight among :data:`recstack.core.features.QUERY_RECENT_WEIGHTS`
    with the best mean validation Recall@20 of the served query-only lists over the
    protocols (as :func:`_choose_query_prior`), among the weights whose taste lists clear
    the stronger of two popularity baselines, all-time (the issue's floor for new users) and
    recent (the profile's recent-popularity items at each request's time: a new user who
    states a taste should get at least what trending items give), by at least one standard
    error of the paired per-user difference (:func:`training.evaluate.floor_margin`: the
    floor must hold on users validation never saw, and the smallest weight that merely
    touches it on validation is the one most likely to miss it there), or, when none does,
    the best taste figure; ties: the smaller. 0 without recent-popularity candidates or
    validation queries. Returns it and the curve (per weight: each protocol's Recall@20,
    the mean, the taste margin; the floor's own figure as ``taste_floor``)."""
    protocols = _query_protocols(dataset, split, encoder)
    if not protocols or not prof.recent_candidates:
        return 0.0, []
    item_ids = [it.id for it in dataset.items]

    def top_at(now: int) -> list[str]:
        return recent_top_ids(recency, prof, item_ids, now)

    curve: list[dict[str, float]] = [{"weight": w} for w in QUERY_RECENT_WEIGHTS]
    for kind, cases, queries in protocols:
        targets: list[str | None] = [c.target for c in cases]
        _, ranked = ev.served_query_only(
            cases,
            queries,
            tower,
            item_ids,
            item_vecs,
            dataset.item_index,
            index,
            ranker,
            prof.rerank_n,
            ev.input_counts(split, "valid"),
            prof.tower.max_len,
            recency.at,
            top_at,
        )
        floor = None
        if kind == "taste":
            floors = [
                ev.per_user(
                    ev.most_popular_lists(split, cases, 20, "valid"), targets, 20, "recall"
                ),
                ev.per_user([top_at(c.time)[:20] for c in cases], targets, 20, "recall"),
            ]
            floor = max(floors, key=lambda f: float(f.mean()))
        for point in curve:
            lists = ev.fused_query_lists(ranked, cases, top_at, point["weight"])
            hits = ev.per_user(lists, targets, 20, "recall")
            point[kind] = float(hits.mean())
            if floor is not None:
                point["taste_floor"] = float(floor.mean())
                point["taste_margin"] = ev.floor_margin(hits, floor)
    for point in curve:
        point["mean"] = float(np.mean([point[kind] for kind, _, _ in protocols]))
    constrained = all("taste_margin" in p for p in curve)
    return ev.pick_query_weight(curve, constrained), curve


def _int8_report(
    work: Path,
    version: str,
    encoder_spec: dict[str, Any],
    fp32: TextEncoder,
    dataset: Dataset,
    split: Split,
    tower: UserTower,
    ort_options: SessionOptions,
    torch_encoder: tuple[Any, Any, np.ndarray],
) -> dict[str, Any]:
    """Exact-search test metrics (item vectors from each encoder, the same tower: the worst
    case, every item re-encoded), query-only users' metrics with each encoder's query
    vectors over the fp32 item vectors (what int8 changes in serving), and encode time of
    int8 vs fp32 ONNX vs torch eager (``torch_encoder`` = model, tokenizer, head: the torch
    reference of the served vectors), measured in one run."""
    import torch

    from training import evaluate as ev
    from training.export import embed_with_head

    int8_spec = {**encoder_spec, "model": encoder_spec["int8_model"]}
    int8 = TextEncoder(_staging_bundle(work, version, {"encoder": int8_spec}), ort_options)
    cases = ev.eval_cases(dataset, split, "test")
    targets: list[str | None] = [c.target for c in cases]
    texts = [it.text for it in dataset.items]
    item_ids = [it.id for it in dataset.items]
    out: dict[str, Any] = {}
    for name, enc in (("fp32", fp32), ("int8", int8)):
        enc.encode(texts[:8])  # warm-up
        t0 = time.perf_counter()
        iv = ev.encode_texts(enc, texts, DIM)
        seconds = time.perf_counter() - t0
        one = [time.perf_counter()]
        for text in texts[:50]:
            enc.encode([text])
            one.append(time.perf_counter())
        uv = ev.user_vectors(tower, cases, iv, dataset.item_index)
        m = ev.all_metrics(ev.exact_lists(uv, iv, cases, item_ids, 20), targets)
        out[name] = {
            "item_texts_per_s": round(len(texts) / seconds, 1),
            "single_text_ms": round(1000 * float(np.median(np.diff(one))), 2),
            **m,
        }
        if name == "fp32":
            ref_i = iv
        else:
            out["max_abs_diff_items"] = float(np.max(np.abs(iv - ref_i)))
    # What int8 changes in serving: the encoder runs only for query texts and upserted
    # items (history users never reach it). Query-only users, exact search, paired.
    q_cases = ev.query_cases(dataset, split, "test")
    if q_cases:
        q_targets: list[str | None] = [c.target for c in q_cases]
        q_arrays = {}
        for name, enc in (("fp32", fp32), ("int8", int8)):
            qv = ev.encode_texts(enc, [c.query for c in q_cases], DIM)
            uv = ev.user_vectors(tower, q_cases, ref_i, dataset.item_index, qv)
            m, q_arrays[name] = ev.with_intervals(
                ev.exact_lists(uv, ref_i, q_cases, item_ids, 20), q_targets
            )
            out[name]["query_users"] = {k: m[k] for k in ("recall@20", "ndcg@10")}
        out["query_users_paired"] = {
            k: ev.paired_difference(q_arrays["int8"][k], q_arrays["fp32"][k])
            for k in ("recall@20", "ndcg@10")
        }
    f32, i8 = out["fp32"], out["int8"]
    out["speedup_batch"] = round(i8["item_texts_per_s"] / f32["item_texts_per_s"], 2)
    out["speedup_single"] = round(f32["single_text_ms"] / i8["single_text_ms"], 2)
    out["ndcg@10_change"] = i8["ndcg@10"] - f32["ndcg@10"]
    model, tokenizer, head = torch_encoder
    max_length = int(encoder_spec["max_length"])
    with torch.inference_mode():
        embed_with_head(model, tokenizer, texts[:8], max_length, head)  # warm-up
        t0 = time.perf_counter()
        for s in range(0, len(texts), 256):
            embed_with_head(model, tokenizer, texts[s : s + 256], max_length, head)
        seconds = time.perf_counter() - t0
        one = [time.perf_counter()]
        for text in texts[:50]:
            embed_with_head(model, tokenizer, [text], max_length, head)
            one.append(time.perf_counter())
    out["torch_eager"] = {
        "item_texts_per_s": round(len(texts) / seconds, 1),
        "single_text_ms": round(1000 * float(np.median(np.diff(one))), 2),
    }
    out["ndcg@10_relative_change"] = out["ndcg@10_change"] / max(f32["ndcg@10"], 1e-12)
    out["bytes"] = {
        "fp32": (work / encoder_spec["model"]).stat().st_size,
        "int8": (work / encoder_spec["int8_model"]).stat().st_size,
    }
    return out


def profile_with(name: str, **changes: Any) -> Profile:
    """A named profile with some fields changed (for experiments and tests)."""
    return replace(PROFILES[name], **changes)
