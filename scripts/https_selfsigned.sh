#!/usr/bin/env bash
# A self-signed certificate for Ray Serve's HTTPS proxy, and the http_options to use it.
#
#   scripts/https_selfsigned.sh DIR [NAME...]
#
# Writes DIR/cert.pem and DIR/key.pem (RSA 2048, unencrypted, mode 600), valid for
# localhost, 127.0.0.1 and ::1 plus each NAME (a host name or an IP address clients will
# use, e.g. the head node's public DNS name), for $DAYS days (default 365). Refuses to
# overwrite existing files. Prints the `http_options` lines for a Serve config on stdout.
# Clients trust the certificate itself: `curl --cacert DIR/cert.pem https://NAME:8000/healthz`.
# The files must exist at the same path on every node that runs a Serve proxy.
# Needs the openssl command (OpenSSL >= 1.1.1 or LibreSSL).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi

dir=$1
shift
days=${DAYS:-365}
cert="$dir/cert.pem"
key="$dir/key.pem"
for file in "$cert" "$key"; do
    if [[ -e $file ]]; then
        echo "error: $file exists; remove it or pick another folder" >&2
        exit 1
    fi
done
command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cert="$dir/cert.pem"
key="$dir/key.pem"

sans="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
        sans+=",IP:$name"
    else
        sans+=",DNS:$name"
    fi
done
common_name=${1:-localhost}

config=$(mktemp)
trap 'rm -f "$config"' EXIT
# A leaf certificate (CA:FALSE) that is its own trust anchor; the extensions satisfy
# strict X.509 checking (Python >= 3.13 clients enable it by default).
cat >"$config" <<EOF
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = $common_name
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $sans
EOF

(
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
        -config "$config" -keyout "$key" -out "$cert" 2>/dev/null
)
chmod 644 "$cert"

echo "wrote $cert and $key ($sans; $days days)" >&2
cat <<EOF
http_options:
  host: 0.0.0.0
  port: 8000
  ssl_certfile: $cert
  ssl_keyfile: $key
EOF
