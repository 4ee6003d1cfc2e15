#!/usr/bin/env bash
# Builds the core, store and server tests with clang 14, AddressSanitizer and
# UndefinedBehaviorSanitizer (in build-asan/, scripts/clang_build.sh) and
# runs them. Leak detection is off: Debian's gRPC keeps process-wide
# singletons alive at exit, which LeakSanitizer reports (a third-party
# suppression, not the project's code).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${SAE_ASAN_BUILD_DIR:-$ROOT/build-asan}"
source "$ROOT/scripts/sanitizer_tests.sh"
"$ROOT/scripts/clang_build.sh" asan "${SAE_SANITIZER_TESTS[@]}" sae_server_main store_publisher
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
run_sanitizer_tests "$BUILD" "ASan + UBSan"
