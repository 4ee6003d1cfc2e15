#!/usr/bin/env bash
# Runs `buf lint` on proto/ (STANDARD + COMMENTS rules, see proto/buf.yaml).
# The buf CLI comes from the npm package @bufbuild/buf, installed into
# build/tools on first use (Node.js and npm from Debian when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/build/tools"
BUF_VERSION=1.47.2
if ! command -v npm > /dev/null; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
if [[ ! -x "$TOOLS/node_modules/.bin/buf" ]]; then
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --silent --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION"
fi
cd "$ROOT/proto"
"$TOOLS/node_modules/.bin/buf" lint
echo "buf lint: proto/ is clean"
