#!/usr/bin/env bash
# The scale-out bus at load: QoS 1 telemetry from DEVICES simulated devices, as fast as
# acknowledged, through one `fleetward serve` with and without NATS JetStream configured. With
# the bus, every stored message must also reach JetStream: the script waits for the relay's
# backlog to drain and reports how many messages were published, deferred to the store (buffer
# full; published from there) or retried, and how long the relay needed after the load stopped.
#
#   PROFILE=loadtest bash scripts/bench-bus.sh        # DEVICES=1000 DURATION=10s by default
#
# NATS: a private nats-server (JetStream, store in a temporary directory) on a free loopback port,
# so the machine's own NATS and its streams are not touched. Loopback only; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
DURATION=${DURATION:-10s}
DEVICES=${DEVICES:-1000}
bin=target/$PROFILE
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[ -x "$NATS_SERVER" ] || { echo "nats-server is not installed: apt-get install nats-server"; exit 2; }
echo "building fleetward and sim-devices ($PROFILE)…" >&2
cargo build -q --profile "$PROFILE" --bin fleetward --bin sim-devices

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

"$bin/sim-devices" pki init --out "$work/pki" --devices "$DEVICES" >/dev/null 2>&1
nats_port=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done

run() { # $1: label, rest: extra serve flags
  local label=$1; shift
  local dir=$work/fw-$label
  "$bin/fleetward" serve --data-dir "$dir" --trust-ca "$work/pki/ca.pem" \
    --mqtt-listen "127.0.0.1:$(free_port)" --http-listen "127.0.0.1:$(free_port)" \
    --lorawan-udp-listen "127.0.0.1:$(free_port)" "$@" >"$dir.log" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_serve "$dir.log"
  local addr http
  addr=$(awk '$1 == "MQTT/TLS" {print $2}' "$dir.log")
  http=$(awk '$1 == "HTTP" {sub("http://", "", $2); print $2}' "$dir.log")
  "$bin/sim-devices" run --gateway "$addr" --gateway-pid "$pid" --pki "$work/pki" \
    --server-ca "$dir/tls/server-ca.pem" --server-name localhost --mode telemetry --devices "$DEVICES" \
    --rate max --qos 1 --window 4 --connect-rate 1000 --bind 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5 \
    --duration "$DURATION" --json >"$work/$label.json" 2>/dev/null || true
  local stored published=0 deferred=0 backlog=0 retries=0 dups=0 waited=0
  stored=$(metric "$http" fleetward_messages_stored_total)
  if [ "$label" = bus ]; then
    for waited in $(seq 0 600); do
      published=$(metric "$http" fleetward_bus_telemetry_published_total)
      deferred=$(metric "$http" fleetward_bus_telemetry_deferred_total)
      backlog=$(metric "$http" fleetward_bus_telemetry_backlog)
      [ "$published" -ge "$stored" ] && [ "$backlog" = 0 ] && break
      sleep 0.1
    done
    retries=$(metric "$http" fleetward_bus_publish_retries_total)
    dups=$(metric "$http" fleetward_bus_telemetry_duplicates_total)
  fi
  printf '%-8s %10.0f %10.0f %12.0f %10s %10s %10s %8s %8s %10s\n' "$label" \
    "$(field 'r["messages_per_s"]' <"$work/$label.json")" "$(field 'r["gateway"]["cpu_percent"]' <"$work/$label.json")" \
    "$(field 'r["messages_acked"] / max(r["gateway"]["cpu_seconds"], 1e-9)' <"$work/$label.json")" \
    "$stored" "$published" "$deferred" "$retries" "$dups" "$(( waited / 10 )).$(( waited % 10 ))s"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "== QoS 1 telemetry from $DEVICES devices, $DURATION, one gateway: without and with the JetStream relay"
printf '%-8s %10s %10s %12s %10s %10s %10s %8s %8s %10s\n' run "msg/s" "CPU%" "msg/CPU-s" stored "to bus" deferred retries dups "drain"
run plain
run bus --nats-url "nats://127.0.0.1:$nats_port" --node-name bench
