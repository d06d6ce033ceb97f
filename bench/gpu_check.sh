#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU (driver for CUDA 12, cuDNN 9):
# a venv with the serving dependencies and onnxruntime-gpu (no torch), then
# `python -m bench.gpu_check`: rank on CUDA (IO binding) vs CPU, batching on/off, 100 and
# 1,000 candidates, and the query encoder at batch 1 and 32, alternated rounds; a few minutes.
#
#   bash bench/gpu_check.sh                 # the bundle at ./bundles (BUNDLE=... to change)
#   bash bench/gpu_check.sh --rounds 5      # extra args go to python -m bench.gpu_check
#
# Building a bundle needs the training extra (torch): `bash scripts/demo.sh` or
# `python -m training build ...` on any machine, then copy bundles/ here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RECSTACK_GPU_VENV:-.venv-gpu}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
BUNDLE="${BUNDLE:-bundles}"
if [ ! -f "$BUNDLE/CURRENT" ] && [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "gpu_check.sh: no bundle at $BUNDLE (build one: bash scripts/demo.sh, or set BUNDLE)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
echo "==> installing recstack[gpu] into $VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -e ".[gpu]"
# The base requirement onnxruntime and onnxruntime-gpu own the same module: keep the GPU one
# (as deploy/docker/Dockerfile.gpu does).
"$VENV/bin/python" -m pip uninstall -y -q onnxruntime
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --force-reinstall --no-deps \
  "onnxruntime-gpu>=1.20"
exec "$VENV/bin/python" -m bench.gpu_check --bundle "$BUNDLE" "$@"
