#!/usr/bin/env bash
# The test command (README, .ci/run): install, check generated code and protos (buf lint,
# buf breaking), lint, type-check, then run unit, integration and process tests (the
# integration tier includes a Node.js client: node and npm are needed, as for buf).
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh train,dev
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {
  $SUDO apt-get install -y -q "$@" >/dev/null \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "$@" >/dev/null; }
}
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL (the catalog-log tests run a real server)"
  apt_install postgresql
fi
if ! command -v promtool >/dev/null; then
  echo "==> installing promtool (Debian's prometheus package; tests/deploy/test_monitoring.py"
  echo "    runs promtool check rules and promtool test rules on the alert rules)"
  apt_install --no-install-recommends prometheus
fi
echo "==> generated stubs match protos/"
python scripts/gen_protos.py --check
echo "==> buf lint"
scripts/buf.sh lint
echo "==> buf breaking (against the committed baseline image buf.baseline.binpb)"
scripts/buf.sh breaking
echo "==> ruff check / ruff format --check"
ruff check .
ruff format --check .
echo "==> mypy"
mypy
echo "==> pytest"
python -m pytest "$@"
