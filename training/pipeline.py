"""End to end: data -> fine-tuned encoder -> ONNX -> catalog vectors + HNSW -> ranker -> bundle.

Every vector in the bundle is computed by the *serving* encoder
(:class:`recstack.encoder.TextEncoder` over the exported ONNX model), not by torch, so the
index holds exactly what the recall service would compute for the same texts; parity
checks tie the ONNX models to the trained torch models (encoder 1e-4, ranker 1e-5).

A bundle is assembled in ``out_root/.<version>.tmp``, sealed with
:func:`recstack.bundle.write_manifest` (sha256 of every file), renamed to
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
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recstack.bundle import Bundle, write_manifest
from recstack.encoder import TextEncoder
from recstack.ort import SessionOptions, create_session
from recstack.text import UserTextSpec
from training.data import DataError, Dataset, Split, leave_last_out, load_dataset
from training.ranker import (
    FUSION,
    INPUTS,
    OUTPUT,
    RankerConfig,
    check_ranker_parity,
    export_ranker,
    train_ranker,
)
from training.two_tower import BASE_MODEL_NAME, TwoTowerConfig

DIM = 384
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 64
EVAL_K = 10
RERANK_N = 100


@dataclass(frozen=True)
class Profile:
    """How much work a build does; ``tiny`` is for tests, ``quick`` for a few minutes' run."""

    name: str
    steps: int
    batch_size: int
    lr: float
    max_length: int
    warmup_steps: int
    freeze_layers: int
    temperature: float = 0.05
    logq_correction: bool = True
    max_pairs_per_user: int | None = None
    ranker_epochs: int = 5
    ranker_anchors: int = 1
    ranker_horizon: int = 10
    ranker_random_negatives: int = 4
    # Hard negatives (sampled from the recall top-k) measured worse on ML-100K: the top-k of
    # a history is full of items the user goes on to like (false negatives). Off by default.
    ranker_hard_negatives: int = 0
    ranker_hard_k: int = 20
    parity_texts: int = 16


