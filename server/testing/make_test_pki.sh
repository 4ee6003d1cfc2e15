#!/usr/bin/env bash
# Makes a throwaway PKI for the TLS tests, in DIR:
#   ca.pem/ca.key               the test CA
#   server.pem/server.key       signed by it, for localhost and 127.0.0.1
#   client.pem/client.key       signed by it (mutual TLS)
#   rogue-ca.pem, rogue.pem/rogue.key   a client certificate from another CA
# Usage: make_test_pki.sh DIR
set -euo pipefail
DIR="$1"
mkdir -p "$DIR"
cd "$DIR"
O=(-nodes -days 2 -sha256)
openssl req -x509 -newkey rsa:2048 "${O[@]}" -keyout ca.key -out ca.pem -subj "/CN=sae test CA" 2> /dev/null
openssl req -x509 -newkey rsa:2048 "${O[@]}" -keyout rogue-ca.key -out rogue-ca.pem -subj "/CN=rogue CA" 2> /dev/null
sign() {  # name subject ca extensions
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2> /dev/null
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -days 2 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2> /dev/null
}
sign server "/CN=localhost" ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
sign client "/CN=sae test client" ca "extendedKeyUsage=clientAuth"
sign rogue "/CN=rogue client" rogue-ca "extendedKeyUsage=clientAuth"
rm -f ./*.csr ./*.ext ./*.srl
