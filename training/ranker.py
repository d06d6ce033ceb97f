"""The second-stage ranker: an MLP over fused (user, item) vectors, exported to ONNX.

The rank service is stateless and receives only the user vector and candidate vectors, so
the ranker sees exactly those: ``user[N, dim]`` and ``item[N, dim]`` (float32) and returns a
logit ``score[N]``. The fusion ``concat(user, item, user*item, |user-item|)`` lives inside
the model (and the exported graph), so callers never re-implement it.

Training examples come from the train split only: the user vector is the serving encoder's
vector of the history text before a train position, the positive is the item at that
position, negatives are uniform random items plus (optionally) hard negatives from the
recall top-k. Loss: binary cross-entropy.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from tqdm import tqdm

INPUTS = ("user", "item")
OUTPUT = "score"
FUSION = ("concat", "product", "absdiff")
OPSET = 17


class RankerParityError(RuntimeError):
    """The exported ONNX ranker disagrees with the torch model."""


class FusionRanker(nn.Module):
    """score = MLP(LayerNorm(concat(user, item, user*item, |user-item|))), one logit per row."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 64), dropout: float = 0.1) -> None:
        super().__init__()
        # Unit vectors have entries near 1/sqrt(dim) and products near 1/dim: the LayerNorm
        # puts the fused features on a common scale so the MLP trains in a few epochs.
        layers: list[nn.Module] = [nn.LayerNorm(4 * dim)]
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([user, item, user * item, (user - item).abs()], dim=-1)
        return self.mlp(fused).squeeze(-1)


@dataclass
class RankerConfig:
    epochs: int
    batch_size: int = 256
    lr: float = 1e-3
    random_negatives: int = 4
    hard_negatives: int = 2
    hidden: tuple[int, ...] = (256, 64)
    weight_decay: float = 1e-4


@dataclass
class RankerResult:
    model: FusionRanker
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    seconds: float = 0.0


def _negatives(
    rng: np.random.Generator,
    users: npt.NDArray[np.int64],
    positives: npt.NDArray[np.int64],
    n_items: int,
    hard: npt.NDArray[np.int64] | None,
    config: RankerConfig,
) -> np.ndarray:
    """[E, k] negative item indices: uniform draws plus draws from the user's hard list.

    A uniform draw equal to the positive is shifted by one (mod n_items), so it is never the
    positive; hard lists already exclude all of their user's positives.
    """
    m = len(positives)
    rand = rng.integers(0, n_items, size=(m, config.random_negatives))
    clash = rand == positives[:, None]
    rand[clash] = (rand[clash] + 1) % n_items
    cols = [rand]
    if hard is not None and hard.shape[1] > 0 and config.hard_negatives > 0:
        pick = rng.integers(0, hard.shape[1], size=(m, config.hard_negatives))
        cols.append(np.take_along_axis(hard[users], pick, axis=1))
    return np.concatenate(cols, axis=1)


def train_ranker(
    user_vecs: np.ndarray,
    users: npt.NDArray[np.int64],
    positives: npt.NDArray[np.int64],
    item_vecs: np.ndarray,
    config: RankerConfig,
    seed: int,
    hard: npt.NDArray[np.int64] | None = None,
    progress: bool = True,
) -> RankerResult:
    """Train on examples (user_vecs[users[e]], item_vecs[positives[e]]) vs sampled negatives.

    Several examples may share one user vector (a history followed by several items).
    ``hard``: optional [len(user_vecs), h] recall candidates per user vector, none of them a
    positive of that user vector, sampled as hard negatives.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_items, dim = item_vecs.shape
    user_t = torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32))
    item_t = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32))
    model = FusionRanker(dim, config.hidden)
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = RankerResult(model, examples=len(positives))
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(config.epochs), desc="ranker", disable=not progress, unit="epoch"):
        neg = _negatives(rng, users, positives, n_items, hard, config)
        k = neg.shape[1]
        # Rows: each example once with its positive and k times with a negative.
        u_idx = np.repeat(users, 1 + k)
        i_idx = np.concatenate([positives[:, None], neg], axis=1).reshape(-1)
        labels = np.tile(np.r_[1.0, np.zeros(k)], len(positives)).astype(np.float32)
        perm = rng.permutation(len(u_idx))
        epoch_loss, batches = 0.0, 0
        for s in range(0, len(perm), config.batch_size):
            b = perm[s : s + config.batch_size]
            logits = model(user_t[u_idx[b]], item_t[i_idx[b]])
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels[b]))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            epoch_loss += float(loss.detach())
            batches += 1
        result.losses.append(epoch_loss / max(1, batches))
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def export_ranker(model: FusionRanker, path: Path, dim: int) -> Path:
    """Export to a single-file ONNX model with inputs user/item and output score."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = (torch.randn(3, dim), torch.randn(3, dim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter writes one self-contained file with the requested names
        # and dynamic batch axis; the graph is small, so no external data is ever produced.
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={"user": {0: "n"}, "item": {0: "n"}, "score": {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    if leftovers:
        raise RuntimeError(f"ranker export wrote unexpected files: {leftovers}")
    return path


def check_ranker_parity(
    model: FusionRanker, path: Path, dim: int, n: int = 64, atol: float = 1e-5, seed: int = 0
) -> float:
    """Max |ORT - torch| on random unit vectors; raises RankerParityError above ``atol``."""
    rng = np.random.default_rng(seed)
    user = rng.standard_normal((n, dim)).astype(np.float32)
    item = rng.standard_normal((n, dim)).astype(np.float32)
    user /= np.linalg.norm(user, axis=1, keepdims=True)
    item /= np.linalg.norm(item, axis=1, keepdims=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names != list(INPUTS) or [o.name for o in sess.get_outputs()] != [OUTPUT]:
        raise RankerParityError(f"ranker ONNX has inputs {names}, expected {list(INPUTS)}")
    got = sess.run([OUTPUT], {"user": user, "item": item})[0]
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(user), torch.from_numpy(item)).numpy()
    if got.shape != want.shape:
        raise RankerParityError(f"ranker ONNX output shape {got.shape}, torch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= atol:
        raise RankerParityError(f"ranker ONNX vs torch max abs diff {diff:.3g} exceeds {atol:g}")
    return diff
