#!/usr/bin/env bash
# Installs every Debian package the project needs (idempotent), then
# configures and builds into build/. Safe to run again: it only installs
# what is missing and rebuilds what changed.
#
#   scripts/setup.sh            install + build (Release)
#   SAE_SKIP_INSTALL=1 scripts/setup.sh    build only
#   SAE_BUILD_DIR=out scripts/setup.sh     another build folder
#   SAE_SKIP_BUILD=1 scripts/setup.sh      install only
#   SAE_EXTRA_PACKAGES="a b" ...           also install these (the sanitizer
#                                          and container scripts' tools)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${SAE_BUILD_DIR:-$ROOT/build}"

PACKAGES=(
  build-essential cmake pkg-config git
  libeigen3-dev libopenblas-dev libabsl-dev nlohmann-json3-dev libxxhash-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libpng-dev prometheus-cpp-dev
  python3 python3-grpcio python3-protobuf python3-numpy openssl
)
# shellcheck disable=SC2206  # a space-separated list, split on purpose
PACKAGES+=(${SAE_EXTRA_PACKAGES:-})

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ "${SAE_SKIP_INSTALL:-0}" != 1 && ${#missing[@]} -gt 0 ]]; then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "${SAE_SKIP_BUILD:-0}" == 1 ]]; then exit 0; fi
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${SAE_BUILD_TYPE:-Release}" ${SAE_CMAKE_ARGS:-}
# SAE_BUILD_TARGETS limits the build (the container image builds only the
# two binaries it ships).
TARGETS=()
for t in ${SAE_BUILD_TARGETS:-}; do TARGETS+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j"${SAE_JOBS:-2}" "${TARGETS[@]}"
