#!/usr/bin/env bash
# Builds the core, store and server tests with clang 14, AddressSanitizer and
# UndefinedBehaviorSanitizer (in build-asan/) and runs them. Leak detection
# is off: Debian's gRPC keeps process-wide singletons alive at exit, which
# LeakSanitizer reports (a third-party suppression, not the project's code).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${SAE_ASAN_BUILD_DIR:-$ROOT/build-asan}"
SAE_SKIP_BUILD=1 "$ROOT/scripts/setup.sh"
missing=()
for p in clang-14 libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DSAE_MARCH= -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  > /dev/null
TESTS=(activations_test blas_test corruption_test dataset_io_test model_io_test model_store_test
       model_test objective_test optimizer_test safetensors_test store_watcher_test trainer_test
       batcher_test metrics_test service_test training_jobs_test)
cmake --build "$BUILD" -j"${SAE_JOBS:-2}" --target "${TESTS[@]}" sae_server_main store_publisher
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
failed=0
# ASan's quarantine holds freed memory back, so the resident-memory bound of
# the million-row stream test only holds in the normal build (scripts/test.sh).
for t in "${TESTS[@]}"; do
  filter=()
  [[ "$t" == service_test ]] && filter=(--gtest_filter=-*KeepsMemoryFlat*)
  if ! "$BUILD/tests/$t" "${filter[@]}" > "$BUILD/$t.log" 2>&1; then
    echo "sanitizers: $t FAILED"; tail -30 "$BUILD/$t.log"; failed=1
  else
    echo "sanitizers: $t passed"
  fi
done
exit $failed
