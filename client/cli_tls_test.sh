#!/usr/bin/env bash
# End-to-end test of sae_client's security flags against a real sae_server
# with mutual TLS and bearer tokens (a throwaway PKI made by openssl):
# --tls-ca, --tls-cert, --tls-key and --token-file, with the read and admin
# roles, and the error messages for a missing token, a read token on an
# admin command, a wrong CA and a missing key. Run by ctest with the build's
# bin/ folder as $1 and server/testing/make_test_pki.sh as $2.
set -uo pipefail
BIN="$1"
MAKE_PKI="$2"
WORK="$(mktemp -d)"
FAILED=0
PASSED=0
SERVER_PID=""
cleanup() { [[ -n "$SERVER_PID" ]] && { kill "$SERVER_PID" 2> /dev/null; wait "$SERVER_PID" 2> /dev/null; }; rm -rf "$WORK"; }
trap cleanup EXIT
check() {  # check NAME COMMAND...
  local name="$1"; shift
  if "$@" > /dev/null 2>&1; then PASSED=$((PASSED + 1)); else echo "FAILED: $name"; FAILED=$((FAILED + 1)); fi
}
expect_fail() {  # expect_fail NAME PATTERN COMMAND...: non-zero exit and PATTERN on stderr
  local name="$1" pattern="$2"; shift 2
  local err rc
  err="$("$@" 2>&1 > /dev/null)"; rc=$?
  if [[ $rc -ne 0 && "$err" == *"$pattern"* ]]; then PASSED=$((PASSED + 1));
  else echo "FAILED: $name (exit $rc, stderr: $err)"; FAILED=$((FAILED + 1)); fi
}

"$MAKE_PKI" "$WORK/pki" || { echo "FAILED: openssl could not make the PKI"; exit 1; }
ADMIN="admin-$(openssl rand -hex 16)" READ="read-$(openssl rand -hex 16)"
printf 'admin %s trainer\nread %s frontend\n' "$ADMIN" "$READ" > "$WORK/tokens"
printf '%s\n' "$ADMIN" > "$WORK/admin.token"
printf '%s\n' "$READ" > "$WORK/read.token"
printf 'wrong-0123456789abcdef\n' > "$WORK/wrong.token"

"$BIN/sae_server" --listen=127.0.0.1:0 --store="$WORK/models" \
  --tls-cert="$WORK/pki/server.pem" --tls-key="$WORK/pki/server.key" \
  --tls-client-ca="$WORK/pki/ca.pem" --token-file="$WORK/tokens" \
  > "$WORK/server.out" 2> "$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "listening on port" "$WORK/server.out" 2> /dev/null && break; sleep 0.1; done
PORT="$(awk '/listening on port/ {print $NF}' "$WORK/server.out")"
[[ -n "$PORT" ]] || { echo "FAILED: the server did not start"; cat "$WORK/server.log"; exit 1; }
TLS=("--server=localhost:$PORT" --timeout_s=20 "--tls-ca=$WORK/pki/ca.pem"
     "--tls-cert=$WORK/pki/client.pem" "--tls-key=$WORK/pki/client.key")
ADMIN_CLI=("$BIN/sae_client" "${TLS[@]}" "--token-file=$WORK/admin.token")
READ_CLI=("$BIN/sae_client" "${TLS[@]}" "--token-file=$WORK/read.token")

# A tiny model through the admin token, served to the read token.
for i in $(seq 0 39); do echo "$((i % 3)),$((i % 5)),$((i % 7)),1"; done > "$WORK/x.csv"
check "health without a token" "$BIN/sae_client" "${TLS[@]}" health
check "admin trains" "${ADMIN_CLI[@]}" train --model=secure --data="$WORK/x.csv" --d_hidden=8 --epochs=2 --watch
check "read lists models" bash -c "$(printf '%q ' "${READ_CLI[@]}") models list | grep -q '^secure'"
check "read encodes" "${READ_CLI[@]}" encode --model=secure --input="$WORK/x.csv" --output="$WORK/codes.npy"
check "codes written" test -s "$WORK/codes.npy"
check "admin labels" "${ADMIN_CLI[@]}" models label secure stable 1

expect_fail "no token" "--token-file" "$BIN/sae_client" "${TLS[@]}" models list
expect_fail "read token on an admin command" "admin role" "${READ_CLI[@]}" models label secure canary 1
expect_fail "unknown token" "not known" "$BIN/sae_client" "${TLS[@]}" "--token-file=$WORK/wrong.token" models list
expect_fail "wrong CA" "server unreachable" "$BIN/sae_client" "--server=localhost:$PORT" --timeout_s=5 \
  "--tls-ca=$WORK/pki/rogue-ca.pem" "--tls-cert=$WORK/pki/client.pem" "--tls-key=$WORK/pki/client.key" \
  "--token-file=$WORK/admin.token" models list
expect_fail "no client certificate" "server unreachable" "$BIN/sae_client" "--server=localhost:$PORT" \
  --timeout_s=5 "--tls-ca=$WORK/pki/ca.pem" "--token-file=$WORK/admin.token" models list
expect_fail "plaintext to a TLS server" "server unreachable" "$BIN/sae_client" "--server=localhost:$PORT" \
  --timeout_s=5 "--token-file=$WORK/admin.token" models list
expect_fail "certificate without its key" "--tls-cert and --tls-key go together" \
  "$BIN/sae_client" "--server=localhost:$PORT" "--tls-cert=$WORK/pki/client.pem" health
expect_fail "missing CA file" "--tls-ca" "$BIN/sae_client" "--server=localhost:$PORT" \
  "--tls-ca=$WORK/none.pem" health
check "no token in the server log" bash -c "! grep -q -e '$ADMIN' -e '$READ' '$WORK/server.log'"
check "refusal names the caller" grep -q "refused SetModelLabel to 'frontend'" "$WORK/server.log"

# The server refuses to start without a transport choice.
expect_fail "no transport chosen" "plaintext" "$BIN/sae_server" --listen=127.0.0.1:0 --store="$WORK/m2"

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
