#!/usr/bin/env bash
# Run a pinned buf (npm @bufbuild/buf) on protos/, installing it under build/ once.
#   scripts/buf.sh lint
#   scripts/buf.sh breaking            protos/ against the committed baseline image
#                                      buf.baseline.binpb (the released contract)
#   scripts/buf.sh baseline            rewrite that image from protos/ (on a release, or
#                                      for a reviewed, deliberate break: see docs/api.md)
#   scripts/buf.sh <any buf command>   passed through
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUF_VERSION=1.75.0
BUF="$("$ROOT/scripts/npm_tool.sh" buf "@bufbuild/buf@$BUF_VERSION")/.bin/buf"
BASELINE="$ROOT/buf.baseline.binpb"
cd "$ROOT"
case "${1:-}" in
  breaking)
    if [ $# -eq 1 ]; then
      exec "$BUF" breaking --against "$BASELINE"
    fi
    ;;
  baseline)
    exec "$BUF" build --exclude-source-info -o "$BASELINE"
    ;;
esac
exec "$BUF" "$@"
