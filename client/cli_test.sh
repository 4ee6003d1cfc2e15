#!/usr/bin/env bash
# End-to-end test of the sae_client CLI against a real sae_server process:
# train (with --watch), encode, denoise, models list/get/label/export/import,
# datasets, jobs, the PNG pictures, and the error cases (unreadable file,
# unreachable server, unknown model, wrong width). Run by ctest with the
# build's bin/ folder as $1.
set -uo pipefail
BIN="$1"
DATA="$2"
WORK="$(mktemp -d)"
FAILED=0
PASSED=0
cleanup() { kill "$SERVER_PID" 2> /dev/null; wait "$SERVER_PID" 2> /dev/null; rm -rf "$WORK"; }

check() {  # check NAME CONDITION...
  local name="$1"; shift
  if "$@"; then PASSED=$((PASSED + 1)); else echo "FAILED: $name"; FAILED=$((FAILED + 1)); fi
}
# expect_fail NAME PATTERN COMMAND...: non-zero exit and PATTERN on stderr.
expect_fail() {
  local name="$1" pattern="$2"; shift 2
  local err rc
  err="$("$@" 2>&1 > /dev/null)"; rc=$?
  if [[ $rc -ne 0 && "$err" == *"$pattern"* ]]; then PASSED=$((PASSED + 1));
  else echo "FAILED: $name (exit $rc, stderr: $err)"; FAILED=$((FAILED + 1)); fi
}
png_size() {  # prints "WIDTH HEIGHT" of a PNG, or nothing if it is not one
  local f="$1"
  [[ "$(od -An -tx1 -N8 "$f" | tr -d ' \n')" == "89504e470d0a1a0a" ]] || return 1
  echo "$(( 16#$(od -An -tx1 -j16 -N4 "$f" | tr -d ' \n') )) $(( 16#$(od -An -tx1 -j20 -N4 "$f" | tr -d ' \n') ))"
}

"$BIN/sae_server" --plaintext --listen=127.0.0.1:0 --store="$WORK/models" > "$WORK/server.out" 2> "$WORK/server.log" &
SERVER_PID=$!
trap cleanup EXIT
for _ in $(seq 100); do grep -q "listening on port" "$WORK/server.out" 2> /dev/null && break; sleep 0.1; done
PORT="$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/server.out")"
C=("$BIN/sae_client" "--server=127.0.0.1:$PORT")

check "health" "${C[@]}" health
"${C[@]}" train --model=digits --data="$DATA" --rows=0:400 --d_hidden=32 --epochs=2 --batch_size=64 \
  --corruption=gaussian --noise_sigma=0.3 --noise_clip --clip_output --watch > "$WORK/train.out" 2>&1
check "train exits 0" test $? -eq 0
check "train prints progress" grep -q "100%" "$WORK/train.out"
check "train publishes" grep -q "published digits@1" "$WORK/train.out"

check "encode" "${C[@]}" encode --model=digits --input="$DATA" --rows=400:450 --output="$WORK/codes.npy"
check "codes file is .npy" test "$(head -c 6 "$WORK/codes.npy" | tail -c 5)" = "NUMPY"
check "encode sparse" "${C[@]}" encode --model=digits@1 --input="$DATA" --rows=400:410 --sparse --top_n=5 --output="$WORK/codes.csv"
check "sparse has at most 5 per row" test "$(tail -n +2 "$WORK/codes.csv" | wc -l)" -le 50
check "decode" "${C[@]}" decode --model=digits --input="$WORK/codes.npy" --output="$WORK/decoded.csv"
check "decode wrote 50 rows" test "$(wc -l < "$WORK/decoded.csv")" -eq 50
"${C[@]}" denoise --model=digits --input="$DATA" --rows=400:500 --add_noise=0.3 \
  --output="$WORK/clean.npy" --png="$WORK/denoise.png" > "$WORK/denoise.out"
check "denoise exits 0" test $? -eq 0
check "denoise prints PSNR" grep -q "PSNR against the clean input" "$WORK/denoise.out"
check "denoise.png is a 1034 x 174 PNG" test "$(png_size "$WORK/denoise.png")" = "1034 174"
check "features" "${C[@]}" features --model=digits --png="$WORK/features.png" --count=20
check "features.png is a 582 x 118 PNG" test "$(png_size "$WORK/features.png")" = "582 118"

check "models list" bash -c "'${C[0]}' '${C[1]}' models list | grep -q '^digits'"
check "models label" "${C[@]}" models label digits stable 1
check "label shows in get" bash -c "'${C[0]}' '${C[1]}' models get digits | grep -q '\[stable\]'"
check "models export" "${C[@]}" models export digits:stable "$WORK/exported"
check "export wrote the folder" test -s "$WORK/exported/sae_weights.safetensors" -a -s "$WORK/exported/cfg.json"
check "models import" "${C[@]}" models import digits-copy "$WORK/exported"
check "imported serves" "${C[@]}" reconstruct --model=digits-copy --input="$DATA" --rows=0:5 --output="$WORK/r.npy"
check "jobs list" bash -c "'${C[0]}' '${C[1]}' jobs list | grep -q SUCCEEDED"
check "datasets list" "${C[@]}" datasets list

# Error cases: clear message, non-zero exit.
expect_fail "unreadable file" "cannot read input" "${C[@]}" encode --model=digits --input="$WORK/nope.npy" --output="$WORK/x.npy"
printf 'not numbers\nat all,x\n' > "$WORK/bad.csv"
expect_fail "malformed csv" "not a number" "${C[@]}" encode --model=digits --input="$WORK/bad.csv" --output="$WORK/x.npy"
expect_fail "unknown model" "unknown model 'ghost'" "${C[@]}" encode --model=ghost --input="$DATA" --rows=0:2 --output="$WORK/x.npy"
printf '1,2,3\n4,5,6\n' > "$WORK/narrow.csv"
expect_fail "wrong width" "the model expects 784" "${C[@]}" encode --model=digits --input="$WORK/narrow.csv" --output="$WORK/x.npy"
expect_fail "unreachable server" "server unreachable at 127.0.0.1:1" "$BIN/sae_client" --server=127.0.0.1:1 --timeout_s=2 health
expect_fail "unknown command" "unknown command" "${C[@]}" frobnicate
expect_fail "delete labelled version" "labelled" "${C[@]}" models delete digits@1
expect_fail "bad model reference" "positive integer" "${C[@]}" encode --model=digits@x --input="$DATA" --output="$WORK/x.npy"

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
