#!/usr/bin/env bash
# fleetward next to Mosquitto under the same sim-devices load, on this machine, loopback only,
# one bounded run each (docs/BENCHMARKS.md records the figures and these commands).
#
#   bash scripts/bench-vs-mosquitto.sh                # benchmark 1: full mutual-TLS handshakes/s
#   bash scripts/bench-vs-mosquitto.sh telemetry      # benchmark 4: QoS 0 and QoS 1 from 1,000 devices
#   bash scripts/bench-vs-mosquitto.sh idle           # benchmark 3: memory per idle mTLS connection
#   bash scripts/bench-vs-mosquitto.sh jitr           # benchmark 2: just-in-time registrations/s (SQLite, PostgreSQL)
#   bash scripts/bench-vs-mosquitto.sh jitr-latency   # benchmark 2's second part only: what JITR adds to a connect
#   bash scripts/bench-vs-mosquitto.sh all
#
# Both servers get the same server certificate (fleetward's generated one), trust the same
# provisioning CA (P-256 root → P-256 devices in the STSAFE-A profile) and require client
# certificates. Mosquitto runs from Debian's package (apt-get install mosquitto) on its own port.
# Mosquitto runs as root here (`user root`) so that it can read the 0600 key in the temporary
# directory. Knobs: DURATION (default 10s), CONCURRENCY (handshake loops, 64), DEVICES (telemetry, 1000),
# IDLE (idle connections, 5000; up to ~19000 under a 20,000-file limit), PROFILE (release),
# BIN (a directory holding already-built fleetward and sim-devices binaries to run instead,
# e.g. a copy of an earlier build for an A/B comparison; nothing is built then).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-handshakes}
PROFILE=${PROFILE:-release}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
DEVICES=${DEVICES:-1000}
IDLE=${IDLE:-5000}
bin=${BIN:-target/$PROFILE}

command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || {
  echo "Mosquitto is not installed: apt-get install mosquitto"; exit 2; }
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ -z "${BIN:-}" ]; then
  echo "building fleetward and sim-devices ($PROFILE)…" >&2
  cargo build -q --profile "$PROFILE" --bin fleetward --bin sim-devices
fi

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

needed=$(( CONCURRENCY > DEVICES + 1 ? CONCURRENCY : DEVICES + 1 ))
[ "$what" = idle ] || [ "$what" = all ] && needed=$(( needed > IDLE ? needed : IDLE ))
echo "making $needed device identities…" >&2
"$bin/sim-devices" pki init --out "$work/pki" --devices "$needed" >/dev/null 2>&1

# fleetward, on the embedded SQLite default.
"$bin/fleetward" serve --data-dir "$work/fw" --trust-ca "$work/pki/ca.pem" \
  --mqtt-listen "127.0.0.1:$(free_port)" --http-listen "127.0.0.1:$(free_port)" \
  --lorawan-udp-listen "127.0.0.1:$(free_port)" >"$work/fw.log" 2>&1 &
fw_pid=$!; pids+=("$fw_pid")
wait_serve "$work/fw.log"
fw_addr=$(awk '$1 == "MQTT/TLS" {print $2}' "$work/fw.log")
[ -n "$fw_addr" ] || { cat "$work/fw.log"; exit 1; }
fw_token=$("$bin/fleetward" token create --role operator --description bench --data-dir "$work/fw")

# Mosquitto: same server certificate, same client CA, certificates required. Two instances:
# `mosquitto` with its defaults apart from a queue of 100,000 per client, and, for the telemetry
# benchmark, `mosquitto-lossless`, tuned to deliver everything it acknowledges to the backend
# consumer (no in-flight or queue limit towards it), as fleetward does.
start_mosquitto() { # $1: name, $2: extra settings; sets mq_pid, mq_addr
  local port; port=$(free_port)
  cat >"$work/$1.conf" <<EOF
per_listener_settings false
user root
allow_anonymous true
persistence false
log_dest stderr
log_type error
$2
listener $port 127.0.0.1
cafile $work/pki/ca.pem
certfile $work/fw/tls/server.pem
keyfile $work/fw/tls/server.key
require_certificate true
use_identity_as_username true
EOF
  "$MOSQUITTO" -c "$work/$1.conf" 2>"$work/$1.log" &
  mq_pid=$!; pids+=("$mq_pid")
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  mq_addr=127.0.0.1:$port
}
start_mosquitto mosquitto-lossless "max_queued_messages 0
max_inflight_messages 0"
ml_pid=$mq_pid ml_addr=$mq_addr
start_mosquitto mosquitto "max_queued_messages 100000"
echo "fleetward $fw_addr (pid $fw_pid), $("$MOSQUITTO" -h | head -1) $mq_addr (pid $mq_pid), lossless $ml_addr (pid $ml_pid)" >&2

