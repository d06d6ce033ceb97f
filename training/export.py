"""Export the fine-tuned encoder to ONNX with optimum and check it against torch.

The bundle's ``encoder/`` holds exactly ``model.onnx`` (one self-contained file: inputs
``input_ids``, ``attention_mask``, ``token_type_ids``; output ``last_hidden_state``) and
``tokenizer.json``. Pooling and normalisation are not in the graph: the serving
:class:`recstack.models.encoder.TextEncoder` does them in numpy, and :func:`check_encoder_parity`
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

from recstack.models.encoder import TextEncoder
from training.base_encoder import embed_eval, set_offline

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
    head: np.ndarray | None = None,
) -> float:
    """Max |served - torch| over ``texts``; raises EncoderParityError above ``atol``."""
    want = embed_with_head(model, tokenizer, texts, max_length, head)
    got = encoder.encode(list(texts))
    if got.shape != want.shape:
        raise EncoderParityError(f"served encoder shape {got.shape}, torch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= atol:
        raise EncoderParityError(
            f"served encoder vs torch max abs diff {diff:.3g} exceeds {atol:g}"
        )
    return diff


BODY_OUTPUT = "last_hidden_state_body"
HEAD_NODE = "head"


def append_head(path: Path, weight: np.ndarray) -> Path:
    """Append ``MatMul(last_hidden_state, weight)`` to the encoder graph, in place.

    The output keeps its name ``last_hidden_state`` (now ``[batch, seq, out_dim]``), so
    the serving encoder's mean pooling + L2 normalisation give ``normalize(pooled @ W)``.
    """
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = [BODY_OUTPUT if o == ENCODER_OUTPUT else o for o in node.output]
    graph.initializer.append(
        numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), "head_weight")
    )
    graph.node.append(
        helper.make_node("MatMul", [BODY_OUTPUT, "head_weight"], [ENCODER_OUTPUT], name=HEAD_NODE)
    )
    for out in graph.output:
        if out.name == ENCODER_OUTPUT:
            out.type.tensor_type.shape.dim[2].ClearField("dim_param")
            out.type.tensor_type.shape.dim[2].dim_value = int(weight.shape[1])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    _check_single_file(path)
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization of the transformer: weights int8 **per output channel**,
    activations quantized on the fly; the projection head (node ``head``, see
    :func:`append_head`) stays fp32, since its error lands directly in every vector.

    Uses ``onnxruntime.quantization.quantize_dynamic``: only standard ONNX operators
    (MatMulInteger, DynamicQuantizeLinear), one self-contained file. Per-tensor scales
    (the previous default) cost measurably more quality (docs/model-quality.md).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    names = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=[HEAD_NODE] if HEAD_NODE in names else [],
        )
    _check_single_file(dst)
    return dst


def embed_with_head(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, weight: np.ndarray | None
) -> np.ndarray:
    """The torch reference of the served vectors: encoder, mean pooling, head, L2 norm."""
    vecs = embed_eval(model, tokenizer, list(texts), max_length).numpy()
    if weight is None:
        return vecs
    out = vecs @ weight
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
