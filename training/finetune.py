"""Fine-tuning the text encoder's top transformer layers under the user tower's objective.

The item encoder (MiniLM, 6 layers) is fine-tuned end to end with the tower: the catalog's
item vectors the full-catalog softmax ranks over, and the tower reads as its inputs, come
from the encoder's top ``layers`` being trained. Two facts make that affordable on a CPU:

- The lower layers are frozen, so their token states for every catalog text are computed
  **once** (:class:`CachedTop` holds them, padded, with their attention mask); a training
  step runs only the top layers.
- A step cannot afford the top layers over the whole catalog (about 1 s forward on 2
  cores for ML-100K), so each step refreshes a uniform sample of
  ``TowerConfig.finetune_items`` catalog rows *with* gradient and ranks against the other
  rows' vectors from the last time they were computed (a stale cache, refreshed as rows
  are sampled; the cached rows are detached). On quick ML-100K (128 rows, 10 steps an
  epoch) a row is refreshed about 0.8 times per epoch; the cache is recomputed exactly
  (:meth:`CachedTop.all_vectors`) before every validation and at the end, so what is
  evaluated and exported is the trained encoder's true output.
- The copies run without dropout: cached and fresh rows must come from one function.

:meth:`CachedTop.merged_model` returns the base model with the trained top layers, which
``training.export`` exports with optimum as before; the parity check compares its ONNX
output with torch. The pooled vectors here are exactly ``training.base_encoder.embed``'s
(mean pooling over real tokens, L2 normalisation), which a unit test holds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def _additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 -> [B, 1, 1, T] additive attention mask (BERT's extended mask)."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min


class CachedTop(nn.Module):
    """Trainable copies of an encoder's top ``layers`` over cached lower-layer token states
    (row ``i`` = catalog text ``i``; :meth:`build` computes them). ``base`` is never
    modified."""

    def __init__(self, base: Any, layers: int, states: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        stack = base.encoder.layer
        if not 1 <= layers <= len(stack):
            raise ValueError(f"fine-tune layers must be in 1..{len(stack)}, not {layers}")
        self.base = base
        self.n_layers = layers
        self.states = states  # [N, T, hidden], output of the frozen lower layers
        self.mask = mask  # [N, T] 1 for real tokens
        self.lengths = mask.sum(dim=1)
        self.top = nn.ModuleList(copy.deepcopy(m) for m in stack[len(stack) - layers :])
        # Always in eval mode (no dropout): the cache mixes rows computed at different
        # steps already; dropout would add a second mismatch, between cached and fresh
        # rows and between training and serving.
        self.eval()

    def train(self, mode: bool = True) -> CachedTop:
        return super().train(False)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        base: Any,
        tokenizer: Any,
        texts: Sequence[str],
        layers: int,
        max_length: int,
        chunk: int = 256,
    ) -> CachedTop:
        """Run the frozen lower layers once over every text (tokenised as the encoder
        does: truncated to ``max_length``, padded to the longest)."""
        stack = base.encoder.layer
        if not 1 <= layers <= len(stack):
            raise ValueError(f"fine-tune layers must be in 1..{len(stack)}, not {layers}")
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        mask = batch["attention_mask"]
        types = batch.get("token_type_ids")
        was_training = base.training
        base.eval()
        parts = []
        for s in range(0, len(texts), chunk):
            h = base.embeddings(
                input_ids=batch["input_ids"][s : s + chunk],
                token_type_ids=None if types is None else types[s : s + chunk],
            )
            ext = _additive_mask(mask[s : s + chunk])
            for layer in stack[: len(stack) - layers]:
                h = layer(h, attention_mask=ext)[0]
            parts.append(h)
        base.train(was_training)
        return cls(base, layers, torch.cat(parts), mask)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Unit mean-pooled vectors [len(rows), hidden] of those texts (with gradient)."""
        width = int(self.lengths[rows].max()) if len(rows) else 1
        h = self.states[rows, :width]
        mask = self.mask[rows, :width]
        ext = _additive_mask(mask)
        for layer in self.top:
            h = layer(h, attention_mask=ext)[0]
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)

    @torch.no_grad()
    def all_vectors(self, chunk: int = 256) -> torch.Tensor:
        """Every row's vector, exactly as the encoder gives it."""
        rows = torch.arange(len(self.states))
        return torch.cat([self(rows[s : s + chunk]) for s in range(0, len(rows), chunk)])

    def top_state(self) -> dict[str, np.ndarray]:
        """The trained layers' weights (numpy; what a bundle keeps for a warm start)."""
        return {k: v.detach().numpy().copy() for k, v in self.top.state_dict().items()}

    def load_top(self, state: dict[str, np.ndarray]) -> None:
        """Start the trained layers from ``state`` (:meth:`top_state` of an earlier build)."""
        self.top.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})

    def fresh_copy(self) -> CachedTop:
        """Another trainable top over the same cached states, reset to the base weights."""
        return CachedTop(self.base, self.n_layers, self.states, self.mask)

    def merged_model(self) -> Any:
        """A copy of the base model with these trained top layers (for export)."""
        model = copy.deepcopy(self.base)
        stack = model.encoder.layer
        for j, layer in enumerate(self.top):
            stack[len(stack) - self.n_layers + j].load_state_dict(layer.state_dict())
        model.eval()
        return model
