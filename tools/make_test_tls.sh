#!/usr/bin/env bash
# Regenerates tests/fixtures/tls/: a test certificate authority and a server certificate it
# signed for localhost and 127.0.0.1, valid for a century, for the TLS tests. Never used
# outside tests: the keys are public.
set -euo pipefail
out="$(dirname "$0")/../tests/fixtures/tls"
mkdir -p "$out"
cd "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -sha256 -days 36500 -subj "/CN=son1k test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  -out ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out "$work/server.key"
openssl pkcs8 -topk8 -nocrypt -in "$work/server.key" -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out "$work/server.csr"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA ca.pem -CAkey "$work/ca.key" -CAcreateserial \
  -days 36500 -sha256 -extfile "$work/ext" -out server.pem
rm -f ca.srl
