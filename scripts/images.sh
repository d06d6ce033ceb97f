#!/usr/bin/env bash
# Build and smoke-test the container images with podman, without a registry.
#
#   scripts/images.sh build [serve|train|gpu ...]   setup + base + wheels + the images (all three)
#   scripts/images.sh smoke     run tests/images against the built images, then print sizes
#   scripts/images.sh setup     install podman, runc, mmdebstrap (apt) when missing and make
#                               sure /etc/containers/containers.conf lets runc start containers
#   scripts/images.sh base      the local base image (Debian bookworm minbase + python3) if absent
#   scripts/images.sh wheels    the host-built wheelhouses the builds install from
#   scripts/images.sh sizes     size of each image
#   scripts/images.sh clean     remove the images, the base and the wheel cache
#
# The Dockerfiles build unchanged with a registry (`docker build -f deploy/docker/Dockerfile .`:
# python:3.11 base, wheels from PyPI inside the build). Here, instead:
#   * the base is built locally with mmdebstrap and `podman import` (PYTHON_IMAGE build arg);
#   * the wheels are built on the host by deploy/docker/wheels.sh (the same script the
#     Dockerfiles' `wheel-build` stage runs) and replace that stage with
#     `--build-context wheels=DIR`, so builds run with `--network none`.
# Everything cached (base image, wheelhouses, podman's layer cache) lives outside the checkout,
# so a fresh clone on a warm machine rebuilds only what changed; see docs/deploy.md ("Images").
#
# Environment: RECSTACK_IMAGE_TAG (default: the version in pyproject.toml), RECSTACK_IMAGES_CACHE
# (default ~/.cache/recstack/images), RECSTACK_BASE_IMAGE (default
# localhost/recstack-base:bookworm), PYTHON (the CPython 3.11 the wheels are built with),
# RECSTACK_TORCH_INDEX (an index with torch==2.13.0+cpu, e.g. https://download.pytorch.org/whl/cpu,
# when pip's configured indexes do not have it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="${RECSTACK_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recstack/images}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | awk 'NR == 1')"
TAG="${RECSTACK_IMAGE_TAG:-$VERSION}"
BASE_IMAGE="${RECSTACK_BASE_IMAGE:-localhost/recstack-base:bookworm}"
# crun fails on cgroups v1/hybrid hosts ("cgroups in hybrid mode not supported"); runc works
# on both v1 and v2.
PODMAN=(podman --runtime runc)
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

# image name -> Dockerfile, wheelhouse (extras) and base build argument
declare -A DOCKERFILE=([serve]=Dockerfile [train]=Dockerfile.train [gpu]=Dockerfile.gpu)
declare -A IMAGE=([serve]=ghcr.io/recstack/recstack [train]=ghcr.io/recstack/recstack-train
                  [gpu]=ghcr.io/recstack/recstack-gpu)
declare -A EXTRAS=([serve]=postgres [train]=train [gpu]=gpu,postgres)
declare -A BASE_ARG=([serve]=PYTHON_IMAGE [train]=PYTHON_IMAGE [gpu]=CUDA_IMAGE)
ALL=(serve train gpu)

