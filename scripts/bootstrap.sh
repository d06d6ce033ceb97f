#!/usr/bin/env bash
# Create (or reuse) .venv and install recstack with the extras named in $1 (default train,dev).
# Sourced by scripts/demo.sh and scripts/test.sh so set-up lives in one place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-train,dev}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "==> creating $ROOT/.venv with $($PY --version)"
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.recstack-installed-$EXTRAS-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "==> installing recstack[$EXTRAS] (first run takes about 2 minutes)"
  # (this machine's pip config names local mirrors that may be absent: drop those warnings)
  "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[$EXTRAS]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
