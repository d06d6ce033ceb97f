import numpy as np
import pytest

from recstack.core.errors import InvalidArgument
from recstack.core.vectors import l2_normalize, pack, unpack_rows, unpack_vector


def test_pack_roundtrip_little_endian():
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = pack(v)
    assert data == v.astype("<f4").tobytes()
    np.testing.assert_array_equal(unpack_rows(data, 2, 3, "f"), v)


def test_unpack_wrong_length_names_field():
    with pytest.raises(InvalidArgument) as err:
        unpack_vector(b"\x00" * 10, 4, "user_vector")
    assert err.value.field == "user_vector"
    assert "16 bytes" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_unpack_rejects_non_finite(bad):
    data = pack(np.array([1.0, bad, 0.0], dtype=np.float32))
    with pytest.raises(InvalidArgument, match="NaN or infinite") as err:
        unpack_vector(data, 3, "query_vector")
    assert err.value.field == "query_vector"


def test_l2_normalize_rows_and_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
