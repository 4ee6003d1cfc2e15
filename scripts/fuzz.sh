#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, ASan and UBSan (in build-fuzz/)
# and runs each for FUZZ_SECONDS (default 60) from the committed seed corpus.
# Exits non-zero on any finding.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${SAE_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"

SAE_SKIP_BUILD=1 "$ROOT/scripts/setup.sh"   # the project's packages
missing=()
for p in clang-14 libclang-rt-14-dev libfuzzer-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

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
echo "fuzz: no findings"
