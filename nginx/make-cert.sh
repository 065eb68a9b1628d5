#!/usr/bin/env bash
# A local certificate authority and a server certificate signed by it, for trying Keystile over
# HTTPS (scripts/stack.sh, docker-compose.yml, the client recipes in docs/clients.md).
#
# Usage: nginx/make-cert.sh [DIR] [NAME...]
#   DIR    where to write (default nginx/certs): ca.crt, ca.key, server.crt, server.key
#   NAME   DNS names or IP addresses for the server certificate
#          (default: localhost 127.0.0.1 ::1 and this host's name)
# The CA is made once and reused (clients keep trusting it); the server certificate is renewed
# on every run. Trust ca.crt in clients (curl --cacert, SSL_CERT_FILE, NODE_EXTRA_CA_CERTS,
# Continue's requestOptions.caBundlePath); never ship ca.key anywhere.
set -euo pipefail

DIR=${1:-$(dirname "$0")/certs}
shift || true
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(localhost 127.0.0.1 ::1 "$(hostname)")

mkdir -p "$DIR"
umask 077
if [ ! -s "$DIR/ca.key" ] || [ ! -s "$DIR/ca.crt" ]; then
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 \
        -subj "/CN=Keystile local CA" -keyout "$DIR/ca.key" -out "$DIR/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

san=""
for n in "${NAMES[@]}"; do
    [ -z "$n" ] && continue
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san="$san,IP:$n"; else san="$san,DNS:$n"; fi
done
san=${san#,}

ext=$(mktemp)
trap 'rm -f "$ext" "$DIR/server.csr"' EXIT
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=$san" > "$ext"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=${NAMES[0]}" \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 397 -sha256 -extfile "$ext" -out "$DIR/server.crt" 2>/dev/null
chmod 644 "$DIR/ca.crt" "$DIR/server.crt"
chmod 640 "$DIR/server.key"
echo "certificates in $DIR: ca.crt (trust this in clients), server.crt/server.key for $san"
