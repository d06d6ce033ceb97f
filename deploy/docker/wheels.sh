#!/bin/sh
# Build a wheelhouse: every third-party wheel that `recstack[EXTRAS]` needs, at the versions
# pinned in constraints.txt, plus the build backend (setuptools, wheel) so that recstack itself
# can later be built and installed with `pip install --no-index --find-links OUT`.
#
#   wheels.sh PROJECT_DIR EXTRAS OUT [pip wheel options...]
#
# PROJECT_DIR holds pyproject.toml and README.md (the sources are not needed: only the
# dependency list is read, and recstack's own wheel is removed from OUT). Used in two places,
# so both build the same set the same way:
#   * the `wheel-build` stage of every Dockerfile (people with a registry: wheels from PyPI);
#   * scripts/images.sh on the host, whose wheelhouse replaces that stage
#     (`--build-context wheels=OUT`) so that image builds need no network.
# Wheels already in OUT are reused (`--find-links OUT`): a second run downloads nothing new.
# $PYTHON (default python3) is the interpreter whose ABI the wheels are built for.
set -eu
project=$1 extras=$2 out=$3
shift 3
py=${PYTHON:-python3}
# hnswlib's setup.py compiles with -march=native unless told otherwise: a wheel built so on
# the build machine could die with SIGILL on an older CPU in production.
export HNSWLIB_NO_NATIVE=1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A private venv: Debian's python3 has no pip module outside one.
"$py" -m venv "$tmp/venv"
pip="$tmp/venv/bin/pip"
# hnswlib is an sdist: build its wheel without pip's wheel cache, which may hold a build made
# earlier with -march=native (the cache key does not include the compiler flags).
"$pip" wheel --no-cache-dir --no-deps --wheel-dir "$out" --find-links "$out" \
  -c "$project/constraints.txt" "$@" hnswlib
"$pip" wheel --wheel-dir "$out" --find-links "$out" -c "$project/constraints.txt" "$@" \
  "$project[$extras]" setuptools wheel
rm -f "$out"/recstack-*.whl
