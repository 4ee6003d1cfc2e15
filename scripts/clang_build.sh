#!/usr/bin/env bash
# Configures and builds targets with clang 14 and sanitizers, after the
# project's packages (scripts/setup.sh) and clang's runtimes are installed:
#
#   scripts/clang_build.sh asan TARGET...   AddressSanitizer + UndefinedBehaviorSanitizer,
#                                           with libFuzzer coverage, in build-asan/
#   scripts/clang_build.sh tsan TARGET...   ThreadSanitizer, in build-tsan/
#
# Used by scripts/sanitize.sh, scripts/tsan.sh and scripts/fuzz.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIND="$1"
shift
SAE_SKIP_BUILD=1 SAE_EXTRA_PACKAGES="clang-14 libclang-rt-14-dev libfuzzer-14-dev ninja-build" \
  "$ROOT/scripts/setup.sh"
case "$KIND" in
  asan)
    BUILD="${SAE_ASAN_BUILD_DIR:-$ROOT/build-asan}"
    FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined"
    LINK="-fsanitize=address,undefined"
    EXTRA=(-DSAE_REQUEST_FUZZER=ON)
    ;;
  tsan)
    BUILD="${SAE_TSAN_BUILD_DIR:-$ROOT/build-tsan}"
    FLAGS="-fsanitize=thread"
    LINK="-fsanitize=thread"
    EXTRA=(-DSAE_TSAN=ON)
    ;;
  *) echo "usage: clang_build.sh asan|tsan TARGET..." >&2; exit 2 ;;
esac
# Ninja builds the many test targets in parallel (make's top level runs the
# targets named on its command line one after another).
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -q "CMAKE_GENERATOR:INTERNAL=Ninja" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DSAE_MARCH= -DCMAKE_CXX_FLAGS="$FLAGS -fno-omit-frame-pointer -g" \
  -DCMAKE_EXE_LINKER_FLAGS="$LINK" "${EXTRA[@]}" > /dev/null
cmake --build "$BUILD" -j"${SAE_JOBS:-2}" --target "$@"
