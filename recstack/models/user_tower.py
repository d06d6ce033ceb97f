"""The serving-side user tower: history item vectors (+ a query vector) -> user vector.

The bundle's ``user`` section names an ONNX model (exported by ``training.tower``) with
inputs ``history`` [B, L, D] (item vectors, right-aligned: the most recent in slot L-1,
empty slots zero) and ``mask`` [B, L] (1 = real slot), and output ``user`` [B, D].

A user with no usable history and no query (e.g. every stored item was deleted since) gets
the bundle's ``prior`` vector (``user/prior.npy``, normalised at load: the one user vector
that best explains how often each item was chosen, ``training.tower.popularity_prior``;
ranking by it is most-popular as closely as the vector space can express).

A free-text query, when given, is encoded by the text encoder into the same space as the
items. A query-only request is that vector (a search: the items whose text is closest),
or, for a *new user* (``user_prior``), ``normalize(query + w * prior)`` with the weight
``w`` chosen at build time on validation (``user.query_prior_weight``): the popularity
that a short genre phrase alone lacks. A user with both history and query gets the
normalised sum of the two unit vectors, "what they would pick next" and "what they ask for
now", weighted equally. No transformer runs over text for a
history-only request; the tower is a few small matmuls.

Training (``training.evaluate``) and the recall service both call :meth:`UserTower.encode`,
so the evaluated user vectors are the served ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.core.bundle import Bundle
from recstack.core.errors import BundleError
from recstack.core.vectors import F32Array, l2_normalize
from recstack.models.ort import SessionOptions, create_session

SECTION = "user"


def right_align(histories: Sequence[F32Array], max_len: int, dim: int) -> tuple[F32Array, F32Array]:
    """(history [B, L, D], mask [B, L]) from per-user [n_i, D] arrays, oldest row first.

    Only the last ``max_len`` rows of each history are used.
    """
    hist = np.zeros((len(histories), max_len, dim), np.float32)
    mask = np.zeros((len(histories), max_len), np.float32)
    for b, rows in enumerate(histories):
        tail = rows[-max_len:]
        if len(tail):
            hist[b, max_len - len(tail) :] = tail
            mask[b, max_len - len(tail) :] = 1.0
    return hist, mask


class UserTower:
    """Run the bundle's user tower with ONNX Runtime (thread-safe: ORT sessions are)."""

    def __init__(self, bundle: Bundle, options: SessionOptions) -> None:
        spec = bundle.section(SECTION)
        self.max_len = int(spec["max_len"])
        self.dim = bundle.dim
        self.input_names = (str(spec["inputs"][0]), str(spec["inputs"][1]))
        self.output = str(spec["output"])
        self.session, self.provider = create_session(bundle.path(spec["model"]), options)
        prior = np.load(bundle.path(spec["prior"]), allow_pickle=False)
        if prior.shape != (self.dim,) or not np.isfinite(prior).all():
            raise BundleError(f"bundle {bundle.version}: user prior has shape {prior.shape}")
        self.prior = l2_normalize(prior.astype(np.float32))
        self.query_prior_weight = float(spec.get("query_prior_weight", 0.0))

    def encode(
        self,
        histories: Sequence[F32Array],
        queries: Sequence[F32Array | None] | None = None,
        user_prior: Sequence[bool] | None = None,
    ) -> F32Array:
        """Unit user vectors [B, D]. Each history is [n_i, D], oldest row first; each query
        (optional) a unit [D] vector; ``user_prior[b]``: a query-only row is a new user.
        Neither history nor query: the prior (see the module docstring)."""
        out = np.empty((len(histories), self.dim), np.float32)
        out[:] = self.prior
        real = [b for b, h in enumerate(histories) if len(h)]
        if real:
            hist, mask = right_align([histories[b] for b in real], self.max_len, self.dim)
            feed = {self.input_names[0]: hist, self.input_names[1]: mask}
            out[real] = l2_normalize(self.session.run([self.output], feed)[0])
        for b, q in enumerate(queries or ()):
            if q is None:
                continue
            if len(histories[b]):
                out[b] = l2_normalize(out[b] + q)
            elif user_prior is not None and user_prior[b] and self.query_prior_weight:
                out[b] = l2_normalize(q + self.query_prior_weight * self.prior)
            else:
                out[b] = q
        return out
