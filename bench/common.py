"""Helpers shared by the benchmarks: a bundle to measure, and robust timing."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recstack.core.bundle import Bundle
from recstack.core.errors import BundleError
from recstack.core.vectors import F32Array, l2_normalize


def ensure_bundle(path: str) -> Bundle:
    """The bundle at ``path``, or (when there is none) a tiny one trained on synthetic data."""
    try:
        return Bundle.open(path)
    except BundleError:
        pass
    from training.data import write_synthetic_dataset
    from training.pipeline import build_bundle

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"no bundle at {path!r}: training the tiny one into {tmp}", flush=True)
    data = write_synthetic_dataset(tmp / "data")
    return Bundle.open(build_bundle(data, tmp / "bundles", profile="tiny", progress=False))


def median_ms(fn: Callable[[], Any], min_calls: int, budget_s: float) -> float:
    """Median wall time of ``fn`` in ms over at least ``min_calls`` calls / ``budget_s``."""
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < min_calls or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def percentile_ms(samples_s: list[float], q: float) -> float:
    ordered = sorted(samples_s)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


def clustered(n: int, rng: np.random.Generator, centers: F32Array) -> F32Array:
    """Unit vectors around random centres (top-1 cosine about 0.4, like text embeddings).

    Isotropic random vectors in 384 dims are nearly equidistant from each other, which no
    real embedding is, and make every ANN index look broken; clusters are the honest test.
    """
    picks = centers[rng.integers(0, len(centers), n)]
    return l2_normalize(picks + 0.08 * rng.standard_normal((n, centers.shape[1])))
