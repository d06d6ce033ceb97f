"""Running the ranker's ONNX Runtime session: plain ``run`` on CPU, IO binding on CUDA.

``RankerRunner.run(feeds)`` takes row-aligned float32 inputs (name -> [N, ...]) and returns
``score`` [N]. Two paths:

* **plain** (CPU provider, or ``io_binding`` off): ``session.run``; ORT's own intra/inter-op
  thread pools (``--intra-op-threads``/``--inter-op-threads``) do the parallel work.
* **IO binding** (CUDA provider and ``io_binding`` on): inputs are copied into host staging
  buffers that are page-locked (``cudaHostAlloc``) when the CUDA runtime can be loaded, and
  bound by pointer, so ORT's host-to-device copy is a DMA from pinned memory; the output is
  bound to a pinned buffer too. The buffers grow geometrically and are reused between runs.
  If pinned memory cannot be allocated the same path runs on ordinary (pageable) buffers and
  says so in the log. The path is provider-agnostic, so tests exercise it on CPU as well.

Thread-safety: the staging buffers are shared state, so the IO-binding path holds
``_lock`` for copy-in, run and copy-out. With dynamic batching only the batcher's worker
thread calls ``run`` and the lock is uncontended; with batching off, concurrent requests
serialise on it (on a GPU they would serialise on the device stream anyway). The plain path
takes no lock: ``InferenceSession.run`` is safe to call concurrently.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort

from recstack.core import metrics
from recstack.core.vectors import F32Array
from recstack.models.ort import CUDA

log = logging.getLogger(__name__)

_CUDART_NAMES = ("libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so")


class PinnedAllocator:
    """Page-locked host memory from the CUDA runtime (``cudaHostAlloc``), via ctypes.

    ``available`` is False where no CUDA runtime library loads (e.g. any CPU-only machine);
    callers then use ordinary numpy memory.
    """

    def __init__(self) -> None:
        self._lib: Any = None
        self._blocks: list[int] = []
        for name in _CUDART_NAMES:
            try:
                self._lib = ctypes.CDLL(name)
                break
            except OSError:
                continue

    @property
    def available(self) -> bool:
        return self._lib is not None

    def empty(self, rows: int, cols: int) -> F32Array | None:
        """A pinned float32 [rows, cols] array, or None if the allocation fails."""
        if self._lib is None:
            return None
        nbytes = max(1, rows * cols) * 4
        ptr = ctypes.c_void_p()
        rc = self._lib.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), ctypes.c_uint(0))
        if rc != 0 or not ptr.value:
            log.warning("cudaHostAlloc(%d bytes) failed with %d; using pageable memory", nbytes, rc)
            return None
        self._blocks.append(ptr.value)
        buf = (ctypes.c_float * (max(1, rows * cols))).from_address(ptr.value)
        return np.ctypeslib.as_array(buf)[: rows * cols].reshape(rows, cols)

    def free_all(self) -> None:
        if self._lib is not None:
            for ptr in self._blocks:
                self._lib.cudaFreeHost(ctypes.c_void_p(ptr))
        self._blocks.clear()


class RankerRunner:
    """One ranker session and the way it is run (see module docstring)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        provider: str,
        output: str,
        *,
        io_binding: bool,
        pinned: PinnedAllocator | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.output = output
        self.io_binding = io_binding
        self._lock = threading.Lock()  # guards the staging buffers below (IO-binding path)
        self._staging: dict[str, F32Array] = {}
        self._pinned = pinned
        self._warned_pageable = False
        if io_binding and provider == CUDA:
            opts = session.get_provider_options().get(CUDA, {})
            self._device_id = int(opts.get("device_id", 0))
            if self._pinned is None:
                self._pinned = PinnedAllocator()
        else:
            self._device_id = 0
        self._metric = metrics.RANK_ORT_RUN.labels(provider)

    @property
    def pinned(self) -> bool:
        """Whether staging buffers are page-locked (only ever on the CUDA path)."""
        return self._pinned is not None and self._pinned.available

    def run(self, feeds: Mapping[str, F32Array]) -> F32Array:
        """Scores [N] for row-aligned float32 inputs."""
        started = time.perf_counter()
        try:
            if self.io_binding:
                return self._run_bound(feeds)
            out = self.session.run([self.output], dict(feeds))[0]
            return np.asarray(out, dtype=np.float32).reshape(-1)
        finally:
            self._metric.observe(time.perf_counter() - started)

    def _buffer(self, key: str, rows: int, cols: int) -> F32Array:
        """A reusable staging buffer with at least ``rows`` rows (grows by doubling)."""
        buf = self._staging.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            capacity = max(rows, 2 * buf.shape[0] if buf is not None else 64)
            new = self._pinned.empty(capacity, cols) if self._pinned is not None else None
            if new is None:
                if self.provider == CUDA and not self._warned_pageable:
                    log.warning("IO binding on CUDA with pageable host buffers (no pinned memory)")
                    self._warned_pageable = True
                new = np.empty((capacity, cols), dtype=np.float32)
            self._staging[key] = buf = new
        return buf[:rows]

    def _run_bound(self, feeds: Mapping[str, F32Array]) -> F32Array:
        rows = int(next(iter(feeds.values())).shape[0])
        with self._lock:  # staging buffers are reused: one bound run at a time
            binding = self.session.io_binding()
            for name, arr in feeds.items():
                host = self._buffer("in:" + name, rows, int(arr.shape[1]))
                np.copyto(host, arr, casting="same_kind")
                binding.bind_input(name, "cpu", 0, np.float32, list(host.shape), host.ctypes.data)
            out = self._buffer("out:" + self.output, rows, 1)
            binding.bind_output(self.output, "cpu", 0, np.float32, [rows], out.ctypes.data)
            self.session.run_with_iobinding(binding)
            return out[:, 0].copy()

    def close(self) -> None:
        with self._lock:
            self._staging.clear()
            if self._pinned is not None:
                self._pinned.free_all()
