#!/usr/bin/env bash
# Runs the Python sample client against a real server: trains a small model
# with the CLI, then checks the example's health, encode and denoise output.
set -uo pipefail
BIN="$1" DATA="$2" STUBS="$3" SCRIPT="$(dirname "${BASH_SOURCE[0]}")/sae_example.py"
WORK="$(mktemp -d)"
"$BIN/sae_server" --plaintext --listen=127.0.0.1:0 --store="$WORK/models" > "$WORK/server.out" 2> "$WORK/server.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2> /dev/null; wait $SERVER_PID 2> /dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q "listening on port" "$WORK/server.out" 2> /dev/null && break; sleep 0.1; done
ADDR="127.0.0.1:$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/server.out")"
"$BIN/sae_client" --server="$ADDR" train --model=digits --data="$DATA" --rows=0:500 --d_hidden=64 \
  --epochs=5 --batch_size=32 --corruption=gaussian --noise_sigma=0.3 --noise_clip --clip_output \
  --watch > /dev/null || { echo "FAILED: training"; exit 1; }
OUT="$(PYTHONPATH="$STUBS" /usr/bin/python3 "$SCRIPT" --server="$ADDR" --model=digits --input="$DATA")"
RC=$?
echo "$OUT"
PASSED=0 FAILED=0
for pattern in "SERVING" "encoded 8 rows with digits@1" "denoised 8 rows: PSNR"; do
  if [[ $RC -eq 0 && "$OUT" == *"$pattern"* ]]; then PASSED=$((PASSED + 1)); else echo "FAILED: $pattern"; FAILED=$((FAILED + 1)); fi
done
# Unknown model: a clear message and a non-zero exit.
ERR="$(PYTHONPATH="$STUBS" /usr/bin/python3 "$SCRIPT" --server="$ADDR" --model=ghost --input="$DATA" 2>&1 > /dev/null)"
if [[ $? -ne 0 && "$ERR" == *"NOT_FOUND"* ]]; then PASSED=$((PASSED + 1)); else echo "FAILED: unknown model ($ERR)"; FAILED=$((FAILED + 1)); fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