ca=$work/fw/tls/server-ca.pem
# Devices come from several addresses, as a fleet does (fleetward limits new connections per
# source address: mqtt.per_ip_connection_rate, 1,000/s by default). The handshake loops use 16,
# so that limit stays out of the way at over 4,000 handshakes/s.
binds=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5
hs_binds=$(seq -s, -f '127.0.0.%g' 2 17)
sim() { "$bin/sim-devices" run --pki "$work/pki" --server-ca "$ca" --server-name localhost --json "$@"; }

handshakes() {
  echo
  echo "== benchmark 1: full mutual-TLS handshakes + MQTT CONNECT/DISCONNECT, $CONCURRENCY concurrent devices, $DURATION each, no resumption"
  printf '%-10s %-14s %12s %12s %14s %10s %10s %8s\n' server profile "connects/s" "server CPU%" "per server CPU-s" "p50 ms" "p99 ms" errors
  for profile in mbedtls-tls12 tls13; do
    for server in fleetward mosquitto; do
      if [ $server = fleetward ]; then addr=$fw_addr pid=$fw_pid; else addr=$mq_addr pid=$mq_pid; fi
      sim --gateway "$addr" --gateway-pid "$pid" --mode handshakes --profile $profile \
        --devices "$CONCURRENCY" --connect-rate 0 --duration "$DURATION" --bind "$hs_binds" >"$work/hs-$server-$profile.json" || true
      f=$work/hs-$server-$profile.json
      printf '%-10s %-14s %12.0f %12.0f %14.0f %10.2f %10.2f %8s\n' $server $profile \
        "$(field 'r["connects_per_s"]' <"$f")" "$(field 'r["gateway"]["cpu_percent"]' <"$f")" \
        "$(field 'r["connects_ok"] / max(r["gateway"]["cpu_seconds"], 1e-9)' <"$f")" \
        "$(field 'r["connect_ms"]["p50"]' <"$f")" "$(field 'r["connect_ms"]["p99"]' <"$f")" \
        "$(field 'sum(r["errors"].values())' <"$f")"
    done
    a=$(field 'r["connects_ok"] / max(r["gateway"]["cpu_seconds"], 1e-9)' <"$work/hs-fleetward-$profile.json")
    b=$(field 'r["connects_ok"] / max(r["gateway"]["cpu_seconds"], 1e-9)' <"$work/hs-mosquitto-$profile.json")
    python3 -c "print('  $profile: fleetward/Mosquitto handshakes per server CPU-second = %.2f×' % ($a / max($b, 1e-9)))"
  done
}

telemetry() {
  echo
  echo "== benchmark 4: telemetry from $DEVICES devices, as fast as acknowledged, $DURATION each, counted at a backend consumer"
  echo "   (end to end: acknowledged to the device and delivered to the consumer; mosquitto-lossless has no queue or in-flight limit)"
  printf '%-18s %-4s %10s %10s %12s %12s %12s %14s\n' server qos "msg/s" "server CPU%" "acked/CPU-s" delivered "lost (acked)" "end-to-end/CPU-s"
  for qos in 1 0; do
    # End to end per server CPU-second: at QoS 1, messages both acknowledged and delivered; at
    # QoS 0 (nothing is acknowledged; what was written may still sit in socket buffers), delivered.
    if [ $qos = 1 ]; then e2e='min(r["messages_acked"], r["messages_delivered"] or 0) / max(r["gateway"]["cpu_seconds"], 1e-9)'
    else e2e='(r["messages_delivered"] or 0) / max(r["gateway"]["cpu_seconds"], 1e-9)'; fi
    for server in fleetward mosquitto mosquitto-lossless; do
      case $server in
        fleetward) addr=$fw_addr pid=$fw_pid; tok=(--token "$fw_token") ;;
        mosquitto) addr=$mq_addr pid=$mq_pid; tok=() ;;
        *) addr=$ml_addr pid=$ml_pid; tok=() ;;
      esac
      sim --gateway "$addr" --gateway-pid "$pid" --mode telemetry --devices "$DEVICES" --rate max --qos $qos --window 4 \
        --consume "${tok[@]}" --connect-rate 1000 --duration "$DURATION" >"$work/tm-$server-$qos.json" || true
      f=$work/tm-$server-$qos.json
      printf '%-18s %-4s %10.0f %10.0f %12.0f %12s %12s %14.0f\n' $server $qos \
        "$(field 'r["messages_per_s"]' <"$f")" "$(field 'r["gateway"]["cpu_percent"]' <"$f")" \
        "$(field 'r["messages_acked"] / max(r["gateway"]["cpu_seconds"], 1e-9)' <"$f")" \
        "$(field 'r["messages_delivered"]' <"$f")" \
        "$(field 'max(0, r["messages_acked"] - (r["messages_delivered"] or 0))' <"$f")" \
        "$(field "$e2e" <"$f")"
    done
    a=$(field "$e2e" <"$work/tm-fleetward-$qos.json")
    for peer in mosquitto mosquitto-lossless; do
      b=$(field "$e2e" <"$work/tm-$peer-$qos.json")
      python3 -c "print('  QoS $qos: fleetward/$peer, end to end per server CPU-second = %.2f×' % ($a / max($b, 1e-9)))"
    done
    if [ $qos = 1 ]; then
      b=$(field 'r["messages_acked"] / max(r["gateway"]["cpu_seconds"], 1e-9)' <"$work/tm-mosquitto-$qos.json")
      python3 -c "print('  QoS 1: fleetward end to end / mosquitto acknowledged (delivered or not), per server CPU-second = %.2f×' % ($a / max($b, 1e-9)))"
    fi
  done
}

