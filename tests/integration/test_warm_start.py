"""Warm start (training/warm.py): a bundle keeps its training state, a build can start from
it, and a state that does not fit is refused before any training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from recstack.core.bundle import Bundle, copy_bundle, write_manifest
from training.cli import main as cli_main
from training.data import DataError, write_synthetic_dataset
from training.pipeline import PROFILES, build_bundle, profile_with
from training.warm import STATE_PATH, keeps_state, load_state


def test_every_bundle_keeps_its_training_state(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    spec = bundle.manifest["warm_start"]
    assert spec["state"] == STATE_PATH and STATE_PATH in bundle.manifest["files"]
    tiny = PROFILES["tiny"].tower
    state = load_state(bundle_dir, {**vars(tiny)}, spec["base_model"])
    assert state.version == bundle.version
    assert state.head.shape == (bundle.manifest["dim"], bundle.manifest["dim"])
    assert state.encoder_top and state.tower
    assert state.data_end == bundle.manifest["ranker"]["recency"]["as_of"] > 0


def test_a_warm_build_starts_from_the_bundles_weights(bundle_dir: Path, tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "data")
    warm = build_bundle(
        data, tmp_path / "b", "tiny", version="warm", progress=False, warm_start=bundle_dir
    )
    manifest = Bundle.open(warm).manifest
    tiny = PROFILES["tiny"]
    assert manifest["training"]["warm_start"] == {
        "from_version": Bundle.open(bundle_dir).version,
        "epochs": tiny.warm_epochs,
    }
    assert manifest["training"]["tower"]["epochs"] == tiny.warm_epochs
    assert manifest["training"]["tower"]["finetune_start"] == 0
    cold = json.loads((bundle_dir / "report" / "report.json").read_text())["losses"]["tower"]
    hot = json.loads((warm / "report" / "report.json").read_text())["losses"]["tower"]
    # From trained weights, the first epoch is already below where a cold start ended
    # (a fresh init starts near the cold first epoch's loss).
    assert hot[0] < cold[-1] < cold[0]
    # The warm bundle keeps its own state for the next build.
    again = load_state(warm, vars(tiny.tower), manifest["warm_start"]["base_model"])
    assert again.version == "warm"


def test_a_state_that_does_not_fit_is_refused_before_training(
    bundle_dir: Path, tmp_path: Path
) -> None:
    data = write_synthetic_dataset(tmp_path / "data")
    tiny = PROFILES["tiny"]
    wider = profile_with("tiny", tower=replace(tiny.tower, d_model=tiny.tower.d_model * 2))
    with pytest.raises(DataError, match=f"has d_model={tiny.tower.d_model}, this build"):
        build_bundle(data, tmp_path / "b", wider, progress=False, warm_start=bundle_dir)
    old = copy_bundle(bundle_dir, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["warm_start"], manifest["files"]
    (old / STATE_PATH).unlink()
    write_manifest(old, manifest)
    assert keeps_state(bundle_dir) and not keeps_state(old)
    with pytest.raises(DataError, match="keeps no training state"):
        build_bundle(data, tmp_path / "b", "tiny", progress=False, warm_start=old)
    assert not (tmp_path / "b" / "CURRENT").exists()


def test_warm_start_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_dataset(tmp_path / "data")
    base = ["build", "--data", str(data), "--out", str(tmp_path / "b"), "--quiet"]
    assert cli_main([*base, "--warm-epochs", "2"]) == 2
    assert "--warm-epochs needs --warm-start" in capsys.readouterr().err
    assert cli_main([*base, "--warm-start", str(tmp_path / "none")]) == 2
    assert "--warm-start" in capsys.readouterr().err
