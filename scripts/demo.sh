#!/usr/bin/env bash
# The main job (README): install, fetch MovieLens-100K, train the quick bundle (reused when
# the data and settings are unchanged), start recall, rank and gateway on loopback, print
# recommendations, stop everything. Extra args go to the training CLI (e.g. --profile tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh train,dev
python -m training build --data ml100k --profile quick --out bundles --reuse "$@"
python -m recstack.tools.demo --bundle bundles
