#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the whole test suite with ctest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${SAE_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"${SAE_TEST_JOBS:-2}" --timeout 600