idle() {
  echo
  echo "== benchmark 3: $IDLE idle mTLS MQTT connections (TLS 1.2 profile), memory per connection"
  printf '%-10s %12s %14s %14s\n' server connected "RSS growth MB" "KiB/conn"
  for server in fleetward mosquitto; do
    if [ $server = fleetward ]; then addr=$fw_addr pid=$fw_pid; else addr=$mq_addr pid=$mq_pid; fi
    sim --gateway "$addr" --gateway-pid "$pid" --mode idle --devices "$IDLE" --connect-rate 1000 \
      --bind "$binds" --keep-alive 300 --duration "${IDLE_DURATION:-$(( IDLE / 700 + 10 ))s}" >"$work/idle-$server.json" || true
    f=$work/idle-$server.json
    printf '%-10s %12s %14.1f %14.1f\n' $server "$(field 'r["connected_at_end"]' <"$f")" \
      "$(field '(r["gateway"]["rss_peak_kib"] - r["gateway"]["rss_start_kib"]) / 1024' <"$f")" \
      "$(field 'r["gateway_kib_per_connection"]' <"$f")"
  done
}

jitr() {
  local n=${JITR_DEVICES:-3000}
  echo
  echo "== benchmark 2: just-in-time registration of $n brand-new devices, as fast as they come (idle sessions)"
  "$bin/sim-devices" pki init --out "$work/jitr-sqlite" --devices "$n" >/dev/null 2>&1
  "$bin/sim-devices" pki init --out "$work/jitr-pg" --devices "$n" >/dev/null 2>&1
  local db=fleetward_bench_$$
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
  "$bin/fleetward" serve --data-dir "$work/fwpg" --database-url "postgres://postgres@127.0.0.1:5432/$db" \
    --trust-ca "$work/jitr-pg/ca.pem" --mqtt-listen "127.0.0.1:$(free_port)" --http-listen "127.0.0.1:$(free_port)" \
    --lorawan-udp-listen "127.0.0.1:$(free_port)" >"$work/fwpg.log" 2>&1 &
  local pg_pid=$!; pids+=("$pg_pid")
  wait_serve "$work/fwpg.log"
  local pg_addr; pg_addr=$(awk '$1 == "MQTT/TLS" {print $2}' "$work/fwpg.log")
  # The SQLite server learns the two other provisioning CAs through the API.
  local admin; admin=$("$bin/fleetward" token create --role admin --data-dir "$work/fw")
  local http; http=$(awk '$1 == "HTTP" {print $2}' "$work/fw.log")
  "$bin/fleetward" ca add --certificate "$work/jitr-sqlite/ca.pem" --ca-key "$work/jitr-sqlite/ca.key" \
    --server "$http" --token "$admin" >/dev/null
  printf '%-22s %10s %14s %12s %10s %10s\n' "registry" devices "registered/s" "server CPU%" "p50 ms" "p99 ms"
  for target in sqlite pg; do
    if [ $target = sqlite ]; then addr=$fw_addr pid=$fw_pid dir=fw; else addr=$pg_addr pid=$pg_pid dir=fwpg; fi
    "$bin/sim-devices" run --pki "$work/jitr-$target" --server-ca "$work/$dir/tls/server-ca.pem" --server-name localhost --json \
      --gateway "$addr" --gateway-pid "$pid" --mode idle --connect-rate 0 --bind "$binds" --duration 20s \
      --profile mbedtls-tls12 >"$work/jitr-$target.json" || true
    f=$work/jitr-$target.json
    printf '%-22s %10s %14.0f %12.0f %10.2f %10.2f\n' "$target" "$(field 'r["connects_ok"]' <"$f")" \
      "$(field 'r["devices"] / r["all_connected_after_s"] if r["all_connected_after_s"] else 0' <"$f")" \
      "$(field 'r["gateway"]["cpu_seconds"] * 100 / r["all_connected_after_s"]' <"$f")" \
      "$(field 'r["connect_ms"]["p50"]' <"$f")" "$(field 'r["connect_ms"]["p99"]' <"$f")"
  done
  jitr_latency "$admin"
  kill "$pg_pid" 2>/dev/null; wait "$pg_pid" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null || true
}

