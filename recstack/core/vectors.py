"""Packing and validation of float32 vectors carried as bytes on the wire.

Wire format (see protos): little-endian IEEE-754 float32, ``dim`` values per row, rows back
to back. Every decoder here validates length and finiteness and names the request field.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recstack.core.errors import InvalidArgument

WIRE_DTYPE = np.dtype("<f4")
F32Array = npt.NDArray[np.float32]


def pack(vectors: npt.ArrayLike) -> bytes:
    """Pack one vector or a 2-D array of rows to wire bytes."""
    return np.ascontiguousarray(vectors, dtype=WIRE_DTYPE).tobytes()


def unpack_vector(data: bytes, dim: int, field: str) -> F32Array:
    """Decode exactly one vector of ``dim`` values; InvalidArgument naming ``field`` otherwise."""
    return unpack_rows(data, 1, dim, field)[0]


def unpack_rows(data: bytes, rows: int, dim: int, field: str) -> F32Array:
    """Decode ``rows`` vectors of ``dim`` values each into a (rows, dim) float32 array.

    The array is a read-only view of ``data`` (no copy: a [100, 384] block is passed from
    recall to rank without being rebuilt); copy it before writing to it."""
    expected = rows * dim * WIRE_DTYPE.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"expected {rows} x {dim} float32 = {expected} bytes, got {len(data)} bytes",
            field=field,
        )
    arr = np.frombuffer(data, dtype=WIRE_DTYPE).reshape(rows, dim).astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InvalidArgument("contains NaN or infinite values", field=field)
    return arr


def l2_normalize(x: npt.NDArray[np.floating], eps: float = 1e-12) -> F32Array:
    """Row-wise L2 normalisation (the embedding space is the unit sphere).

    Every finite non-zero row becomes unit length: rows whose float32 norm overflows (large
    finite values) or underflows (tiny ones) are rescaled by their largest magnitude first;
    all-zero rows stay zero.
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out = (x / np.maximum(norms, eps)).astype(np.float32)
    bad = (~np.isfinite(norms) | (norms < _NORM_SAFE))[..., 0] & np.any(x != 0, axis=-1)
    if np.any(bad):
        y = x[bad].astype(np.float64)
        y /= np.max(np.abs(y), axis=-1, keepdims=True)
        out[bad] = (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32)
    return out


# Below this float32 norm a row is renormalised in float64 (precision, underflow).
_NORM_SAFE = 1e-6
