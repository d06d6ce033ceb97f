"""Export the fine-tuned encoder to ONNX with optimum and check it against torch.

The bundle's ``encoder/`` holds exactly ``model.onnx`` (one self-contained file: inputs
``input_ids``, ``attention_mask``, ``token_type_ids``; output ``last_hidden_state``) and
``tokenizer.json``. Pooling and normalisation are not in the graph: the serving
:class:`recstack.encoder.TextEncoder` does them in numpy, and :func:`check_encoder_parity`
proves that path gives the same vectors as the torch model that was trained.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from recstack.encoder import TextEncoder
from training.two_tower import embed_eval, set_offline

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODER_OUTPUT = "last_hidden_state"


class EncoderParityError(RuntimeError):
    """The exported encoder (served path) disagrees with the torch model."""


def _check_single_file(path: Path) -> None:
    """Refuse a model with external data or unexpected input/output names."""
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"{path.name}: initializer {init.name} uses external data")
    inputs = sorted(i.name for i in model.graph.input)
    outputs = [o.name for o in model.graph.output]
    if inputs != sorted(ENCODER_INPUTS) or ENCODER_OUTPUT not in outputs:
        raise RuntimeError(
            f"{path.name}: inputs {inputs}, outputs {outputs}; expected {list(ENCODER_INPUTS)}"
            f" -> {ENCODER_OUTPUT}"
        )


def export_encoder(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Write ``out_dir/model.onnx`` and ``out_dir/tokenizer.json``; returns ``out_dir``."""
    set_offline()
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="encoder-export-") as tmp:
        saved, onnx_dir = Path(tmp) / "hf", Path(tmp) / "onnx"
        model.save_pretrained(saved, safe_serialization=True)
        tokenizer.save_pretrained(saved)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ort_model = ORTModelForFeatureExtraction.from_pretrained(
                saved, export=True, local_files_only=True, provider="CPUExecutionProvider"
            )
            ort_model.save_pretrained(onnx_dir)
        src = onnx_dir / "model.onnx"
        extra = [p.name for p in onnx_dir.iterdir() if p.name.startswith("model.onnx") and p != src]
        if extra:
            raise RuntimeError(f"encoder export produced external data files {extra}")
        _check_single_file(src)
        shutil.copyfile(src, out_dir / "model.onnx")
        shutil.copyfile(saved / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir


def check_encoder_parity(
    model: Any,
    tokenizer: Any,
    encoder: TextEncoder,
    texts: Sequence[str],
    max_length: int,
    atol: float = 1e-4,
) -> float:
    """Max |served - torch| over ``texts``; raises EncoderParityError above ``atol``."""
    want = embed_eval(model, tokenizer, list(texts), max_length).numpy()
    got = encoder.encode(list(texts))
    if got.shape != want.shape:
        raise EncoderParityError(f"served encoder shape {got.shape}, torch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= atol:
        raise EncoderParityError(
            f"served encoder vs torch max abs diff {diff:.3g} exceeds {atol:g}"
        )
    return diff