# What registration adds to a connect (part of benchmark 2): 1,000 brand-new devices at 200
# connects/s, then the same devices again. $1: an admin token of the SQLite server (made if absent).
jitr_latency() {
  local admin=${1:-}
  [ -n "$admin" ] || admin=$("$bin/fleetward" token create --role admin --data-dir "$work/fw")
  local http; http=$(awk '$1 == "HTTP" {print $2}' "$work/fw.log")
  "$bin/sim-devices" pki init --out "$work/jitr-lat" --devices 1000 >/dev/null 2>&1
  "$bin/fleetward" ca add --certificate "$work/jitr-lat/ca.pem" --ca-key "$work/jitr-lat/ca.key" \
    --server "$http" --token "$admin" >/dev/null
  echo "  what registration adds to a connect: 1,000 devices at 200 connects/s, first (JITR) then again (known)"
  echo "  (client: TCP connect to CONNACK read, by sim-devices; server: TCP accept to CONNACK written, from"
  echo "  fleetward_connect_duration_seconds, device=\"new\" in the first pass and \"known\" in the second)"
  local series h=fleetward_connect_duration_seconds
  scrape "$http" "$work/lat-before.txt"
  for pass in first again; do
    "$bin/sim-devices" run --pki "$work/jitr-lat" --server-ca "$work/fw/tls/server-ca.pem" --server-name localhost --json \
      --gateway "$fw_addr" --mode idle --connect-rate 200 --bind "$binds" --duration 8s >"$work/lat-$pass.json" || true
    scrape "$http" "$work/lat-$pass.txt"
    f=$work/lat-$pass.json
    if [ $pass = first ]; then series='device="new"' from=before; else series='device="known"' from=first; fi
    printf '  %-6s client p50 %.2f  p90 %.2f  p99 %.2f ms (n = %s) | server p50 %s  p99 %s ms\n' $pass \
      "$(field 'r["connect_ms"]["p50"]' <"$f")" "$(field 'r["connect_ms"]["p90"]' <"$f")" \
      "$(field 'r["connect_ms"]["p99"]' <"$f")" "$(field 'r["connect_ms"]["count"]' <"$f")" \
      "$(hist_quantile 0.5 "$work/lat-$from.txt" "$work/lat-$pass.txt" $h "$series")" \
      "$(hist_quantile 0.99 "$work/lat-$from.txt" "$work/lat-$pass.txt" $h "$series")"
    # The TLS handshake's share (fleetward_tls_handshake_duration_seconds, this pass only).
    local t=fleetward_tls_handshake_duration_seconds prev=$work/lat-before.txt
    [ $pass = first ] || prev=$work/lat-first.txt
    printf '         of which the TLS handshake: server p50 %s  p99 %s ms\n' \
      "$(hist_quantile 0.5 "$prev" "$work/lat-$pass.txt" $t 'le=')" \
      "$(hist_quantile 0.99 "$prev" "$work/lat-$pass.txt" $t 'le=')"
  done
}

case "$what" in
  handshakes) handshakes ;;
  telemetry) telemetry ;;
  idle) idle ;;
  jitr) jitr ;;
  jitr-latency) jitr_latency ;;
  all) handshakes; jitr; telemetry; idle ;;
  *) echo "usage: $0 [handshakes|jitr|jitr-latency|telemetry|idle|all]"; exit 2 ;;
esac
