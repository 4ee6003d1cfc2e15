#!/usr/bin/env bash
# Runs the libFuzzer targets, each for FUZZ_SECONDS (default 60) from the
# committed seed corpus, and exits non-zero on any finding:
# - model_files_fuzzer: the model-file parsers (core alone, in build-fuzz/);
# - request_fuzzer: every RPC's request message through the service's
#   handlers (in the ASan + UBSan build, build-asan/, scripts/clang_build.sh).
# Both are built with clang 14, AddressSanitizer and UndefinedBehaviorSanitizer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${SAE_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
ASAN_BUILD="${SAE_ASAN_BUILD_DIR:-$ROOT/build-asan}"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"

# The request fuzzer first: clang_build.sh also installs clang and libFuzzer.
"$ROOT/scripts/clang_build.sh" asan request_fuzzer
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAE_FUZZ=ON \
  -DCMAKE_CXX_COMPILER=clang++-14 -DSAE_MARCH= > /dev/null
cmake --build "$BUILD" -j"${SAE_JOBS:-2}" --target model_files_fuzzer make_fuzz_seeds

CORPUS="$BUILD/corpus/model_files"
mkdir -p "$CORPUS"
cp "$ROOT"/fuzz/corpus/model_files/* "$CORPUS"/
"$BUILD/bin/make_fuzz_seeds" "$CORPUS"
echo "fuzz: model_files_fuzzer for ${SECONDS_PER_TARGET}s"
"$BUILD/bin/model_files_fuzzer" "$CORPUS" -max_total_time="$SECONDS_PER_TARGET" \
  -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$BUILD/"

REQUESTS="$ASAN_BUILD/corpus/requests"
mkdir -p "$REQUESTS"
cp "$ROOT"/fuzz/corpus/requests/* "$REQUESTS"/
echo "fuzz: request_fuzzer for ${SECONDS_PER_TARGET}s"
# Leak checks off for this one: Debian's gRPC keeps process-wide singletons.
ASAN_OPTIONS=detect_leaks=0 "$ASAN_BUILD/bin/request_fuzzer" "$REQUESTS" -max_total_time="$SECONDS_PER_TARGET" \
  -max_len=8192 -rss_limit_mb=4096 -timeout=30 -detect_leaks=0 -print_final_stats=1 \
  -artifact_prefix="$ASAN_BUILD/"
echo "fuzz: no findings"
