#!/usr/bin/env bash
# Benchmark 3 at scale-out size: TOTAL idle mutual-TLS MQTT devices held across NODES
# `fleetward serve` processes on this machine, sharing one PostgreSQL database and NATS
# JetStream, each device registered just in time on its first connection. Reports, per node,
# the devices connected and the node's resident memory per connection.
#
#   PROFILE=loadtest bash scripts/bench-fleet-idle.sh     # NODES=6 TOTAL=100000 DURATION=300s RATE=100
#
# It exits 1 unless every device was online near the end, registered once, with no client error
# and no PostgreSQL deadlock (.ci/run runs a small fleet: NODES=3 TOTAL=3000).
#
# Each process here may hold 20,000 open files, so each node (and each sim-devices process,
# one per node) holds TOTAL/NODES ≤ ~19,000 devices. Every node pools POOL PostgreSQL
# connections (database_max_connections, default 8 here: 6 × (8 + 1) stays under PostgreSQL's
# default 100). NATS is a private nats-server on a free loopback port; PostgreSQL is the local
# server (FLEETWARD_BENCH_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres) with a
# database made for the run and dropped after it. Loopback only; bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
NODES=${NODES:-6}
TOTAL=${TOTAL:-100000}
DURATION=${DURATION:-300s}
RATE=${RATE:-100}   # new connections per second offered by each client process
POOL=${POOL:-8}
ADMIN=${FLEETWARD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
bin=target/$PROFILE
per=$(( (TOTAL + NODES - 1) / NODES ))   # the last client takes what is left
[ "$per" -le 19000 ] || { echo "TOTAL/NODES = $per is over the ~19,000 one process can hold here"; exit 2; }
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[ -x "$NATS_SERVER" ] || { echo "nats-server is not installed: apt-get install nats-server"; exit 2; }
echo "building fleetward and sim-devices ($PROFILE)…" >&2
cargo build -q --profile "$PROFILE" --bin fleetward --bin sim-devices

work=$(mktemp -d)
db=fleetward_fleet_$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }

echo "making $NODES × $per device identities (one provisioning CA per client process)…" >&2
devices_of() { local n=$1; [ "$n" -lt "$NODES" ] && echo "$per" || echo $(( TOTAL - per * (NODES - 1) )); }
for n in $(seq 1 "$NODES"); do
  "$bin/sim-devices" pki init --out "$work/pki$n" --devices "$(devices_of "$n")" --ca-name "fleet bench CA $n" >/dev/null 2>&1 &
done
wait
cas=$(for n in $(seq 1 "$NODES"); do printf '%s,' "$work/pki$n/ca.pem"; done); cas=${cas%,}

