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
    # Optional transformer fine-tuning (in-batch InfoNCE); 0 steps keeps the base encoder.
    # Measured on ML-100K: 40 steps moved NDCG@10 by +0.003 for 100 s of CPU, while the
    # projection head below gains +0.06 in seconds, so quick/full spend their time there.
    steps: int
    batch_size: int
    lr: float
    max_length: int
    warmup_steps: int
    freeze_layers: int
    temperature: float = 0.05
    logq_correction: bool = True
    max_pairs_per_user: int | None = None
    # Projection head (full-catalog softmax on cached encoder vectors).
    head_epochs: int = 10
    head_dim: int = DIM
    head_temperature: float = 0.05
    # Pull of the head toward the identity (HeadConfig.identity_decay). Measured on ML-100K
    # quick (1e-4, 1e-3): no change in cold-item recall, slightly lower warm NDCG; off.
    head_identity_decay: float = 0.0
    # Training user texts: per user, ``anchors`` points counted back from the end of the
    # train sequence in steps of ``horizon``; each has the next ``horizon`` items as
    # positives (one encoder call yields several examples).
    anchors: int = 4
    horizon: int = 5
    max_history: int = 10
    ranker_epochs: int = 5
    ranker_random_negatives: int = 4
    # Hard negatives (sampled from the recall top-k) measured worse on ML-100K: the top-k of
    # a history is full of items the user goes on to like (false negatives). Off by default.
    ranker_hard_negatives: int = 0
    ranker_hard_k: int = 20
    rerank_n: int = RERANK_N
    parity_texts: int = 16
    cold_fraction: float = 0.05
    int8: bool = False


