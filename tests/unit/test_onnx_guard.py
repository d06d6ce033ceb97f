"""The ONNX model guard refuses external data outside the bundle and custom op domains."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from recstack.core.errors import BundleError
from recstack.models.onnx_guard import check_model
from recstack.models.ort import SessionOptions, create_session


def model_with_weight(tmp_path, location=None, domain=""):
    weight = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), name="w")
    if location is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location
    node = helper.make_node("MatMul", ["x", "w"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_plain_model_passes_and_runs(tmp_path):
    path = model_with_weight(tmp_path)
    check_model(path)
    session, provider = create_session(path, SessionOptions(device="cpu"))
    out = session.run(None, {"x": np.ones((1, 2), dtype=np.float32)})[0]
    np.testing.assert_array_equal(out, [[2.0, 2.0]])
    assert provider == "CPUExecutionProvider"


def test_external_data_inside_the_directory_is_allowed(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    check_model(model_with_weight(tmp_path, "w.bin"))


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "a/../../x", ""])
def test_escaping_external_data_is_refused(tmp_path, location):
    with pytest.raises(BundleError, match="external data"):
        check_model(model_with_weight(tmp_path, location))


def test_symlinked_external_data_is_refused(tmp_path):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    inner = tmp_path / "bundle"
    inner.mkdir()
    os.symlink(tmp_path / "outside.bin", inner / "w.bin")
    with pytest.raises(BundleError, match="symlink"):
        check_model(model_with_weight(inner, "w.bin"))


def test_custom_operator_domain_is_refused_before_ort_sees_it(tmp_path):
    path = model_with_weight(tmp_path, domain="com.evil.ops")
    with pytest.raises(BundleError, match="com.evil.ops"):
        create_session(path, SessionOptions(device="cpu"))


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    with pytest.raises(BundleError, match="truncated|malformed"):
        check_model(path)


def test_real_bundle_models_pass(bundle):
    check_model(bundle.path(bundle.section("encoder")["model"]))
    check_model(bundle.path(bundle.section("ranker")["model"]))
    assert onnx.load(str(bundle.path(bundle.section("ranker")["model"]))).graph.node
