#!/usr/bin/env bash
# The quickstart: installs and builds (scripts/setup.sh), starts sae_server
# with its embedded file store, trains a denoising sparse autoencoder on the
# committed digits (watching its progress), denoises held-out digits with
# added noise, writes features.png and denoise.png, prints PSNR before and
# after, and stops the server. Output goes to quickstart-out/ (or $1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/quickstart-out}" && cd "${1:-$ROOT/quickstart-out}" && pwd)"
BIN="${SAE_BUILD_DIR:-$ROOT/build}/bin"
DIGITS="$ROOT/data/mnist-2500-images-u8.npy"

# Only the two binaries the quickstart runs (scripts/test.sh builds the rest).
SAE_BUILD_TARGETS="${SAE_BUILD_TARGETS:-sae_server_main sae_client_main}" "$ROOT/scripts/setup.sh"

rm -rf "$OUT/models" "$OUT/datasets" "$OUT/jobs"
"$BIN/sae_server" --plaintext --listen=127.0.0.1:0 --store="$OUT/models" > "$OUT/server.out" 2> "$OUT/server.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2> /dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on port" "$OUT/server.out" 2> /dev/null && break
  sleep 0.1
done
PORT="$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$OUT/server.out")"
[[ -n "$PORT" ]] || { echo "quickstart: sae_server did not start; see $OUT/server.log" >&2; exit 1; }
CLIENT=("$BIN/sae_client" "--server=127.0.0.1:$PORT")
echo "== sae_server is up on port $PORT (store: $OUT/models)"
"${CLIENT[@]}" health

echo "== training a denoising sparse autoencoder on 2,000 digits (Gaussian noise, sigma 0.3)"
"${CLIENT[@]}" train --model=digits --data="$DIGITS" --rows=0:2000 \
  --d_hidden=256 --activation=relu --l1=0.01 --epochs=60 --batch_size=32 \
  --corruption=gaussian --noise_sigma=0.3 --noise_clip --clip_output --watch

echo "== denoising 500 held-out digits with added noise"
"${CLIENT[@]}" denoise --model=digits --input="$DIGITS" --rows=2000:2500 --add_noise=0.3 \
  --output="$OUT/denoised.npy" --png="$OUT/denoise.png"
"${CLIENT[@]}" features --model=digits --png="$OUT/features.png" --count=100

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
trap - EXIT
echo "== done: $OUT/features.png, $OUT/denoise.png (server stopped)"