PROFILES: dict[str, Profile] = {
    # Integration tests on the synthetic dataset: exercises every stage in seconds.
    "tiny": Profile(
        "tiny",
        steps=2,
        batch_size=16,
        lr=1e-4,
        max_length=32,
        warmup_steps=0,
        freeze_layers=4,
        head_epochs=3,
        anchors=2,
        horizon=2,
        ranker_epochs=5,
        ranker_hard_negatives=1,
        ranker_hard_k=5,
        rerank_n=20,
        parity_texts=8,
        cold_fraction=0.1,
    ),
    # ML-100K in a few minutes on 2 CPU cores: frozen base encoder + trained head + ranker.
    "quick": Profile(
        "quick",
        steps=0,
        batch_size=32,
        lr=3e-4,
        max_length=128,
        warmup_steps=4,
        freeze_layers=3,
        # Chosen on validation (warm NDCG@10 and, on a second cold-item draw, cold-item
        # Recall@20) among 3/4/5/7/10 epochs: 5 is best on both; 10 over-fits the head to
        # the training items' texts (cold items fall from 0.110 to 0.055 Recall@20).
        head_epochs=5,
        anchors=4,
        horizon=5,
    ),
    # More training user texts (most of each history) and head epochs.
    "full": Profile(
        "full",
        steps=0,
        batch_size=64,
        lr=1e-4,
        max_length=128,
        warmup_steps=100,
        freeze_layers=0,
        head_epochs=12,
        anchors=12,
        horizon=5,
        ranker_epochs=10,
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


@dataclass
class Anchors:
    """Training user texts: the history before an anchor point and the items that follow."""

    texts: list[str]
    histories: list[list[int]]
    positives: list[list[int]]


def _anchors(
    dataset: Dataset, split: Split, spec: UserTextSpec, anchors: int, horizon: int
) -> Anchors:
    """Anchor t (counted back from the end in steps of ``horizon``) of each train sequence.

    Gives the text of the history before t and, as positives, the next ``horizon`` train
    items; validation and test items are never used.
    """
    titles = {it.id: it.title for it in dataset.items}
    out = Anchors([], [], [])
    for user in sorted(split.train):
        seq = split.train[user]
        for a in range(anchors):
            t = len(seq) - horizon * (a + 1)
            if t < 1:
                break
            history = seq[max(0, t - spec.max_history) : t][::-1]
            out.texts.append(spec.build([titles[i] for i in history]))
            out.histories.append([dataset.item_index[i] for i in history])
            out.positives.append([dataset.item_index[i] for i in seq[t : t + horizon]])
    return out


def _flatten(positives: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    users = np.asarray([u for u, pos in enumerate(positives) for _ in pos], dtype=np.int64)
    items = np.asarray([i for pos in positives for i in pos], dtype=np.int64)
    return users, items


def _project(vecs: np.ndarray, weight: np.ndarray) -> np.ndarray:
    out = vecs @ weight
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


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
        _build_into(work, Path(data_dir), prof, version, seed, progress, dataset_name, int8)
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
    int8: bool = False,
) -> None:
    # Heavy imports live here so `python -m training --help` and data errors stay fast.
    import hnswlib

    from training import evaluate as ev
    from training.export import (
        append_head,
        check_encoder_parity,
        export_encoder,
        quantize_int8,
    )
    from training.report import cold_start, write_plots
    from training.two_tower import (
        HeadConfig,
        build_pairs,
        load_base,
        seed_everything,
        train_head,
        train_two_tower,
    )

    timer = _Timer(progress)
    spec = UserTextSpec(max_history=prof.max_history)
    started = time.perf_counter()
    seed_everything(seed)

    with timer.stage("load_data"):
        dataset = load_dataset(data_dir, name=dataset_name)
        split = leave_last_out(dataset)
        anchors = _anchors(dataset, split, spec, prof.anchors, prof.horizon)
        if not anchors.texts:
            raise DataError(
                f"{data_dir}: no training examples (need users with at least 2 train "
                "interactions before their held-out items)"
            )
    item_ids = [it.id for it in dataset.items]

    tt_losses: list[float] = []
    if prof.steps > 0:
        with timer.stage("fine_tune", f"{prof.steps} steps x {prof.batch_size} pairs"):
            pairs = build_pairs(dataset, split, spec, prof.max_pairs_per_user)
            if len(pairs) < 2:
                raise DataError(f"{data_dir}: only {len(pairs)} training pairs")
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
            model, tokenizer, tt_losses = tt.model, tt.tokenizer, tt.losses
    else:
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
    ort_options = SessionOptions(device="cpu", intra_op_threads=os.cpu_count() or 1)
    body_dir = work.parent / f"{work.name}.body"
    shutil.rmtree(body_dir, ignore_errors=True)
    try:
        with timer.stage("export_body", "optimum ONNX export of the transformer"):
            export_encoder(model, tokenizer, body_dir / "encoder")
            body = TextEncoder(_staging_bundle(body_dir, version, encoder_spec), ort_options)
        with timer.stage("encode_train", f"{len(anchors.texts)} user texts + catalog"):
            body_items = ev.encode_texts(body, [it.text for it in dataset.items], DIM)
            body_anchors = ev.encode_texts(body, anchors.texts, DIM)
        zero_shot: dict[str, Any] = {}
        if prof.steps == 0:
            # The body is the untrained encoder: the zero-shot baseline, through ONNX.
            with timer.stage("zero_shot", "baseline with the untrained encoder"):
                for phase in ("valid", "test"):
                    cases = ev.eval_cases(dataset, split, spec, phase)
                    uv = ev.encode_texts(body, [c.text for c in cases], DIM)
                    zero_shot[phase] = ev.evaluate_pipelines(
                        cases, uv, item_ids, body_items, None, None, prof.rerank_n
                    )["exact"]

        with timer.stage("train_head", f"{prof.head_epochs} epochs, full-catalog softmax"):
            head_config = HeadConfig(
                epochs=prof.head_epochs,
                temperature=prof.head_temperature,
                out_dim=prof.head_dim,
                identity_decay=prof.head_identity_decay,
            )
            a_users, a_pos = _flatten(anchors.positives)
            head = train_head(body_anchors, a_users, a_pos, body_items, head_config, seed)

        with timer.stage("export_encoder", "head appended + parity check"):
            (work / "encoder").mkdir()
            shutil.copyfile(body_dir / "encoder" / "model.onnx", work / "encoder" / "model.onnx")
            shutil.copyfile(
                body_dir / "encoder" / "tokenizer.json", work / "encoder" / "tokenizer.json"
            )
            append_head(work / "encoder" / "model.onnx", head.weight)
            encoder = TextEncoder(_staging_bundle(work, version, encoder_spec), ort_options)
            sample = [it.text for it in dataset.items[: prof.parity_texts // 2]]
            sample += anchors.texts[: prof.parity_texts - len(sample)]
            encoder_diff = check_encoder_parity(
                model, tokenizer, encoder, sample, prof.max_length, head=head.weight
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

        with timer.stage("build_index", "HNSW"):
            index = hnswlib.Index(space="ip", dim=prof.head_dim)
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
            # Same vectors the served encoder gives (parity above), without re-encoding.
            user_vecs = _project(body_anchors, head.weight)
            hard = (
                _hard_negatives(index, user_vecs, anchors.positives, prof.ranker_hard_k)
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
                a_users,
                a_pos,
                item_vecs,
                r_config,
                seed=seed,
                hard=hard,
                progress=progress,
            )
            ranker_path = export_ranker(rk.model, work / "ranker" / "model.onnx", prof.head_dim)
            ranker_diff = check_ranker_parity(rk.model, ranker_path, prof.head_dim, seed=seed)

        results: dict[str, Any] = {}
        served_user_vecs: dict[str, np.ndarray] = {}
        with timer.stage("evaluate", "ONNX encoder + HNSW + ONNX ranker, valid and test"):
            ranker_session, _ = create_session(ranker_path, ort_options)
            for phase in ("valid", "test"):
                cases = ev.eval_cases(dataset, split, spec, phase)
                uv = ev.encode_texts(encoder, [c.text for c in cases], DIM)
                served_user_vecs[phase] = uv
                res: dict[str, Any] = ev.evaluate_pipelines(
                    cases, uv, item_ids, item_vecs, index, ranker_session, prof.rerank_n
                )
                res["most_popular"] = ev.baseline_most_popular(split, cases, phase)
                if phase in zero_shot:
                    res["zero_shot"] = zero_shot[phase]
                res["users"] = len(cases)
                results[phase] = res

        with timer.stage("cold_start", "held-out items re-trained head, query-only users"):
            cold = cold_start(
                dataset,
                split,
                spec,
                anchors,
                body_anchors,
                body_items,
                body,
                head.weight,
                encoder,
                item_vecs,
                head_config,
                prof.cold_fraction,
                seed,
            )

        int8_report: dict[str, Any] | None = None
        if int8 or prof.int8:
            with timer.stage("int8", "dynamic quantization + speed/quality vs fp32"):
                quantize_int8(work / "encoder" / "model.onnx", work / "encoder" / "model.int8.onnx")
                encoder_spec["int8_model"] = "encoder/model.int8.onnx"
                int8_report = _int8_report(
                    work, version, encoder_spec, encoder, dataset, split, spec, ort_options
                )
    finally:
        shutil.rmtree(body_dir, ignore_errors=True)

    histories = [
        {"user_id": u, "items": dataset.sequence(u)[::-1]}
        for u in sorted(dataset.user_interactions)
    ]
    _write_jsonl(work / "users" / "history.jsonl", histories)

    test = results["test"]
    metrics = {
        # Served path (b) on the test split, plus the headline comparisons.
        f"recall@{EVAL_K}": test["hnsw"]["recall@10"],
        f"ndcg@{EVAL_K}": test["hnsw"]["ndcg@10"],
        f"ranked_recall@{EVAL_K}": test["ranked"]["recall@10"],
        f"ranked_ndcg@{EVAL_K}": test["ranked"]["ndcg@10"],
        "ranked_recall@20": test["ranked"]["recall@20"],
        "most_popular": {k: test["most_popular"][k] for k in ("recall@10", "ndcg@10", "recall@20")},
        "eval_users": test["users"],
    }
    if "zero_shot" in test:
        metrics["zero_shot"] = {
            k: test["zero_shot"][k] for k in ("recall@10", "ndcg@10", "recall@20")
        }
    training = {
        "profile": prof.name,
        "seed": seed,
        "steps": prof.steps,
        "head_epochs": prof.head_epochs,
        "head_dim": prof.head_dim,
        "head_temperature": prof.head_temperature,
        "head_final_loss": round(head.losses[-1], 4) if head.losses else None,
        "anchors": len(anchors.texts),
        "examples": len(a_pos),
        "max_length": prof.max_length,
        "max_history": prof.max_history,
        "ranker_epochs": prof.ranker_epochs,
        "ranker_final_loss": round(rk.losses[-1], 4) if rk.losses else None,
        "ranker_negatives": {
            "random": r_config.random_negatives,
            "hard": r_config.hard_negatives if hard is not None else 0,
            "hard_from_top_k": prof.ranker_hard_k,
        },
        "rerank_n": prof.rerank_n,
        "parity": {"encoder_max_abs_diff": encoder_diff, "ranker_max_abs_diff": ranker_diff},
        "seconds": {**timer.seconds, "total": round(time.perf_counter() - started, 2)},
    }
    report = {
        "version": version,
        "protocol": (
            "leave-last-out by time (RecBole LS+TO), full-catalog ranking excluding the "
            "input history (valid: train items; test: train+valid items)"
        ),
        "results": results,
        "cold_start": cold,
        "int8": int8_report,
        "training": training,
        "profile": asdict(prof),
        "losses": {"two_tower": tt_losses, "head": head.losses, "ranker": rk.losses},
    }
    write_plots(work / "report", report)
    (work / "report" / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    manifest: dict[str, Any] = {
        "version": version,
        "dim": prof.head_dim,
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


def _int8_report(
    work: Path,
    version: str,
    encoder_spec: dict[str, Any],
    fp32: TextEncoder,
    dataset: Dataset,
    split: Split,
    spec: UserTextSpec,
    ort_options: SessionOptions,
) -> dict[str, Any]:
    """Exact-search test metrics and encode time of int8 vs fp32, measured in one run."""
    from training import evaluate as ev

    int8_spec = {**encoder_spec, "model": encoder_spec["int8_model"]}
    int8 = TextEncoder(_staging_bundle(work, version, int8_spec), ort_options)
    cases = ev.eval_cases(dataset, split, spec, "test")
    texts = [c.text for c in cases]
    item_texts = [it.text for it in dataset.items]
    item_ids = [it.id for it in dataset.items]
    out: dict[str, Any] = {}
    for name, enc in (("fp32", fp32), ("int8", int8)):
        enc.encode(texts[:8])  # warm-up
        t0 = time.perf_counter()
        uv = ev.encode_texts(enc, texts, DIM)
        seconds = time.perf_counter() - t0
        iv = ev.encode_texts(enc, item_texts, DIM)
        one = [time.perf_counter()]
        for text in texts[:50]:
            enc.encode([text])
            one.append(time.perf_counter())
        m = ev.evaluate_pipelines(cases, uv, item_ids, iv, None, None, 0)["exact"]
        out[name] = {
            "user_texts_per_s": round(len(texts) / seconds, 1),
            "single_text_ms": round(1000 * float(np.median(np.diff(one))), 2),
            **m,
        }
        if name == "fp32":
            ref_u, ref_i = uv, iv
        else:
            out["max_abs_diff_users"] = float(np.max(np.abs(uv - ref_u)))
            out["max_abs_diff_items"] = float(np.max(np.abs(iv - ref_i)))
    f32, i8 = out["fp32"], out["int8"]
    out["speedup_batch"] = round(i8["user_texts_per_s"] / f32["user_texts_per_s"], 2)
    out["speedup_single"] = round(f32["single_text_ms"] / i8["single_text_ms"], 2)
    out["ndcg@10_change"] = i8["ndcg@10"] - f32["ndcg@10"]
    out["bytes"] = {
        "fp32": (work / encoder_spec["model"]).stat().st_size,
        "int8": (work / encoder_spec["int8_model"]).stat().st_size,
    }
    return out


def profile_with(name: str, **changes: Any) -> Profile:
    """A named profile with some fields changed (for experiments and tests)."""
    return replace(PROFILES[name], **changes)
