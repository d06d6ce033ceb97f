"""The serving encoder: unit vectors, batching-invariant, and the int8 option."""

import numpy as np
import pytest

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
    if not bundle.section("encoder").get("int8_model"):
        with pytest.raises(BundleError, match="no int8 encoder"):
            TextEncoder(bundle, SessionOptions(device="cpu"), int8=True)
        return
    fp32 = TextEncoder(bundle, SessionOptions(device="cpu")).encode(TEXTS[:2])
    int8 = TextEncoder(bundle, SessionOptions(device="cpu"), int8=True).encode(TEXTS[:2])
    assert (fp32 * int8).sum(axis=1).min() > 0.9
