"""The second-stage ranker: an MLP over fused (user, item) vectors and side features.

The rank service is stateless and receives the user vector, the candidate vectors and, per
candidate, the side features named in :data:`recstack.core.features.RANKER_FEATURES` (computed
by the gateway from recall's answer, the bundle's item statistics and the user's history):
``user[N, dim]``, ``item[N, dim]``, ``features[N, F]`` (float32) -> logit ``score[N]``.
The fusion ``concat(user, item, user*item, |user-item|)`` and the standardisation of the
features live inside the model (and the exported graph), so callers never re-implement
them.

Training is **listwise on recall's own candidates**, i.e. on what the ranker sees when
serving: for a history before a held-out train position, the candidates are the HNSW
top-N (history excluded) of the user tower's vector, and the loss is the softmax
cross-entropy of the item that came next among them (lists that do not contain it teach
nothing and are skipped). The positions used are ones the tower was *not* trained to
predict (``Profile.ranker_holdout``), so recall scores have their serving-time
distribution rather than the over-confident one of training data.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from tqdm import tqdm

INPUTS = ("user", "item")
FEATURES_INPUT = "features"
OUTPUT = "score"
FUSION = ("concat", "product", "absdiff")
OPSET = 17


class RankerParityError(RuntimeError):
    """The exported ONNX ranker disagrees with the torch model."""


class FusionRanker(nn.Module):
    """score = MLP(LayerNorm(concat(u, i, u*i, |u-i|)) ++ standardised features)."""

    f_mean: torch.Tensor
    f_std: torch.Tensor

    def __init__(
        self,
        dim: int,
        hidden: tuple[int, ...] = (256, 64),
        dropout: float = 0.1,
        features: int = 0,
    ) -> None:
        super().__init__()
        self.features = features
        # Unit vectors have entries near 1/sqrt(dim) and products near 1/dim: the LayerNorm
        # puts the fused features on a common scale so the MLP trains in a few epochs.
        self.norm = nn.LayerNorm(4 * dim)
        # Side features are standardised with the training set's mean/std (buffers, so
        # they are part of the exported graph).
        self.register_buffer("f_mean", torch.zeros(features))
        self.register_buffer("f_std", torch.ones(features))
        layers: list[nn.Module] = []
        width = 4 * dim + features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        fused = self.norm(torch.cat([user, item, user * item, (user - item).abs()], dim=-1))
        if self.features:
            assert features is not None
            fused = torch.cat([fused, (features - self.f_mean) / self.f_std], dim=-1)
        return self.mlp(fused).squeeze(-1)


@dataclass
class RankerConfig:
    epochs: int
    batch_size: int = 64  # lists per step
    lr: float = 1e-3
    hidden: tuple[int, ...] = (256, 64)
    weight_decay: float = 1e-4
    dropout: float = 0.1
    # Exponential moving average of the weights, updated after every step (0 = off: the
    # last step's weights). See Profile.ranker_ema for the measurement.
    ema: float = 0.0


@dataclass
class RankerLists:
    """Training lists: a user vector, its N candidates, their features and the target."""

    users: np.ndarray  # [M, dim]
    candidates: np.ndarray  # [M, N] item rows
    features: np.ndarray  # [M, N, F]
    target: np.ndarray  # [M] position of the next item within the list


@dataclass
class RankerResult:
    model: FusionRanker
    losses: list[float] = field(default_factory=list)
    lists: int = 0
    seconds: float = 0.0


def train_ranker(
    lists: RankerLists,
    item_vecs: np.ndarray,
    config: RankerConfig,
    seed: int,
    progress: bool = True,
) -> RankerResult:
    """Listwise softmax cross-entropy of the target among each list's candidates."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m, n = lists.candidates.shape
    f = lists.features.shape[2]
    dim = item_vecs.shape[1]
    model = FusionRanker(dim, config.hidden, config.dropout, features=f)
    if f:
        flat = lists.features.reshape(-1, f)
        model.f_mean.copy_(torch.from_numpy(flat.mean(axis=0).astype(np.float32)))
        std = flat.std(axis=0)
        # A (near-)constant feature carries no signal: scale 1 rather than blow it up.
        model.f_std.copy_(torch.from_numpy(np.where(std < 1e-3, 1.0, std).astype(np.float32)))
    users = torch.from_numpy(np.ascontiguousarray(lists.users, dtype=np.float32))
    items = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32))
    cands = torch.from_numpy(lists.candidates.astype(np.int64))
    feats = torch.from_numpy(np.ascontiguousarray(lists.features, dtype=np.float32))
    target = torch.from_numpy(lists.target.astype(np.int64))
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = RankerResult(model, lists=m)
    average = _WeightAverage(model, config.ema) if config.ema else None
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(config.epochs), desc="ranker", disable=not progress, unit="epoch"):
        perm = torch.from_numpy(rng.permutation(m))
        total, batches = 0.0, 0
        for s in range(0, m, config.batch_size):
            b = perm[s : s + config.batch_size]
            u = users[b][:, None, :].expand(-1, n, -1).reshape(-1, dim)
            i = items[cands[b].reshape(-1)]
            logits = model(u, i, feats[b].reshape(-1, f) if f else None).reshape(len(b), n)
            loss = F.cross_entropy(logits, target[b])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if average is not None:
                average.update(model)
            total += float(loss.detach())
            batches += 1
        result.losses.append(total / max(1, batches))
    if average is not None:
        # The losses above are the raw weights'; the exported model is the average.
        model.load_state_dict(average.state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


class _WeightAverage:
    """Exponential moving average of a model's parameters and buffers.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` after step ``t`` (as in
    TensorFlow's ExponentialMovingAverage with ``num_updates``), so the random
    initialisation has no weight left in a short run (the tiny profile's few dozen steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, v in model.state_dict().items():
            self.state[k].mul_(d).add_(v.detach(), alpha=1.0 - d)


def _names(model: FusionRanker) -> list[str]:
    return [*INPUTS, FEATURES_INPUT] if model.features else list(INPUTS)


def export_ranker(model: FusionRanker, path: Path, dim: int) -> Path:
    """Export to a single-file ONNX model: inputs user/item(/features), output score."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example: tuple[torch.Tensor, ...] = (torch.randn(3, dim), torch.randn(3, dim))
    if model.features:
        example += (torch.randn(3, model.features),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter writes one self-contained file with the requested names
        # and dynamic batch axis; the graph is small, so no external data is ever produced.
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=_names(model),
            output_names=[OUTPUT],
            dynamic_axes={name: {0: "n"} for name in [*_names(model), OUTPUT]},
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
    feats = (rng.standard_normal((n, model.features)) * 2).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names != _names(model) or [o.name for o in sess.get_outputs()] != [OUTPUT]:
        raise RankerParityError(f"ranker ONNX has inputs {names}, expected {_names(model)}")
    feed = {"user": user, "item": item}
    if model.features:
        feed[FEATURES_INPUT] = feats
    got = sess.run([OUTPUT], feed)[0]
    model.eval()
    with torch.no_grad():
        want = model(
            torch.from_numpy(user),
            torch.from_numpy(item),
            torch.from_numpy(feats) if model.features else None,
        ).numpy()
    if got.shape != want.shape:
        raise RankerParityError(f"ranker ONNX output shape {got.shape}, torch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= atol:
        raise RankerParityError(f"ranker ONNX vs torch max abs diff {diff:.3g} exceeds {atol:g}")
    return diff
