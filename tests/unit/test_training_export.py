"""Projection head: training, determinism, ONNX append; int8 quantization parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from training.export import append_head, quantize_int8

DIM = 16


def _toy_encoder(path: Path, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """A stand-in encoder graph: last_hidden_state = Gather(emb, input_ids) @ proj."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((50, dim)).astype(np.float32)
    proj = rng.standard_normal((dim, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["g"]),
            helper.make_node("MatMul", ["g", "proj"], ["last_hidden_state"]),
        ],
        "toy",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", dim])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(proj, "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return emb @ proj


def _run(path: Path, ids: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    zeros = np.zeros_like(ids)
    feed = {"input_ids": ids, "attention_mask": zeros + 1, "token_type_ids": zeros}
    return np.asarray(sess.run(["last_hidden_state"], feed)[0])


def test_append_head_equals_matmul_on_hidden_states(tmp_path: Path) -> None:
    table = _toy_encoder(tmp_path / "model.onnx")
    weight = np.random.default_rng(1).standard_normal((DIM, 8)).astype(np.float32)
    append_head(tmp_path / "model.onnx", weight)
    ids = np.array([[1, 2, 3], [4, 5, 0]], dtype=np.int64)
    got = _run(tmp_path / "model.onnx", ids)
    assert got.shape == (2, 3, 8)
    np.testing.assert_allclose(got, table[ids] @ weight, rtol=1e-5, atol=1e-5)


def test_int8_parity_within_tolerance(tmp_path: Path) -> None:
    """Dynamic int8 keeps mean-pooled, normalised vectors within cosine 0.99 of fp32."""
    _toy_encoder(tmp_path / "model.onnx", dim=64)
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    assert (tmp_path / "model.int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size
    ids = np.random.default_rng(0).integers(0, 50, size=(16, 6))
    a = _run(tmp_path / "model.onnx", ids).mean(axis=1)
    b = _run(tmp_path / "model.int8.onnx", ids).mean(axis=1)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.99
