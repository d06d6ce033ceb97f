"""The serving encoder: unit vectors, batching-invariant, and the int8 option."""

import numpy as np
import pytest

from recstack.core.bundle import Bundle
from recstack.core.errors import BundleError
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions

TEXTS = ["a space adventure", "recently liked: Toy Story; Heat", "", "x " * 500]


def test_unit_vectors_independent_of_batching(bundle):
    encoder = TextEncoder(bundle, SessionOptions(device="cpu"), batch_size=2)
    batched = encoder.encode(TEXTS)
    assert batched.shape == (len(TEXTS), bundle.dim)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_int8_encoder_option(bundle):
    # The tiny test profile builds the int8 encoder, as ``build --int8`` does.
    assert bundle.section("encoder").get("int8_model")
    fp32 = TextEncoder(bundle, SessionOptions(device="cpu")).encode(TEXTS[:2])
    int8 = TextEncoder(bundle, SessionOptions(device="cpu"), int8=True).encode(TEXTS[:2])
    assert (fp32 * int8).sum(axis=1).min() > 0.9
    assert not np.allclose(fp32, int8, atol=1e-5)  # really another model


def test_int8_asked_of_a_bundle_without_one_is_a_clear_error(bundle):
    manifest = dict(bundle.manifest)
    manifest["encoder"] = {k: v for k, v in manifest["encoder"].items() if k != "int8_model"}
    without = Bundle(bundle.root, manifest, verify_on_use=False)
    with pytest.raises(BundleError, match="no int8 encoder"):
        TextEncoder(without, SessionOptions(device="cpu"), int8=True)