nats_port=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
psql -q "$ADMIN" -c "CREATE DATABASE $db" >/dev/null
base=${ADMIN%/*}
printf 'bench-1 %s\n' "$(openssl rand -hex 32)" >"$work/kek"

node_pid=() node_mqtt=() node_http=()
start_node() { # $1: node number; the first makes the server certificate, the rest present it
  local n=$1 dir=$work/fw$1 tls=()
  [ "$n" = 1 ] || tls=(--tls-cert "$work/fw1/tls/server.pem" --tls-key "$work/fw1/tls/server.key")
  "$bin/fleetward" serve --data-dir "$dir" --database-url "$base/$db" --database-max-connections "$POOL" \
    --kek-file "$work/kek" --nats-url "nats://127.0.0.1:$nats_port" --node-name "gw-$n" --trust-ca "$cas" \
    --mqtt-listen "127.0.0.1:$(free_port)" --http-listen "127.0.0.1:$(free_port)" \
    --lorawan-udp-listen "127.0.0.1:$(free_port)" "${tls[@]}" >"$dir.log" 2>&1 &
  node_pid[n]=$!; pids+=("$!")
}
wait_node() {
  local n=$1 dir=$work/fw$1
  wait_serve "$dir.log" 600
  node_mqtt[n]=$(awk '$1 == "MQTT/TLS" {print $2}' "$dir.log")
  node_http[n]=$(awk '$1 == "HTTP" {sub("http://", "", $2); print $2}' "$dir.log")
  [ -n "${node_mqtt[n]}" ] || { echo "node $n did not start:"; cat "$dir.log"; exit 1; }
}
start_node 1; wait_node 1
for n in $(seq 2 "$NODES"); do start_node "$n"; done
for n in $(seq 2 "$NODES"); do wait_node "$n"; done
echo "$NODES nodes up on database $db and NATS 127.0.0.1:$nats_port (pool $POOL each)" >&2

secs=${DURATION%s}
start_rss=()
for n in $(seq 1 "$NODES"); do start_rss[n]=$(rss_kib "${node_pid[n]}"); done
echo "== $TOTAL idle mTLS MQTT devices (TLS 1.2 profile, keep-alive 600 s) on $NODES gateways, $RATE new/s per client, $DURATION" >&2
sims=()
for n in $(seq 1 "$NODES"); do
  # Each client connects from two addresses of its own (127.0.n.2 and 127.0.n.3).
  "$bin/sim-devices" run --pki "$work/pki$n" --server-ca "$work/fw1/tls/server-ca.pem" --server-name localhost \
    --gateway "${node_mqtt[n]}" --gateway-pid "${node_pid[n]}" --mode idle --devices "$(devices_of "$n")" \
    --connect-rate "$RATE" --bind "127.0.$n.2,127.0.$n.3" --keep-alive 600 --duration "$DURATION" \
    --json >"$work/sim$n.json" 2>"$work/sim$n.err" &
  sims+=("$!"); pids+=("$!")
done

# Progress every 10 s, and the count that matters taken 10 s before the clients stop.
t=0
while [ $(( t + 10 )) -lt "$secs" ]; do
  sleep 10; t=$(( t + 10 ))
  online=0
  for n in $(seq 1 "$NODES"); do online=$(( online + $(metric "${node_http[n]}" fleetward_devices_online) )); done
  echo "  t=${t}s online $online" >&2
done
sleep $(( secs - 10 - t > 0 ? secs - 10 - t : 0 ))
printf '%-6s %10s %12s %14s %12s\n' node online "RSS MB" "RSS growth MB" "KiB/conn"
total_online=0 total_growth=0
for n in $(seq 1 "$NODES"); do
  online=$(metric "${node_http[n]}" fleetward_devices_online)
  rss=$(rss_kib "${node_pid[n]}")
  growth=$(( rss - start_rss[n] ))
  total_online=$(( total_online + online )); total_growth=$(( total_growth + growth ))
  awk -v n="$n" -v o="$online" -v r="$rss" -v g="$growth" \
    'BEGIN { printf "gw-%-3s %10s %12.1f %14.1f %12.1f\n", n, o, r / 1024, g / 1024, g / (o > 0 ? o : 1) }'
done
registered=$(psql -qtA "$base/$db" -c "SELECT count(*) FROM devices")
pg_conns=$(psql -qtA "$base/$db" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$db'")
awk -v o="$total_online" -v g="$total_growth" \
  'BEGIN { printf "%-6s %10s %12s %14.1f %12.1f\n", "all", o, "", g / 1024, g / (o > 0 ? o : 1) }'
echo "devices registered in PostgreSQL: $registered; connections to the database now: $pg_conns (this query's included)"
deadlocks=$(psql -qtA "$base/$db" -c "SELECT deadlocks FROM pg_stat_database WHERE datname = '$db'")
echo "PostgreSQL deadlocks in the run: $deadlocks"
for s in "${sims[@]}"; do wait "$s" || true; done
echo "clients:"
errors=0
for n in $(seq 1 "$NODES"); do
  errors=$(( errors + $(field 'sum(r["errors"].values())' <"$work/sim$n.json") ))
  f=$work/sim$n.json
  printf '  sim %s: connected at end %s of %s, all connected after %s s, connect p50 %.1f ms p99 %.1f ms, errors %s\n' "$n" \
    "$(field 'r["connected_at_end"]' <"$f")" "$(devices_of "$n")" "$(field 'r["all_connected_after_s"]' <"$f")" \
    "$(field 'r["connect_ms"]["p50"]' <"$f")" "$(field 'r["connect_ms"]["p99"]' <"$f")" \
    "$(field 'sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"]' <"$f")"
done
# The run fails if the fleet was not held whole: .ci/run runs a small one as a check.
problems=()
[ "$total_online" -eq "$TOTAL" ] || problems+=("$total_online of $TOTAL devices online")
[ "$registered" -eq "$TOTAL" ] || problems+=("$registered of $TOTAL devices registered")
[ "$deadlocks" -eq 0 ] || problems+=("$deadlocks PostgreSQL deadlocks")
[ "$errors" -eq 0 ] || problems+=("$errors client errors")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${problems[@]}"
  for n in $(seq 1 "$NODES"); do echo "--- gw-$n (last lines)"; grep -v 'registered just in time' "$work/fw$n.log" | tail -5; done
  exit 1
fi
echo "ok: $TOTAL devices held across $NODES gateways"
