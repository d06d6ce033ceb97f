"""MMR re-ranking (rank_service.mmr): pure numpy behaviour."""

import numpy as np
import pytest

from rank_service.mmr import mmr_order, normalised_relevance


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def near_duplicates():
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((6, 32)))
    # candidates 0 and 1 are near-duplicates and the two most relevant
    vectors = np.vstack([base[0], unit(base[0] + 0.01 * base[1]), base[1:]])
    scores = np.array([5.0, 4.9, 3.0, 2.5, 2.0, 1.5, 1.0], dtype=np.float32)
    return scores, vectors


def test_lambda_one_equals_plain_ranking():
    rng = np.random.default_rng(1)
    for n in (1, 2, 17, 200):
        scores = rng.standard_normal(n).astype(np.float32)
        scores[: n // 3] = scores[0]  # ties must keep request order, as plain ranking does
        vectors = rng.standard_normal((n, 16)).astype(np.float32)
        plain = np.argsort(-scores, kind="stable")
        assert mmr_order(scores, vectors, 1.0).tolist() == plain.tolist()
        assert mmr_order(scores, vectors, 1.0, k=5).tolist() == plain[:5].tolist()


def test_near_duplicates_not_both_in_top_k(near_duplicates):
    scores, vectors = near_duplicates
    plain = np.argsort(-scores, kind="stable")[:3].tolist()
    assert plain[:2] == [0, 1]
    diverse = mmr_order(scores, vectors, 0.5, k=3).tolist()
    assert diverse[0] == 0  # the most relevant is always picked first
    assert 1 not in diverse


def test_full_order_is_a_permutation_and_k_is_a_prefix(near_duplicates):
    scores, vectors = near_duplicates
    full = mmr_order(scores, vectors, 0.3)
    assert sorted(full.tolist()) == list(range(len(scores)))
    assert mmr_order(scores, vectors, 0.3, k=4).tolist() == full[:4].tolist()
    assert mmr_order(scores, vectors, 0.3, k=100).tolist() == full.tolist()


def test_gram_and_matvec_paths_agree():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal(300).astype(np.float32)
    vectors = rng.standard_normal((300, 24)).astype(np.float32)
    full = mmr_order(scores, vectors, 0.6)  # k = 300: precomputed similarities
    assert mmr_order(scores, vectors, 0.6, k=8).tolist() == full[:8].tolist()  # mat-vec path


def test_relevance_normalisation():
    rel = normalised_relevance(np.array([2.0, -1.0, 0.5], dtype=np.float32))
    assert rel.tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert normalised_relevance(np.array([3.0, 3.0], dtype=np.float32)).tolist() == [0.0, 0.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="lambda"):
        mmr_order(np.zeros(2, np.float32), np.zeros((2, 3), np.float32), 1.5)
    with pytest.raises(ValueError, match="vectors"):
        mmr_order(np.zeros(2, np.float32), np.zeros((3, 3), np.float32), 0.5)
    assert mmr_order(np.zeros(0, np.float32), np.zeros((0, 3), np.float32), 0.5).size == 0
