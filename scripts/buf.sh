#!/usr/bin/env bash
# Run a pinned buf (npm @bufbuild/buf) on protos/, installing it under build/ once.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUF_VERSION=1.75.0
BUF="$ROOT/build/buf/node_modules/.bin/buf"
if [ ! -x "$BUF" ]; then
  mkdir -p "$ROOT/build/buf"
  npm install --silent --prefix "$ROOT/build/buf" "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
cd "$ROOT"
exec "$BUF" "$@"
