#!/usr/bin/env bash
# Install pinned npm packages under build/<name>/ once, the one way this repo uses npm
# (buf for the protos, the Node.js test client). Reinstalls when the pins change.
# Usage: scripts/npm_tool.sh NAME PACKAGE@VERSION... ; prints the node_modules directory.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME="$1"
shift
PREFIX="$ROOT/build/$NAME"
STAMP="$PREFIX/.pins"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$*" ]; then
  mkdir -p "$PREFIX"
  npm install --silent --no-audit --no-fund --prefix "$PREFIX" "$@" >/dev/null
  echo "$*" >"$STAMP"
fi
echo "$PREFIX/node_modules"
