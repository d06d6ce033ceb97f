"""User tower (training side): windows, causality, the popularity prior, ONNX export
parity, joint fine-tuning of the encoder's top layers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.tower import (
    TowerConfig,
    UserTower,
    check_tower_parity,
    export_tower,
    make_windows,
    popularity_prior,
    right_aligned,
    train_tower,
    user_vectors,
)

TINY = TowerConfig(max_len=4, d_model=8, layers=1, heads=2, dropout=0.0, epochs=3, batch_size=4)


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_windows_are_right_aligned_and_predict_the_next_item() -> None:
    w = make_windows([[0, 1, 2], [5]], max_len=4)
    assert w.inputs.tolist() == [[-1, -1, 0, 1]]  # a 1-item sequence has no target
    assert w.targets.tolist() == [[-1, -1, 1, 2]]
    long = make_windows([list(range(10))], max_len=4)
    # Cut from the end backwards; every consecutive pair is a target exactly once.
    pairs = {
        (int(x), int(y))
        for xs, ys in zip(long.inputs, long.targets, strict=True)
        for x, y in zip(xs, ys, strict=True)
        if y >= 0
    }
    assert pairs == {(i, i + 1) for i in range(9)}


def test_a_later_item_does_not_change_an_earlier_slot() -> None:
    torch.manual_seed(0)
    model = UserTower(6, TINY).eval()
    vecs = _unit_rows(5, 6)
    hist, mask = right_aligned([[0, 1, 2, 3]], vecs, TINY.max_len)
    changed = hist.copy()
    changed[0, -1] = vecs[4]
    with torch.no_grad():
        a = model.forward_all(torch.from_numpy(hist), torch.from_numpy(mask))
        b = model.forward_all(torch.from_numpy(changed), torch.from_numpy(mask))
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)
    assert not torch.allclose(a[0, -1], b[0, -1], atol=1e-4)


def test_popularity_prior_ranks_items_by_count() -> None:
    vecs = _unit_rows(30, 16, seed=1)
    counts = np.arange(30, dtype=np.float32)[::-1] ** 2  # item 0 most popular
    prior = popularity_prior(vecs, counts)
    top = np.argsort(-(vecs @ prior))[:5].tolist()
    assert set(top) <= set(range(8))
    assert np.array_equal(prior, popularity_prior(vecs, counts))  # deterministic
    with pytest.raises(ValueError, match="one positive count"):
        popularity_prior(vecs, np.zeros(30))


def test_export_matches_torch(tmp_path: Path) -> None:
    vecs = _unit_rows(10, 8, seed=3)
    w = make_windows([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6]], TINY.max_len)
    result = train_tower(vecs, w, TINY, seed=0, progress=False)
    path = export_tower(result.model, tmp_path / "tower.onnx")
    rows = [[0], [1, 2, 3], [0, 1, 2, 3, 4, 5, 6]]
    assert check_tower_parity(result.model, path, vecs, rows) < 1e-4
    assert user_vectors(result.model, rows, vecs).shape == (3, 8)


def test_cached_top_layers_give_the_encoders_vectors_and_train_only_the_top() -> None:
    from training.base_encoder import embed_eval, load_base
    from training.finetune import CachedTop

    base, tokenizer = load_base()
    texts = ["Toy Story (1995). Genres: Animation.", "Heat (1995). Genres: Action, Crime.", "a"]
    top = CachedTop.build(base, tokenizer, texts, layers=2, max_length=32)
    want = embed_eval(base, tokenizer, texts, 32)
    assert torch.allclose(top.all_vectors(), want, atol=1e-5)
    # A sub-batch is trimmed to its longest text and still gives the same vectors.
    top.eval()
    with torch.no_grad():
        assert torch.allclose(top(torch.tensor([2])), want[2:], atol=1e-5)

    vecs = top.all_vectors().numpy()
    w = make_windows([[0, 1, 2, 0, 1, 2, 0, 1]] * 4, TINY.max_len)
    cfg = replace(
        TINY,
        train_head=False,
        finetune_layers=2,
        finetune_lr=1e-3,
        finetune_items=2,
        finetune_start=1,
    )
    result = train_tower(vecs, w, cfg, seed=0, progress=False, encoder_top=top)
    merged = top.merged_model()
    tuned = embed_eval(merged, tokenizer, texts, 32).numpy()
    assert result.body_items is not None
    np.testing.assert_allclose(result.body_items, tuned, atol=1e-5)
    assert not np.allclose(tuned, want.numpy(), atol=1e-4)
    # The lower layers and the base model are untouched.
    tuned_low, base_low = merged.encoder.layer[0], base.encoder.layer[0]
    for a, b in zip(tuned_low.parameters(), base_low.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.allclose(embed_eval(base, tokenizer, texts, 32), want)
    fresh = top.fresh_copy()
    assert torch.allclose(fresh.all_vectors(), want, atol=1e-5)
