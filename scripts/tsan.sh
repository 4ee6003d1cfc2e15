#!/usr/bin/env bash
# Builds the core, store and server tests with clang 14 and ThreadSanitizer
# (in build-tsan/, scripts/clang_build.sh) and runs them. Among them:
# concurrent Encode calls during hot reloads and during training
# (load_faults_test), the batcher's leader/follower hand-offs, training jobs
# watched while they run, and the store shared by threads and processes.
#
# Debian's Abseil is not built with TSan, so absl::Mutex does not tell TSan
# about its locks; server/testing/tsan_absl_mutex.cc adds the annotations
# upstream Abseil compiles in under TSan, and is preloaded into every test.
# Two suppressions (scripts/tsan_suppressions.txt): races in gRPC's
# callback-API internals, and thread leaks of threads gRPC starts itself. The
# service's unary inference handlers run under the callback-API frames too, so
# the file says what that leaves unchecked.
# ignore_noninstrumented_modules makes TSan skip the libc calls (memcpy, ...)
# that the uninstrumented gRPC, protobuf and Abseil libraries make: their
# own synchronization (atomics, reference counts) is invisible to TSan, so
# checking those calls would only report gRPC's internals, never this
# project's code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${SAE_TSAN_BUILD_DIR:-$ROOT/build-tsan}"
source "$ROOT/scripts/sanitizer_tests.sh"
"$ROOT/scripts/clang_build.sh" tsan "${SAE_SANITIZER_TESTS[@]}" sae_server_main store_publisher \
  tsan_absl_mutex
export LD_PRELOAD="$BUILD/lib/libtsan_absl_mutex.so"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$ROOT/scripts/tsan_suppressions.txt"
run_sanitizer_tests "$BUILD" "TSan"
