#!/usr/bin/env bash
# Regenerates the sample PKI the README's first command uses. Sample keys, not secrets.
#   stsafe-root.pem  P-256 root, only extension a critical basicConstraints (STSAFE-A shape)
#   device.pem       v3 device certificate without extensions, CN=eval3-<die serial>, 2020..2050
#   device.key       that device's key (stands in for the secure element in the examples)
#   counterfeit-device.pem  a device signed by another key under the same CA name (a clone factory)
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 ../../scripts/interop/stsafe_pki.py "$tmp/good" 0209B0846159E439520139
python3 ../../scripts/interop/stsafe_pki.py "$tmp/foreign" 0209B0846159E4395201FF
cp "$tmp/good/ca.pem" stsafe-root.pem
cp "$tmp/good/dev.pem" device.pem
cp "$tmp/good/dev.key" device.key
cp "$tmp/foreign/dev.pem" counterfeit-device.pem
