#!/usr/bin/env bash
# Builds the images from deploy/Dockerfile exactly as `docker build` would,
# with buildah (no Docker engine or registry is needed), runs the server
# image, and calls it from the host with sae_client: health, train a tiny
# model, denoise. Then checks the Kubernetes manifests.
#
# Base images are made locally when missing: debootstrap --variant=minbase
# bookworm, imported with buildah and tagged as debian:bookworm and
# debian:bookworm-slim.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SAE_BUILD_DIR:-$ROOT/build}/bin"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export STORAGE_DRIVER=vfs
BUILDAH=(buildah --storage-driver vfs)

SAE_SKIP_BUILD=1 SAE_EXTRA_PACKAGES="buildah debootstrap python3-yaml" "$ROOT/scripts/setup.sh"

echo "=== Kubernetes manifests"
python3 "$ROOT/deploy/check_k8s.py"

if ! "${BUILDAH[@]}" inspect --type image docker.io/library/debian:bookworm-slim > /dev/null 2>&1; then
  echo "=== making the debian:bookworm base image with debootstrap"
  ROOTFS="$(mktemp -d)"
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" > /tmp/sae-debootstrap.log 2>&1 \
    || { tail -20 /tmp/sae-debootstrap.log; exit 1; }
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb
  CTR="$("${BUILDAH[@]}" from scratch)"
  MNT="$("${BUILDAH[@]}" mount "$CTR")"
  cp -a "$ROOTFS"/. "$MNT"/
  "${BUILDAH[@]}" umount "$CTR" > /dev/null
  "${BUILDAH[@]}" config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$CTR"
  "${BUILDAH[@]}" commit -q "$CTR" docker.io/library/debian:bookworm > /dev/null
  "${BUILDAH[@]}" tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
  "${BUILDAH[@]}" rm "$CTR" > /dev/null
  rm -rf "$ROOTFS"
fi

echo "=== building the server and client images from deploy/Dockerfile"
cd "$ROOT"
# --layers: the client target reuses the build stage cached by the server build.
BUD=("${BUILDAH[@]}" bud --isolation chroot --pull=never --layers=true -f deploy/Dockerfile)
"${BUD[@]}" --target server -t sae-server:latest . > /tmp/sae-image-build.log 2>&1 \
  || { tail -40 /tmp/sae-image-build.log; exit 1; }
"${BUD[@]}" --target client -t sae-client:latest . >> /tmp/sae-image-build.log 2>&1 \
  || { tail -40 /tmp/sae-image-build.log; exit 1; }
"${BUILDAH[@]}" images | grep -E "sae-(server|client)"

echo "=== running the server image"
PORT="${SMOKE_PORT:-$(( 20000 + RANDOM % 20000 ))}"
CTR="$("${BUILDAH[@]}" from sae-server:latest)"
cleanup() {
  set +e
  if [[ -n "${RUN_PID:-}" ]]; then
    kill "$RUN_PID" 2> /dev/null
    wait "$RUN_PID" 2> /dev/null
  fi
  "${BUILDAH[@]}" rm "$CTR" > /dev/null 2>&1
  [[ -n "${CCTR:-}" ]] && "${BUILDAH[@]}" rm "$CCTR" > /dev/null 2>&1
  return 0
}
trap cleanup EXIT
# The image's own user and server binary, with the entrypoint's store and datasets folders, a
# loopback port and plaintext for the test (the entrypoint's TLS-less health port and grace
# flags are not exercised here).
"${BUILDAH[@]}" run --isolation chroot --network host --user sae "$CTR" -- \
  /usr/local/bin/sae_server --plaintext --listen="127.0.0.1:$PORT" --store=/var/lib/sae/models \
  --datasets=/var/lib/sae/datasets > /tmp/sae-smoke-server.log 2>&1 &
RUN_PID=$!
C=("$BIN/sae_client" "--server=127.0.0.1:$PORT" "--timeout_s=30")
for _ in $(seq 100); do "${C[@]}" --timeout_s=1 health > /dev/null 2>&1 && break; sleep 0.3; done
"${C[@]}" health
"${C[@]}" train --model=smoke --data="$ROOT/data/mnist-2500-images-u8.npy" --rows=0:300 \
  --d_hidden=32 --epochs=2 --batch_size=64 --corruption=gaussian --noise_sigma=0.3 --noise_clip \
  --clip_output --watch
"${C[@]}" denoise --model=smoke --input="$ROOT/data/mnist-2500-images-u8.npy" --rows=300:400 \
  --add_noise=0.3 --output=/tmp/sae-smoke-denoised.npy
# The client image's own binary runs too.
CCTR="$("${BUILDAH[@]}" from sae-client:latest)"
"${BUILDAH[@]}" run --isolation chroot --network host "$CCTR" -- \
  /usr/local/bin/sae_client --server="127.0.0.1:$PORT" models list
trap - EXIT
cleanup
echo "container smoke test: passed"
