"""Warm start: the training state a bundle keeps so that the next build can start from it.

Every bundle ``training build`` writes carries ``train/state.safetensors`` (safetensors:
named tensors and nothing else, never a pickle, so loading it runs no code) and the
manifest section ``warm_start``: the user tower's weights, the encoder's projection head
``W`` and the fine-tuned top encoder layers, with the shapes they need. Serving never reads
it.

``python -m training build --warm-start BUNDLE`` (the learning loop passes the serving
bundle) initialises those three from it instead of from scratch (the tower's random init,
``W`` = identity, the base MiniLM layers) and trains ``Profile.warm_epochs`` epochs, the
encoder's top layers from the first epoch (they are already adapted, so the reason to hold
them back, a random tower, is gone). The item vectors still come from the texts, so a
catalog that changed since the source bundle costs nothing: no weight depends on it.

A state only fits a build with the same architecture (dimensions, layers, window, fine-tuned
layer count, base model): anything else is a :class:`training.data.DataError` naming the
field, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import DataError

STATE_PATH = "train/state.safetensors"
# What must match between the state's build and the one warm-starting from it.
_SHAPE_KEYS = ("d_model", "layers", "heads", "max_len", "finetune_layers")


@dataclass(frozen=True)
class WarmState:
    """Weights read from a bundle (numpy; :func:`training.tower.train_tower` loads them)."""

    version: str
    data_end: int  # the source bundle's newest training interaction (Unix seconds)
    tower: dict[str, np.ndarray]
    head: np.ndarray
    encoder_top: dict[str, np.ndarray]  # empty when the encoder was not fine-tuned


def save_state(
    work: Path,
    tower: dict[str, np.ndarray],
    head: np.ndarray,
    encoder_top: dict[str, np.ndarray],
    shape: dict[str, Any],
    base_model: str,
) -> dict[str, Any]:
    """Write ``train/state.safetensors`` under ``work``; returns the manifest section."""
    from safetensors.numpy import save_file

    tensors = {f"tower.{k}": np.ascontiguousarray(v) for k, v in tower.items()}
    tensors["head"] = np.ascontiguousarray(head, np.float32)
    tensors.update({f"encoder_top.{k}": np.ascontiguousarray(v) for k, v in encoder_top.items()})
    path = work / STATE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return {
        "state": STATE_PATH,
        "format": "safetensors",
        "base_model": base_model,
        **{k: int(shape[k]) for k in _SHAPE_KEYS},
    }


def trained_until(manifest: dict[str, Any]) -> int:
    """The newest interaction (Unix seconds) the bundle of ``manifest`` trained on; 0 when it
    does not say (bundles from before recency features)."""
    return int(manifest.get("ranker", {}).get("recency", {}).get("as_of", 0))


def keeps_state(source: Path) -> bool:
    """Whether the bundle at ``source`` carries a warm-start state (bundles built before
    this module did not)."""
    from recstack.core.bundle import Bundle, resolve_bundle_dir

    return bool(Bundle.open(resolve_bundle_dir(source), verify="none").manifest.get("warm_start"))


def load_state(source: Path, shape: dict[str, Any], base_model: str) -> WarmState:
    """Read the warm-start state of the bundle at ``source`` (a bundle directory or a root
    with CURRENT), checked against the build about to use it (``shape``: the keys of
    ``_SHAPE_KEYS``)."""
    from safetensors.numpy import load_file

    from recstack.core.bundle import Bundle, resolve_bundle_dir
    from recstack.core.errors import BundleError

    try:
        bundle = Bundle.open(resolve_bundle_dir(source))
    except (BundleError, OSError) as exc:
        raise DataError(f"--warm-start {source}: {exc}") from exc
    spec = bundle.manifest.get("warm_start")
    if not spec:
        raise DataError(
            f"--warm-start {source}: bundle {bundle.version} keeps no training state (it was "
            "built before bundles carried one); build without --warm-start"
        )
    wanted = {"base_model": base_model, **{k: int(shape[k]) for k in _SHAPE_KEYS}}
    for key, value in wanted.items():
        if spec.get(key) != value:
            raise DataError(
                f"--warm-start {source}: bundle {bundle.version} has {key}={spec.get(key)!r}, "
                f"this build {value!r}: a state only fits the same architecture"
            )
    tensors = load_file(str(bundle.path(spec["state"])))
    parts: dict[str, dict[str, np.ndarray]] = {"tower": {}, "encoder_top": {}}
    head = None
    for name, value in tensors.items():
        group, _, rest = name.partition(".")
        if name == "head":
            head = value
        elif group in parts and rest:
            parts[group][rest] = value
    if head is None or not parts["tower"]:
        raise DataError(f"--warm-start {source}: {spec['state']} lacks the tower or the head")
    return WarmState(
        version=bundle.version,
        data_end=trained_until(bundle.manifest),
        tower=parts["tower"],
        head=head,
        encoder_top=parts["encoder_top"],
    )