PROFILES: dict[str, Profile] = {
    # Integration tests on the synthetic dataset: exercises every stage in seconds.
    "tiny": Profile(
        "tiny",
        steps=4,
        batch_size=16,
        lr=1e-4,
        max_length=32,
        warmup_steps=0,
        freeze_layers=4,
        ranker_epochs=5,
        ranker_anchors=2,
        ranker_horizon=2,
        ranker_hard_negatives=1,
        ranker_hard_k=5,
        parity_texts=8,
    ),
    # ML-100K in about 3 minutes on 2 CPU cores (fine-tuning is ~3 s a step there).
    "quick": Profile(
        "quick", steps=40, batch_size=32, lr=3e-4, max_length=64, warmup_steps=4, freeze_layers=3
    ),
    # Longer: all layers, more pairs per step, full user texts.
    "full": Profile(
        "full",
        steps=1500,
        batch_size=64,
        lr=1e-4,
        max_length=128,
        warmup_steps=100,
        freeze_layers=0,
        ranker_epochs=10,
        ranker_anchors=3,
        ranker_horizon=5,
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


def _staging_bundle(root: Path, version: str, encoder_spec: dict[str, Any]) -> Bundle:
    """An in-memory Bundle over the exported encoder, so TextEncoder can load it pre-seal."""
    files: dict[str, dict[str, Any]] = {encoder_spec["model"]: {}, encoder_spec["tokenizer"]: {}}
    return Bundle(root, {"version": version, "dim": DIM, "encoder": encoder_spec, "files": files})


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _ranker_examples(
    dataset: Dataset, split: Split, spec: UserTextSpec, anchors: int, horizon: int
) -> tuple[list[str], list[list[int]]]:
    """User texts at a few anchor points of each train sequence and the items that follow.

    Anchor t (counted back from the end in steps of ``horizon``) gives the text of the
    history before t and, as positives, the next ``horizon`` train items: one encoder call
    yields several examples, which matters because encoding is the expensive part.
    """
    titles = {it.id: it.title for it in dataset.items}
    texts: list[str] = []
    positives: list[list[int]] = []
    for user in sorted(split.train):
        seq = split.train[user]
        for a in range(anchors):
            t = len(seq) - horizon * (a + 1)
            if t < 1:
                break
            history = seq[max(0, t - spec.max_history) : t][::-1]
            texts.append(spec.build([titles[i] for i in history]))
            positives.append([dataset.item_index[i] for i in seq[t : t + horizon]])
    return texts, positives


def _hard_negatives(
    index: Any, user_vecs: np.ndarray, positives: list[list[int]], k: int
) -> np.ndarray:
    """[M, k] recall candidates per user vector, its positives removed (padded by repeats)."""
    labels, _ = index.knn_query(user_vecs, k=min(k + 10, index.get_current_count()))
    rows = []
    for row, pos in zip(labels, positives, strict=True):
        own = set(pos)
        cand = [int(j) for j in row if int(j) not in own][:k]
        # A tiny catalog may have no candidate left: fall back to a random-ish item.
        rows.append((cand * k)[:k] if cand else [(pos[0] + 1) % len(index.get_ids_list())] * k)
    return np.asarray(rows, dtype=np.int64)


def _loss_plot(path: Path, two_tower: list[float], ranker: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(range(1, len(two_tower) + 1), two_tower)
    axes[0].set(title="two-tower InfoNCE loss", xlabel="step", ylabel="loss")
    axes[1].plot(range(1, len(ranker) + 1), ranker, marker="o")
    axes[1].set(title="ranker BCE loss", xlabel="epoch", ylabel="loss")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_bundle(
    data_dir: Path,
    out_root: Path,
    profile: str | Profile = "quick",
    *,
    version: str | None = None,
    seed: int = 0,
    progress: bool = True,
    dataset_name: str | None = None,
) -> Path:
    """Train, export, index, evaluate and publish a bundle; returns its directory."""
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
        _build_into(work, Path(data_dir), prof, version, seed, progress, dataset_name)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    tmp_pointer = out_root / f".CURRENT.{os.getpid()}.tmp"
    tmp_pointer.write_text(version + "\n")
    os.replace(tmp_pointer, out_root / "CURRENT")
    return final


def _build_into(
    work: Path,
    data_dir: Path,
    prof: Profile,
    version: str,
    seed: int,
    progress: bool,
    dataset_name: str | None,
) -> None:
    # Heavy imports live here so `python -m training --help` and data errors stay fast.
    import hnswlib

    from training.evaluate import evaluate
    from training.export import check_encoder_parity, export_encoder
    from training.two_tower import build_pairs, seed_everything, train_two_tower

    timer = _Timer(progress)
    spec = UserTextSpec()
    started = time.perf_counter()

    with timer.stage("load_data"):
        dataset = load_dataset(data_dir, name=dataset_name)
        split = leave_last_out(dataset)
        pairs = build_pairs(dataset, split, spec, prof.max_pairs_per_user)
        if len(pairs) < 2:
            raise DataError(
                f"{data_dir}: only {len(pairs)} training pairs (need users with "
                "at least 2 interactions before their held-out items)"
            )

    with timer.stage("fine_tune", f"{prof.steps} steps x {prof.batch_size} pairs"):
        tt_config = TwoTowerConfig(
            steps=prof.steps,
            batch_size=prof.batch_size,
            lr=prof.lr,
            temperature=prof.temperature,
            max_length=prof.max_length,
            warmup_steps=prof.warmup_steps,
            freeze_layers=prof.freeze_layers,
            logq_correction=prof.logq_correction,
        )
        tt = train_two_tower(pairs, tt_config, seed=seed, progress=progress)

    encoder_spec = {
        "model": "encoder/model.onnx",
        "tokenizer": "encoder/tokenizer.json",
        "max_length": prof.max_length,
        "pooling": "mean",
        "base_model": BASE_MODEL_NAME,
        "output": "last_hidden_state",
    }
    ort_options = SessionOptions(device="cpu", intra_op_threads=os.cpu_count() or 1)
    with timer.stage("export_encoder", "optimum ONNX export + parity check"):
        export_encoder(tt.model, tt.tokenizer, work / "encoder")
        encoder = TextEncoder(_staging_bundle(work, version, encoder_spec), ort_options)
        sample = [it.text for it in dataset.items[: prof.parity_texts // 2]]
        sample += [p.user_text for p in pairs[: prof.parity_texts - len(sample)]]
        encoder_diff = check_encoder_parity(
            tt.model, tt.tokenizer, encoder, sample, prof.max_length
        )

    with timer.stage("encode_catalog", f"{len(dataset.items)} items, serving encoder"):
        texts = [it.text for it in dataset.items]
        item_vecs = np.concatenate(
            [encoder.encode(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )
        (work / "items").mkdir()
        np.save(work / "items" / "vectors.npy", item_vecs.astype(np.float32), allow_pickle=False)
        _write_jsonl(
            work / "items" / "catalog.jsonl",
            [
                {"id": it.id, "title": it.title, "text": it.text, "metadata": it.metadata}
                for it in dataset.items
            ],
        )

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

    with timer.stage("ranker", "train + ONNX export + parity check"):
        seed_everything(seed)
        r_texts, r_pos = _ranker_examples(
            dataset, split, spec, prof.ranker_anchors, prof.ranker_horizon
        )
        if not r_texts:
            raise DataError("no user has two train interactions: nothing to train on")
        user_vecs = encoder.encode(r_texts)
        users = np.asarray([u for u, pos in enumerate(r_pos) for _ in pos], dtype=np.int64)
        positives = np.asarray([i for pos in r_pos for i in pos], dtype=np.int64)
        hard = (
            _hard_negatives(index, user_vecs, r_pos, prof.ranker_hard_k)
            if prof.ranker_hard_negatives and prof.ranker_hard_k
            else None
        )
        r_config = RankerConfig(
            epochs=prof.ranker_epochs,
            random_negatives=prof.ranker_random_negatives,
            hard_negatives=prof.ranker_hard_negatives,
        )
        rk = train_ranker(
            user_vecs,
            users,
            positives,
            item_vecs,
            r_config,
            seed=seed,
            hard=hard,
            progress=progress,
        )
        ranker_path = export_ranker(rk.model, work / "ranker" / "model.onnx", DIM)
        ranker_diff = check_ranker_parity(rk.model, ranker_path, DIM, seed=seed)

    with timer.stage("evaluate", "ONNX encoder + HNSW + ONNX ranker"):
        ranker_session, _ = create_session(ranker_path, ort_options)
        full_metrics = evaluate(
            dataset,
            split,
            spec,
            encoder,
            index,
            item_vecs,
            ranker_session,
            k=EVAL_K,
            rerank_n=RERANK_N,
            progress=progress,
        )

    histories = [
        {"user_id": u, "items": dataset.sequence(u)[::-1]}
        for u in sorted(dataset.user_interactions)
    ]
    _write_jsonl(work / "users" / "history.jsonl", histories)

    metrics = {
        key: full_metrics[key]
        for key in (
            f"recall@{EVAL_K}",
            f"ndcg@{EVAL_K}",
            f"ranked_recall@{EVAL_K}",
            f"ranked_ndcg@{EVAL_K}",
            "most_popular",
            "eval_users",
        )
    }
    training = {
        "profile": prof.name,
        "seed": seed,
        "steps": prof.steps,
        "batch_size": prof.batch_size,
        "lr": prof.lr,
        "temperature": prof.temperature,
        "max_length": prof.max_length,
        "freeze_layers": prof.freeze_layers,
        "warmup_steps": prof.warmup_steps,
        "pairs": tt.pairs,
        "final_loss": round(float(np.mean(tt.losses[-5:])), 4) if tt.losses else None,
        "logq_correction": prof.logq_correction,
        "ranker_epochs": prof.ranker_epochs,
        "ranker_examples": rk.examples,
        "ranker_user_texts": len(r_texts),
        "ranker_horizon": prof.ranker_horizon,
        "ranker_final_loss": round(rk.losses[-1], 4) if rk.losses else None,
        "ranker_negatives": {
            "random": r_config.random_negatives,
            "hard": r_config.hard_negatives if hard is not None else 0,
            "hard_from_top_k": prof.ranker_hard_k,
        },
        "parity": {"encoder_max_abs_diff": encoder_diff, "ranker_max_abs_diff": ranker_diff},
        "seconds": {**timer.seconds, "total": round(time.perf_counter() - started, 2)},
    }
    _loss_plot(work / "report" / "loss_curve.png", tt.losses, rk.losses)
    report = {
        "version": version,
        "metrics": full_metrics,
        "training": training,
        "profile": asdict(prof),
        "two_tower_losses": tt.losses,
        "ranker_losses": rk.losses,
    }
    (work / "report" / "report.json").write_text(json.dumps(report, indent=2) + "\n")

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
        "ranker": {
            "model": "ranker/model.onnx",
            "inputs": list(INPUTS),
            "output": OUTPUT,
            "fusion": list(FUSION),
        },
        "items": {
            "catalog": "items/catalog.jsonl",
            "vectors": "items/vectors.npy",
            "count": len(dataset.items),
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
        "user_text": spec.to_dict(),
        "training": training,
        "metrics": metrics,
    }
    write_manifest(work, manifest)
    # Fail the build, not the first service start, if anything does not verify.
    Bundle.open(work)


def profile_with(name: str, **changes: Any) -> Profile:
    """A named profile with some fields changed (for experiments and tests)."""
    return replace(PROFILES[name], **changes)
