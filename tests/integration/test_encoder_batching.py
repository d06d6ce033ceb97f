"""The recall core's query encoder behind the dynamic batcher: concurrent texts share ORT
runs, every caller gets exactly its own vectors, and a closed core still encodes."""

import threading

import numpy as np
from prometheus_client import REGISTRY

from recall_service.replica import Replica
from recstack.core.config import OrtOptions
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions
from tests.conftest import recall_options

TEXTS = [f"a film about {w}" for w in ("pirates", "jazz", "robots", "chess", "rain", "bees")]


def runs_so_far() -> float:
    return REGISTRY.get_sample_value("recstack_encoder_batch_requests_count") or 0.0


def test_concurrent_texts_share_runs_and_get_their_own_vectors(bundle_dir, bundle, tmp_path):
    # A long window so that the six concurrent calls surely meet in the queue.
    options = recall_options(bundle_dir, tmp_path, encoder_max_delay_ms=300.0)
    replica = Replica(options, OrtOptions().session_options())
    replica.load()
    core = replica.versions.primary()
    direct = TextEncoder(bundle, SessionOptions(device="cpu")).encode(TEXTS)
    got: dict[int, np.ndarray] = {}
    before = runs_so_far()
    start = threading.Barrier(len(TEXTS))

    def call(n: int) -> None:
        start.wait()
        got[n] = core.encode([TEXTS[n]])

    threads = [threading.Thread(target=call, args=(n,)) for n in range(len(TEXTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    runs = runs_so_far() - before
    assert 1 <= runs < len(TEXTS), f"{runs} encoder runs for {len(TEXTS)} concurrent texts"
    for n in range(len(TEXTS)):
        assert got[n].shape == (1, bundle.dim)
        np.testing.assert_allclose(got[n][0], direct[n], atol=1e-5)
    # After close (a hot swap retires the core) late callers are still answered, directly.
    replica.close()
    np.testing.assert_allclose(core.encode(TEXTS[:2]), direct[:2], atol=1e-5)
    assert runs_so_far() == before + runs


def test_batching_off_encodes_directly(bundle_dir, bundle, tmp_path):
    options = recall_options(bundle_dir, tmp_path, encoder_batching=False)
    replica = Replica(options, OrtOptions().session_options())
    replica.load()
    try:
        before = runs_so_far()
        vectors = replica.versions.primary().encode(TEXTS)
        direct = TextEncoder(bundle, SessionOptions(device="cpu")).encode(TEXTS)
        np.testing.assert_allclose(vectors, direct, atol=1e-5)
        assert runs_so_far() == before
    finally:
        replica.close()
