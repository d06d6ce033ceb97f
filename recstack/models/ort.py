"""ONNX Runtime sessions with an explicit execution-provider choice.

``device`` is one of ``auto`` (CUDA when onnxruntime-gpu sees a GPU, else CPU), ``cuda``
(CUDA or a startup error, unless ``allow_cpu_fallback``) or ``cpu``. The provider really in
use is read back from the session and reported, never assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recstack.core.errors import BundleError
from recstack.models.onnx_guard import check_model

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SessionOptions:
    """How to build a session; defaults live in recstack.core.config."""

    device: str = "auto"
    allow_cpu_fallback: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    optimized_model_path: str | None = None


def choose_providers(device: str, available: Sequence[str], allow_cpu_fallback: bool) -> list[str]:
    """Providers to request, in priority order, for ``device`` given what ORT offers."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    has_cuda = CUDA in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        return [CPU]
    if has_cuda:
        return [CUDA, CPU]
    if allow_cpu_fallback:
        log.warning(
            "device=cuda requested but %s is not available (have %s); using CPU",
            CUDA,
            list(available),
        )
        return [CPU]
    raise BundleError(
        f"device=cuda requested but ONNX Runtime offers only {list(available)}: install "
        "onnxruntime-gpu on a machine with a CUDA GPU, or set --device cpu/auto"
    )


def create_session(model: Path, options: SessionOptions) -> tuple[ort.InferenceSession, str]:
    """Build a session; returns it and the provider actually used for its nodes.

    The model is first checked by recstack.models.onnx_guard (no external data outside its
    directory, no custom operator domains).
    """
    # Imported here, not at the top: options and device names are read by processes that
    # never run a model (the gateway, the client SDK), which need not load ONNX Runtime.
    import onnxruntime as ort

    check_model(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    if options.optimized_model_path:
        so.optimized_model_filepath = options.optimized_model_path
    providers = choose_providers(
        options.device, ort.get_available_providers(), options.allow_cpu_fallback
    )
    try:
        session = ort.InferenceSession(str(model), sess_options=so, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for bad models
        raise BundleError(f"cannot load ONNX model {model.name}: {exc}") from exc
    used = session.get_providers()[0]
    if options.device == "cuda" and used != CUDA and not options.allow_cpu_fallback:
        raise BundleError(f"CUDA provider failed to initialise for {model.name}; got {used}")
    log.info("onnx session %s on %s", model.name, used)
    return session, used
