"""User tower: a small causal transformer over the BERT vectors of a user's recent items.

The user vector is computed from the *item vectors* of the history (each computed once per
item by the text encoder: at build time, or when an item is upserted), so serving a
history needs no transformer pass over text, and a new item is usable in a history (and
as a candidate) from its text alone.

Shapes (``D`` = item vector dimension, ``L`` = ``max_len`` slots):

- input ``history`` [B, L, D] float32: item vectors, **right-aligned** (the most recent item
  in slot L-1, empty slots on the left are zeros);
- input ``mask`` [B, L] float32: 1 for a real item, 0 for an empty slot;
- output ``user`` [B, D]: the user vector at slot L-1; an item's score is ``user . item``.

Items enter the tower through one learned projection ``P`` [d, D] (d = ``d_model`` << D),
shared by input and output (tied, as SASRec ties its item embeddings): slot inputs are
``P item``, and the transformer's last state ``h`` [d] scores an item as ``h . (P item)``.
That equals ``(P^T h) . item``, so the exported model returns ``user = P^T h`` in the item
space and the HNSW index over the D-dim item vectors serves it unchanged, while training
computes the full-catalog logits in d dimensions (D/d times cheaper).

Training is SASRec-style: each user's train sequence is cut into windows of ``L + 1``
items; one forward pass scores the next item at *every* position against the **whole
catalog** (softmax cross-entropy; every item is a negative, so no sampling bias and
popularity stays in the scores). Slot positions are absolute (slot j has position j), and
left padding makes the last slot the same position in training and serving.

The item matrix the softmax ranks over is ``normalize(B @ W)``, where ``B`` are the
encoder body's mean-pooled vectors and ``W`` the encoder's projection head (trained jointly
here, then appended to the ONNX encoder): the tower's inputs and the catalog it ranks are
exactly the vectors the serving encoder produces.

The attention is written out with plain matmuls and an additive mask (no
``nn.TransformerEncoder``: its fast path returns NaN for fully padded rows under a causal
mask, and the plain ops export to ONNX without surprises).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from tqdm import tqdm

if TYPE_CHECKING:
    from training.finetune import CachedTop
    from training.warm import WarmState

HISTORY_INPUT = "history"
MASK_INPUT = "mask"
USER_OUTPUT = "user"
NEG = -1e4  # additive mask value (finite: a fully masked row stays finite, never NaN)


@dataclass(frozen=True)
class TowerConfig:
    """Architecture and training of the user tower (see the module docstring).

    The defaults are the quick profile's, chosen on ML-100K validation
    (docs/model-quality.md)."""

    max_len: int = 50
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    # Quick, validation served NDCG@10 (docs/model-quality.md): 20 epochs 0.0801, 30
    # 0.0830, 40 0.0891 (best epoch 35; paired vs 20 +0.0091, outside the interval). The
    # validation curve was still rising at 20; 40 fits the quick budget (287 s build).
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    temperature: float = 1.0  # logits = h . (P item) / T; the tower learns its own scale
    train_head: bool = True  # train the encoder's projection head W jointly
    head_lr: float = 3e-4
    # Share of each step's target positions scored against the catalog (a fresh uniform
    # draw every step). The full-catalog logits dominate a step's cost; scoring a third of
    # the positions cuts it ~3x, and over epochs every position still gets its turn.
    position_fraction: float = 1.0
    # Fine-tuning the encoder's top layers jointly (``training.finetune``; 0 = frozen
    # encoder): how many layers, their learning rate, catalog rows refreshed per step, and
    # how many epochs the tower trains over the frozen encoder before the layers join
    # (chosen on validation, docs/model-quality.md: joining from the start, or at 2e-5,
    # scored lower).
    finetune_layers: int = 1
    finetune_lr: float = 1e-5
    finetune_items: int = 128
    finetune_start: int = 10


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: masked self-attention + GELU feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not divisible by heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q = q.reshape(b, length, h, d // h).transpose(1, 2)
        k = k.reshape(b, length, h, d // h).transpose(1, 2)
        v = v.reshape(b, length, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h) + bias[:, None]
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, length, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


class UserTower(nn.Module):
    """history [B, L, D] + mask [B, L] -> per-slot user vectors [B, L, D]."""

    causal: torch.Tensor

    def __init__(self, dim: int, config: TowerConfig) -> None:
        super().__init__()
        self.dim = dim
        self.config = config
        d = config.d_model
        self.proj = nn.Linear(dim, d, bias=False)  # P: tied input/output item projection
        self.pos = nn.Embedding(config.max_len, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            _Block(d, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.ln = nn.LayerNorm(d)
        causal = torch.triu(torch.full((config.max_len, config.max_len), NEG), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward_all(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-slot states ``h`` [B, L, d]; slot j's score of item v is ``h_j . proj(v)``."""
        return self.forward_projected(self.proj(history), mask)

    def forward_projected(self, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_all` on already projected slots ``proj(history)`` [B, L, d]
        (training projects the catalog once per step and gathers: L*B/N times cheaper)."""
        length = projected.shape[1]
        pos = self.pos.weight[self.config.max_len - length :]
        x = self.drop(projected + pos[None]) * mask[..., None]
        # Keys in empty slots are masked. A query in an empty slot sees only masked keys:
        # its (finite, since NEG is finite) output is garbage, is never used, and never
        # reaches a real slot, whose attention masks every empty key.
        bias = self.causal[-length:, -length:][None] + (1.0 - mask)[:, None, :] * NEG
        for block in self.blocks:
            x = block(x, bias)
        return self.ln(x)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User vector ``P^T h`` at the last slot, in the item space (what serving runs)."""
        return self.forward_all(history, mask)[:, -1] @ self.proj.weight


# ---------------------------------------------------------------- data


@dataclass
class Windows:
    """Right-aligned training windows: item rows (-1 = empty) and next-item targets."""

    inputs: np.ndarray  # [S, L] int64
    targets: np.ndarray  # [S, L] int64, -1 where there is no target


def make_windows(sequences: Sequence[Sequence[int]], max_len: int) -> Windows:
    """Cut each sequence (item rows, oldest first) into windows of ``max_len + 1`` from the
    end backwards; window slot j predicts the item after it."""
    ins, tgs = [], []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            chunk = list(seq[start:end])
            x, y = chunk[:-1], chunk[1:]
            pad = max_len - len(x)
            ins.append([-1] * pad + x)
            tgs.append([-1] * pad + y)
            end = start + 1 if start > 0 else 0
            if start == 0:
                break
    if not ins:
        return Windows(np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64))
    return Windows(np.asarray(ins, np.int64), np.asarray(tgs, np.int64))


def right_aligned(
    rows: Sequence[Sequence[int]], vectors: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(history [B, L, D], mask [B, L]) for histories given as item rows, oldest first."""
    dim = vectors.shape[1]
    hist = np.zeros((len(rows), max_len, dim), np.float32)
    mask = np.zeros((len(rows), max_len), np.float32)
    for b, seq in enumerate(rows):
        tail = list(seq)[-max_len:]
        if tail:
            hist[b, max_len - len(tail) :] = vectors[tail]
            mask[b, max_len - len(tail) :] = 1.0
    return hist, mask


# ---------------------------------------------------------------- training


@dataclass
class TowerResult:
    model: UserTower
    head: np.ndarray  # [in_dim, dim] encoder projection (identity when not trained)
    item_vectors: np.ndarray  # normalize(body @ head), what the serving encoder gives
    # [N, D] the encoder body's vectors at the end (the fine-tuned encoder's, when it was).
    body_items: np.ndarray | None = None
    losses: list[float] = field(default_factory=list)
    valid_curve: list[tuple[int, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def train_tower(
    body_items: np.ndarray,
    windows: Windows,
    config: TowerConfig,
    *,
    seed: int,
    catalog: np.ndarray | None = None,
    validate: Callable[[UserTower, np.ndarray], float] | None = None,
    validate_every: int = 5,
    progress: bool = True,
    encoder_top: CachedTop | None = None,
    init: WarmState | None = None,
) -> TowerResult:
    """Train tower (+ head, + the encoder's top layers) with full-catalog
    softmax at every position.

    ``body_items`` [N, D] are the encoder body's item vectors. ``catalog`` (item rows,
    default all) is what the softmax ranks over: items outside it are unknown at training
    time (cold-start protocol). ``validate(model, item_vectors) -> score`` is called every
    ``validate_every`` epochs; the weights of the best-scoring epoch are kept.
    ``encoder_top`` (trained in place; its rows are ``body_items``' rows) fine-tunes the
    encoder's top layers jointly (:mod:`training.finetune`); ``body_items`` is then only
    the starting cache. ``init`` (:mod:`training.warm`) starts the tower and the head from
    an earlier bundle's weights (the caller loads its encoder layers into ``encoder_top``).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dim = body_items.shape[1]
    model = UserTower(dim, config)
    body = torch.from_numpy(np.array(body_items, np.float32))  # a copy: the cache mutates
    head = nn.Parameter(torch.eye(dim), requires_grad=config.train_head)
    if init is not None:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init.tower.items()})
        with torch.no_grad():
            head.copy_(torch.from_numpy(init.head))
    params: list[dict[str, Any]] = [{"params": model.parameters(), "lr": config.lr}]
    if config.train_head:
        params.append({"params": [head], "lr": config.head_lr})
    n_items = len(body)
    if encoder_top is not None:
        if len(encoder_top.states) != n_items:
            raise ValueError("encoder_top rows do not match body_items")
        params.append({"params": encoder_top.parameters(), "lr": config.finetune_lr})
    optim = torch.optim.AdamW(params, weight_decay=config.weight_decay)

    def items_from(text_body: torch.Tensor) -> torch.Tensor:
        return _unit(text_body @ head)

    def exact_body() -> None:
        if encoder_top is not None:
            body[:] = encoder_top.all_vectors()

    cat = torch.arange(n_items) if catalog is None else torch.from_numpy(np.asarray(catalog))
    remap = torch.full((n_items,), -1, dtype=torch.int64)
    remap[cat] = torch.arange(len(cat))
    inputs = torch.from_numpy(windows.inputs)
    targets = torch.from_numpy(windows.targets)
    t_mapped = torch.where(targets >= 0, remap[targets.clamp(min=0)], torch.full_like(targets, -1))
    if bool(((targets >= 0) & (t_mapped < 0)).any()):
        raise ValueError("a training target is outside the training catalog")
    result = TowerResult(model, np.eye(dim, dtype=np.float32), body_items.copy())

    def snapshot() -> dict[str, dict[str, torch.Tensor]]:
        parts = {"tower": model.state_dict(), "head": {"head": head}}
        if encoder_top is not None:
            parts["encoder"] = encoder_top.state_dict()
        return {k: {n: t.detach().clone() for n, t in v.items()} for k, v in parts.items()}

    best_state: dict[str, dict[str, torch.Tensor]] | None = None
    best = -math.inf
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="user tower", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        tuning = encoder_top is not None and epoch >= config.finetune_start
        perm = torch.randperm(len(inputs), generator=gen)
        total, batches = 0.0, 0
        for s in range(0, len(perm), config.batch_size):
            b = perm[s : s + config.batch_size]
            rows = None
            if encoder_top is None or not tuning:
                projected = model.proj(items_from(body))  # [N, d]: every item, once
            else:
                # Fresh (differentiable) vectors for a sample of the catalog, the cached
                # ones for the rest; the cache takes the fresh values after the step.
                pick = torch.randperm(len(cat), generator=gen)[: config.finetune_items]
                rows = cat[pick]
                fresh = encoder_top(rows)
                projected = model.proj(items_from(body.index_copy(0, rows, fresh)))
            x, y = inputs[b], t_mapped[b]
            mask = (x >= 0).to(torch.float32)
            states = model.forward_projected(projected[x.clamp(min=0)], mask)
            keep = y >= 0
            if config.position_fraction < 1.0:
                draw = torch.rand(keep.shape, generator=gen) < config.position_fraction
                keep = keep & draw
            logits = states[keep] @ projected[cat].T / config.temperature
            loss = F.cross_entropy(logits, y[keep])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if rows is not None:
                body[rows] = fresh.detach()
            total += float(loss.detach())
            batches += 1
        result.losses.append(total / max(1, batches))
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
        last = epoch + 1 == config.epochs
        if validate is not None and ((epoch + 1) % validate_every == 0 or last):
            model.eval()
            exact_body()
            with torch.no_grad():
                vecs = items_from(body).numpy()
            score = validate(model, vecs)
            result.valid_curve.append((epoch + 1, score))
            if score > best:
                best, result.best_epoch = score, epoch + 1
                best_state = snapshot()
    if best_state is not None:
        model.load_state_dict(best_state["tower"])
        with torch.no_grad():
            head.copy_(best_state["head"]["head"])
        if encoder_top is not None:
            encoder_top.load_state_dict(best_state["encoder"])
    else:
        result.best_epoch = config.epochs
    model.eval()
    exact_body()
    with torch.no_grad():
        result.head = head.detach().numpy().astype(np.float32)
        result.body_items = body.numpy().astype(np.float32)
        result.item_vectors = _unit(body @ head).numpy().astype(np.float32)
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def user_vectors(
    model: UserTower, rows: Sequence[Sequence[int]], item_vectors: np.ndarray
) -> np.ndarray:
    """Torch reference of what the exported tower computes for histories of item rows."""
    model.eval()
    hist, mask = right_aligned(rows, item_vectors, model.config.max_len)
    out = [
        model(torch.from_numpy(hist[i : i + 512]), torch.from_numpy(mask[i : i + 512]))
        for i in range(0, len(rows), 512)
    ]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.dim))


def popularity_prior(
    item_vectors: np.ndarray, counts: np.ndarray, steps: int = 300, lr: float = 0.05
) -> np.ndarray:
    """The one user vector that best explains how often each item was chosen:
    ``argmax_p sum_i counts_i * log softmax(V p)_i`` (full batch Adam from 0, so
    deterministic). Ranking the catalog by ``p . item`` is most-popular as closely as the
    embedding space can express it (the mean of the users' vectors is much further from
    it); serving gives it to users with neither history nor query, and blends it into new
    users' query vectors."""
    vecs = torch.from_numpy(np.ascontiguousarray(item_vectors, np.float32))
    weights = torch.from_numpy(np.asarray(counts, np.float32))
    if vecs.shape[0] != weights.shape[0] or float(weights.sum()) <= 0:
        raise ValueError("popularity_prior needs one positive count per item row")
    weights = weights / weights.sum()
    p = torch.zeros(vecs.shape[1], requires_grad=True)
    optim = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        loss = -(weights * F.log_softmax(vecs @ p, dim=0)).sum()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return p.detach().numpy().astype(np.float32)


# ---------------------------------------------------------------- export


def export_tower(model: UserTower, path: Path) -> Path:
    """torch.onnx export of the serving forward (last-slot user vector), dynamic batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    length, dim = model.config.max_len, model.dim
    hist = torch.zeros(2, length, dim)
    mask = torch.zeros(2, length)
    mask[:, -3:] = 1.0
    torch.onnx.export(
        model,
        (hist, mask),
        str(path),
        input_names=[HISTORY_INPUT, MASK_INPUT],
        output_names=[USER_OUTPUT],
        dynamic_axes={
            HISTORY_INPUT: {0: "batch"},
            MASK_INPUT: {0: "batch"},
            USER_OUTPUT: {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    return path


def check_tower_parity(
    model: UserTower,
    path: Path,
    item_vectors: np.ndarray,
    rows: Sequence[Sequence[int]],
    tolerance: float = 1e-4,
) -> float:
    """Max |torch - ONNX| over the user vectors of ``rows``; raises beyond ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hist, mask = right_aligned(rows, item_vectors, model.config.max_len)
    got = session.run([USER_OUTPUT], {HISTORY_INPUT: hist, MASK_INPUT: mask})[0]
    want = user_vectors(model, rows, item_vectors)
    diff = float(np.max(np.abs(got - want))) if len(rows) else 0.0
    if not np.isfinite(got).all() or diff > tolerance:
        raise RuntimeError(f"user tower ONNX parity failed: max abs diff {diff:.2e}")
    return diff
