#!/usr/bin/env bash
# sim-devices against a real `fleetward serve` process, as a user runs them: a PKI from
# `sim-devices pki init`, a server trusting its root, a short fleet run (200 MQTT devices for 10 s
# with attestation and a backend consumer, plus LoRaWAN and Sigfox devices) and the whole attack
# suite. Fails if the run had any error or lost an acknowledged message, or if any attack was
# not stopped. Loopback only; bounded in time.
#
#   bash scripts/sim/smoke.sh                 # binaries of the `loadtest` profile (CI builds them)
#   PROFILE=release DEVICES=500 DURATION=30s bash scripts/sim/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-loadtest}
DEVICES=${DEVICES:-200}
DURATION=${DURATION:-10s}
bin=target/$PROFILE
for b in fleetward sim-devices; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: cargo build --profile $PROFILE --bin fleetward --bin sim-devices"; exit 2; }
done

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/sim-devices" pki init --out "$work/pki" --devices "$DEVICES" --intermediate >/dev/null 2>&1
"$bin/fleetward" serve --data-dir "$work/data" --trust-ca "$work/pki/ca.pem" \
  --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --lorawan-udp-listen 127.0.0.1:0 \
  >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  grep -q 'stop with Ctrl-C' "$work/serve.log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log"; echo "fleetward serve exited"; exit 1; }
  sleep 0.1
done
mqtt=$(awk '$1 == "MQTT/TLS" {print $2}' "$work/serve.log")
http=$(awk '$1 == "HTTP" {print $2}' "$work/serve.log")
udp=$(awk '$1 == "LoRaWAN" {sub("udp://", "", $2); print $2}' "$work/serve.log")
[ -n "$mqtt" ] && [ -n "$http" ] && [ -n "$udp" ] || { cat "$work/serve.log"; echo "no listening addresses in the server's output"; exit 1; }
echo "fleetward serve (pid $server_pid): MQTT/TLS $mqtt, HTTP $http, LoRaWAN udp://$udp"

# Admin: registering firmware references and LPWAN devices (their root keys) needs it.
token=$("$bin/fleetward" token create --role admin --description "sim-devices smoke" --data-dir "$work/data")
read -r -a firmware < <("$bin/sim-devices" firmware)
"$bin/fleetward" "${firmware[@]:1}" --server "$http" --token "$token" >/dev/null

common=(--gateway "$mqtt" --pki "$work/pki" --server-ca "$work/data/tls/server-ca.pem"
        --api "$http" --token "$token" --lorawan "$udp")

echo "==> sim-devices run: $DEVICES devices, $DURATION, attestation, consumer, 5 LoRaWAN + 5 Sigfox devices"
"$bin/sim-devices" run "${common[@]}" --devices "$DEVICES" --rate "$((DEVICES * 2))/s" --duration "$DURATION" \
  --attest --consume --lorawan-devices 5 --sigfox-devices 5 --strict

echo "==> sim-devices attack --scenario all"
"$bin/sim-devices" attack "${common[@]}" --scenario all
