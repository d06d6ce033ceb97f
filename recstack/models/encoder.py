"""The serving-side text encoder: tokenizers + ONNX Runtime + mean pooling + L2 norm.

Mirrors the sentence-transformers pipeline of all-MiniLM-L6-v2 (mean pooling over real
tokens, then normalisation) with no torch: training checks parity against this class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from recstack.core.bundle import Bundle
from recstack.core.errors import BundleError
from recstack.core.vectors import F32Array, l2_normalize
from recstack.models.ort import SessionOptions, create_session


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> F32Array:
    """Average token states over positions where the mask is 1."""
    mask = attention_mask.astype(np.float32)[..., None]
    summed = (hidden.astype(np.float32) * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), 1e-9)
    return (summed / counts).astype(np.float32)


class TextEncoder:
    """Encode texts to L2-normalised vectors with the bundle's ONNX encoder."""

    def __init__(
        self, bundle: Bundle, options: SessionOptions, batch_size: int = 32, int8: bool = False
    ) -> None:
        """``int8`` selects the bundle's dynamically quantised encoder (``int8_model``)."""
        spec = bundle.section("encoder")
        model = spec.get("int8_model") if int8 else spec["model"]
        if not model:
            raise BundleError(
                f"bundle {bundle.version} has no int8 encoder "
                "(build it with `python -m training build ... --int8`)"
            )
        self.max_length = int(spec["max_length"])
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(bundle.path(spec["tokenizer"])))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.session, self.provider = create_session(bundle.path(model), options)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.dim = bundle.dim

    def encode(self, texts: Sequence[str]) -> F32Array:
        """Vectors of shape (len(texts), dim), each of unit length."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            encs = self.tokenizer.encode_batch(batch)
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feed["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
            hidden = self.session.run(["last_hidden_state"], feed)[0]
            out[start : start + len(batch)] = l2_normalize(mean_pool(hidden, mask))
        return out
