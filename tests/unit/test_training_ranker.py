"""Ranker: fusion shape, training on a toy signal, ONNX export and the parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from recstack.core.features import candidate_features
from training.ranker import (
    FusionRanker,
    RankerConfig,
    RankerLists,
    RankerParityError,
    check_ranker_parity,
    export_ranker,
    train_ranker,
)

DIM = 16


def test_fusion_output_shape() -> None:
    model = FusionRanker(DIM, (8,))
    out = model(torch.randn(5, DIM), torch.randn(5, DIM))
    assert out.shape == (5,)


def test_export_single_file_names_dynamic_batch_and_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FusionRanker(DIM, (8,))
    path = export_ranker(model, tmp_path / "ranker" / "model.onnx", DIM)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["user", "item"]
    assert [o.name for o in graph.output] == ["score"]
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert check_ranker_parity(model, path, DIM, n=7) <= 1e-5


def test_parity_check_raises_on_perturbed_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FusionRanker(DIM, (8,))
    path = export_ranker(model, tmp_path / "model.onnx", DIM)
    with torch.no_grad():
        model.mlp[-1].bias.add_(0.01)
    with pytest.raises(RankerParityError, match="max abs diff"):
        check_ranker_parity(model, path, DIM)


def _toy_lists(rng: np.random.Generator, m: int = 300, n: int = 10):
    items = rng.standard_normal((40, DIM)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    cands = np.stack([rng.choice(40, size=n, replace=False) for _ in range(m)])
    target = rng.integers(0, n, size=m)
    # Users sit next to their target item; the features carry the same signal, noisier.
    users = items[cands[np.arange(m), target]] + 0.3 * rng.standard_normal((m, DIM))
    users = users.astype(np.float32)
    scores = np.einsum("md,mnd->mn", users, items[cands])
    feats = np.stack([candidate_features(scores[j], np.full(n, 3), 4) for j in range(m)]).astype(
        np.float32
    )
    return RankerLists(users, cands, feats, target), items


def _top1(model: torch.nn.Module, lists: RankerLists, items: np.ndarray) -> float:
    """Share of lists whose target the model scores highest among its candidates."""
    m, n = lists.candidates.shape
    with torch.no_grad():
        logits = model(
            torch.from_numpy(np.repeat(lists.users, n, axis=0)),
            torch.from_numpy(items[lists.candidates.reshape(-1)]),
            torch.from_numpy(lists.features.reshape(m * n, -1)),
        ).reshape(m, n)
    return float((logits.argmax(dim=1).numpy() == lists.target).mean())


def test_listwise_ranker_learns_a_toy_signal_and_exports_with_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lists, items = _toy_lists(rng)
    res = train_ranker(
        lists, items, RankerConfig(epochs=8, hidden=(32,), lr=3e-3), seed=0, progress=False
    )
    assert res.losses[-1] < res.losses[0]
    assert _top1(res.model, lists, items) > 0.6  # random: 0.1
    path = export_ranker(res.model, tmp_path / "model.onnx", DIM)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["user", "item", "features"]
    assert check_ranker_parity(res.model, path, DIM, n=9) <= 1e-5


def test_weight_average_follows_the_ramped_decay_and_rejects_bad_decays() -> None:
    from training.ranker import _WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = _WeightAverage(model, 0.9)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
    assert average.state["weight"].item() == pytest.approx(expected)
    # The model itself is untouched: the average is a copy.
    assert model.weight.item() == 5.0
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema decay"):
            _WeightAverage(model, bad)


def test_ranker_with_weight_averaging_learns_and_exports_the_average(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lists, items = _toy_lists(rng)
    plain = train_ranker(
        lists, items, RankerConfig(epochs=8, hidden=(32,), lr=3e-3), seed=0, progress=False
    )
    averaged = train_ranker(
        lists,
        items,
        RankerConfig(epochs=8, hidden=(32,), lr=3e-3, ema=0.9),
        seed=0,
        progress=False,
    )
    # Same seed, same trajectory: the raw losses agree, the exported weights do not.
    assert averaged.losses == pytest.approx(plain.losses)
    w_plain = plain.model.mlp[0].weight.detach()
    w_avg = averaged.model.mlp[0].weight.detach()
    assert not torch.allclose(w_plain, w_avg)
    assert _top1(averaged.model, lists, items) > 0.6
    path = export_ranker(averaged.model, tmp_path / "model.onnx", DIM)
    assert check_ranker_parity(averaged.model, path, DIM, n=9) <= 1e-5


def test_since_last_interaction_is_log_hours_capped_and_zero_when_unknown() -> None:
    from recstack.core.features import DAY_S, GAP, MAX_GAP_S, RANKER_FEATURES
    from training import evaluate as ev

    def gap_column(gap_s: float | None) -> np.ndarray:
        feats = candidate_features(np.ones(3), np.zeros(3), 2, gap_s=gap_s)
        return feats[:, RANKER_FEATURES.index(GAP)]

    np.testing.assert_allclose(gap_column(7200), np.log1p(2.0))
    np.testing.assert_allclose(gap_column(10 * MAX_GAP_S), np.log1p(MAX_GAP_S / 3600))
    assert not gap_column(None).any() and not gap_column(0).any()
    # Evaluation cases know it from their own times; query-only cases do not.
    case = ev.EvalCase("u", ["a"], {"a"}, "b", time=3 * DAY_S, last_time=DAY_S)
    assert case.gap_s == 2 * DAY_S
    assert ev.EvalCase("u", [], set(), "b", query="x", time=3 * DAY_S).gap_s is None