say() { printf '==> %s\n' "$*"; }
die() { printf 'images.sh: %s\n' "$*" >&2; exit 1; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

cmd_setup() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    sudo_ apt-get install -y -q "${missing[@]}" >/dev/null \
      || { sudo_ apt-get update -q >/dev/null && sudo_ apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
  # runc refuses podman's default nofile/nproc rlimits on this kind of host unless the
  # engine sets none: `default_ulimits = []` under [containers].
  local conf=/etc/containers/containers.conf
  if [ ! -f "$conf" ]; then
    say "writing $conf (default_ulimits = [])"
    sudo_ mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n' | sudo_ tee "$conf" >/dev/null
  elif ! grep -q '^[[:space:]]*default_ulimits' "$conf"; then
    say "adding default_ulimits = [] to $conf"
    if grep -q '^\[containers\]' "$conf"; then
      sudo_ sed -i 's/^\[containers\]/[containers]\ndefault_ulimits = []/' "$conf"
    else
      printf '\n[containers]\ndefault_ulimits = []\n' | sudo_ tee -a "$conf" >/dev/null
    fi
  fi
}

cmd_base() {
  if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    say "base $BASE_IMAGE present (scripts/images.sh clean to rebuild it)"
    return
  fi
  local start=$SECONDS tar="$CACHE/base.tar"
  mkdir -p "$CACHE"
  rm -f "$tar"
  say "building $BASE_IMAGE with mmdebstrap (Debian bookworm minbase + python3)"
  sudo_ mmdebstrap --quiet --format=tar --variant=minbase \
    --include=python3,python3-venv,ca-certificates bookworm "$tar"
  "${PODMAN[@]}" import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tar" "$BASE_IMAGE" >/dev/null
  rm -f "$tar"
  say "base built in $((SECONDS - start)) s"
}

# The dependency tables of pyproject.toml (not the tool settings, which change often), the
# pins and the wheel script: when none of these changed, a wheelhouse is reused as it is.
wheel_key() {
  {
    "$PY" -c 'import json, sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))'
    cat deploy/docker/constraints.txt deploy/docker/wheels.sh
    echo "$1 ${RECSTACK_TORCH_INDEX:-}"
  } | sha256sum | cut -c1-16
}

cmd_wheels() {
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PY is not CPython 3.11: the images' Python is 3.11 (set PYTHON)"
  local name
  for name in "$@"; do
    local out="$CACHE/wheels/$name" key
    key="$(wheel_key "${EXTRAS[$name]}")"
    if [ -f "$out/.key" ] && [ "$(cat "$out/.key")" = "$key" ]; then
      say "wheels/$name up to date"
      continue
    fi
    local start=$SECONDS project
    say "building wheels/$name (recstack[${EXTRAS[$name]}] closure) with $($PY --version)"
    # wheels.sh reads only these three files: the dependency list, its readme, the pins.
    project="$(mktemp -d)"
    cp pyproject.toml README.md deploy/docker/constraints.txt "$project/"
    local extra=()
    if [ "$name" = train ] && [ -n "${RECSTACK_TORCH_INDEX:-}" ]; then
      extra=(--extra-index-url "$RECSTACK_TORCH_INDEX")
    fi
    # Built next to the old set (reused through --find-links), then swapped in whole, so a
    # wheelhouse never holds wheels of superseded pins.
    # The other sets' wheels too: they are built from the same pins (hnswlib is compiled once).
    rm -rf "$out.new"
    local dir
    for dir in "$CACHE"/wheels/*; do
      if [ -d "$dir" ] && [ "$dir" != "$out.new" ]; then extra+=(--find-links "$dir"); fi
    done
    PYTHON="$PY" sh deploy/docker/wheels.sh "$project" "${EXTRAS[$name]}" "$out.new" \
      --quiet "${extra[@]}"
    rm -rf "$project"
    if [ "$name" = train ] && ! ls "$out.new"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
      die "wheels/train has no torch 2.13.0+cpu wheel ($(cd "$out.new" && ls torch-* 2>/dev/null)); set RECSTACK_TORCH_INDEX=https://download.pytorch.org/whl/cpu"
    fi
    echo "$key" > "$out.new/.key"
    rm -rf "$out"
    mv "$out.new" "$out"
    say "wheels/$name: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1), $((SECONDS - start)) s"
  done
}

# Everything a build reads: its Dockerfile, the build context the .dockerignore lets in, the
# wheel set and the base. An image labelled with the same key is not rebuilt (podman would
# find every layer in its cache, but checking that costs up to a minute for the training
# image: it re-reads the whole context and the wheels).
build_key() {
  {
    cat "deploy/docker/${DOCKERFILE[$1]}" .dockerignore "$CACHE/wheels/$1/.key"
    "${PODMAN[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE"
    find pyproject.toml README.md recstack recall_service rank_service gateway training \
      deploy/docker/constraints.txt deploy/docker/wheels.sh -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

# Earlier builds of image $1 from other inputs that only tests refer to (tagged test-*, the
# per-checkout tags of tests/images, or not at all): each source change would otherwise leave
# one behind. Release tags and images a container still uses are kept.
prune_old() {
  local name=$1 key=$2 id old kept
  while read -r id old; do
    [ "$old" = "$key" ] && continue
    kept="$("${PODMAN[@]}" image inspect --format '{{range .RepoTags}}{{println .}}{{end}}' "$id" \
      | awk 'NF && $0 !~ /:test-[0-9a-f]+$/' | wc -l)"
    [ "$kept" -eq 0 ] || continue
    if "${PODMAN[@]}" rmi --force=false $("${PODMAN[@]}" image inspect \
         --format '{{range .RepoTags}}{{println .}}{{end}}' "$id") "$id" >/dev/null 2>&1; then
      say "removed an earlier test build of $name ($id)"
    fi
  done < <("${PODMAN[@]}" images --noheading --filter "label=io.recstack.image=$name" \
             --format '{{.ID}} {{index .Labels "io.recstack.build-key"}}' | sort -u)
}

cmd_build() {
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
  local name
  for name in "${names[@]}"; do
    [ -n "${DOCKERFILE[$name]:-}" ] || die "unknown image '$name' (serve, train, gpu)"
  done
  cmd_setup
  mkdir -p "$CACHE"
  # One build at a time on this machine (several checkouts share the base, the wheel cache
  # and podman's storage).
  exec 9>"$CACHE/.lock"
  flock 9
  cmd_base
  cmd_wheels "${names[@]}"
  for name in "${names[@]}"; do
    local start=$SECONDS ref="${IMAGE[$name]}:$TAG" key
    key="$(build_key "$name")"
    if [ "$("${PODMAN[@]}" image inspect --format '{{index .Labels "io.recstack.build-key"}}' \
           "$ref" 2>/dev/null)" = "$key" ]; then
      say "$ref up to date"
      continue
    fi
    local same
    # awk reads every line (head would close the pipe early: SIGPIPE, exit 141 under pipefail
    # once several images carry the key).
    same="$("${PODMAN[@]}" images --quiet --filter "label=io.recstack.build-key=$key" | awk 'NR == 1')"
    if [ -n "$same" ]; then  # built from the same inputs under another tag
      "${PODMAN[@]}" tag "$same" "$ref"
      say "$ref up to date (tagged $same)"
      continue
    fi
    say "building $ref (deploy/docker/${DOCKERFILE[$name]})"
    local log="$CACHE/build-$name.log"
    if ! "${PODMAN[@]}" build --pull=never --network none --layers \
      --label "io.recstack.build-key=$key" --label "io.recstack.image=$name" \
      --build-arg "${BASE_ARG[$name]}=$BASE_IMAGE" \
      --build-context "wheels=$CACHE/wheels/$name" \
      -f "deploy/docker/${DOCKERFILE[$name]}" -t "$ref" . >"$log" 2>&1; then
      tail -40 "$log" >&2
      die "building $ref failed (full log: $log)"
    fi
    say "$ref built in $((SECONDS - start)) s"
    prune_old "$name" "$key"
  done
  exec 9>&-
  cmd_sizes "${names[@]}"
}

cmd_sizes() {
  local names=("$@") name
  [ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
  for name in "${names[@]}"; do
    local ref="${IMAGE[$name]}:$TAG"
    if "${PODMAN[@]}" image exists "$ref"; then
      printf '%-40s %s\n' "$ref" "$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$ref" \
        | awk '{printf "%.0f MB", $1 / 1e6}')"
    else
      printf '%-40s %s\n' "$ref" "(not built)"
    fi
  done
}

cmd_smoke() {
  # The tests run containers from the images tagged $TAG (and rebuild what changed).
  source scripts/bootstrap.sh train,dev
  RECSTACK_IMAGE_TAG="$TAG" python -m pytest tests/images -p no:cacheprovider -rA "$@"
  cmd_sizes
}

cmd_clean() {
  local refs
  refs="$("${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E '^(ghcr.io/recstack/recstack(-train|-gpu)?|localhost/recstack-base):' || true)"
  if [ -n "$refs" ]; then
    # shellcheck disable=SC2086
    "${PODMAN[@]}" rmi --force $refs >/dev/null
  fi
  rm -rf "$CACHE"
  say "removed the recstack images, the base and $CACHE"
  # (podman's layer cache is shared with whatever else builds on this machine, so it is left
  # alone: `podman image prune` removes it)
}

case "${1:-}" in
  setup | base | wheels | build | smoke | sizes | clean)
    command="$1"
    shift
    if [ "$command" = base ] || [ "$command" = wheels ]; then
      cmd_setup
      mkdir -p "$CACHE"
    fi
    if [ "$command" = wheels ] && [ $# -eq 0 ]; then set -- "${ALL[@]}"; fi
    "cmd_$command" "$@"
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    [ "${1:-}" = -h ] || [ "${1:-}" = --help ] || exit 2
    ;;
esac
