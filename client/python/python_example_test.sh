#!/usr/bin/env bash
# Runs the Python sample client against a real server: trains a small model
# with the CLI, then checks the example's health, encode and denoise output;
# then the same against a server with mutual TLS and tokens.
set -uo pipefail
BIN="$1" DATA="$2" STUBS="$3" MAKE_PKI="$4" SCRIPT="$(dirname "${BASH_SOURCE[0]}")/sae_example.py"
WORK="$(mktemp -d)"
"$BIN/sae_server" --plaintext --listen=127.0.0.1:0 --store="$WORK/models" > "$WORK/server.out" 2> "$WORK/server.log" &
SERVER_PID=$!
SECURE_PID=""
trap 'kill $SERVER_PID $SECURE_PID 2> /dev/null; wait $SERVER_PID $SECURE_PID 2> /dev/null; rm -rf "$WORK"' EXIT
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
# A bad --input or --rows: a message and exit 2, no traceback.
printf 'not a numpy file' > "$WORK/bad.npy"
ERR="$(PYTHONPATH="$STUBS" /usr/bin/python3 "$SCRIPT" --server="$ADDR" --model=digits --input="$WORK/bad.npy" 2>&1 > /dev/null)"
RC=$?
if [[ $RC -eq 2 && "$ERR" == *"cannot read --input"* && "$ERR" != *"Traceback"* ]]; then PASSED=$((PASSED + 1)); else echo "FAILED: bad input ($RC: $ERR)"; FAILED=$((FAILED + 1)); fi
ERR="$(PYTHONPATH="$STUBS" /usr/bin/python3 "$SCRIPT" --server="$ADDR" --model=digits --input="$DATA" --rows=0 2>&1 > /dev/null)"
RC=$?
if [[ $RC -eq 2 && "$ERR" == *"--rows must be >= 1"* ]]; then PASSED=$((PASSED + 1)); else echo "FAILED: --rows=0 ($RC: $ERR)"; FAILED=$((FAILED + 1)); fi

# Mutual TLS and tokens: the read token encodes and denoises; no token is refused.
"$MAKE_PKI" "$WORK/pki" || { echo "FAILED: openssl could not make the PKI"; exit 1; }
printf 'admin admin-0123456789abcdef0123\nread read-0123456789abcdef01234\n' > "$WORK/tokens"
printf 'admin-0123456789abcdef0123\n' > "$WORK/admin.token"
printf 'read-0123456789abcdef01234\n' > "$WORK/read.token"
"$BIN/sae_server" --listen=127.0.0.1:0 --store="$WORK/secure-models" --jobs_dir="$WORK/secure-jobs" \
  --datasets="$WORK/secure-datasets" --tls_cert="$WORK/pki/server.pem" \
  --tls_key="$WORK/pki/server.key" --tls_client_ca="$WORK/pki/ca.pem" \
  --token_file="$WORK/tokens" > "$WORK/secure.out" 2> "$WORK/secure.log" &
SECURE_PID=$!
for _ in $(seq 100); do grep -q "listening on port" "$WORK/secure.out" 2> /dev/null && break; sleep 0.1; done
SECURE="localhost:$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/secure.out")"
PKI=(--tls-ca="$WORK/pki/ca.pem" --tls-cert="$WORK/pki/client.pem" --tls-key="$WORK/pki/client.key")
"$BIN/sae_client" --server="$SECURE" "${PKI[@]}" --token-file="$WORK/admin.token" train \
  --model=digits --data="$DATA" --rows=0:200 --d_hidden=32 --epochs=2 --watch > /dev/null \
  || { echo "FAILED: training over TLS"; FAILED=$((FAILED + 1)); }
OUT="$(PYTHONPATH="$STUBS" /usr/bin/python3 "$SCRIPT" --server="$SECURE" "${PKI[@]}" \
  --token-file="$WORK/read.token" --model=digits --input="$DATA")"
if [[ $? -eq 0 && "$OUT" == *"denoised 8 rows"* ]]; then PASSED=$((PASSED + 1)); else echo "FAILED: TLS + token ($OUT)"; FAILED=$((FAILED + 1)); fi
ERR="$(PYTHONPATH="$STUBS" /usr/bin/python3 "$SCRIPT" --server="$SECURE" "${PKI[@]}" --model=digits \
  --input="$DATA" 2>&1 > /dev/null)"
if [[ $? -ne 0 && "$ERR" == *"UNAUTHENTICATED"* ]]; then PASSED=$((PASSED + 1)); else echo "FAILED: no token ($ERR)"; FAILED=$((FAILED + 1)); fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
