# Helpers the benchmark scripts share (sourced by bench-vs-mosquitto.sh, bench-bus.sh and
# bench-fleet-idle.sh).

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A value from a sim-devices JSON report on stdin: `field 'r["connects_ok"]' <report.json`.
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"r": r}))' "$1"; }

# One metric from a fleetward HTTP address's /metrics (0 when absent or unreachable).
metric() { curl -s -m 5 "http://$1/metrics" | awk -v m="$2" '$1 == m {v = $2} END {print v + 0}'; }

# Waits for `fleetward serve` to print that it is ready in its log ($1), at most $2 tenths of a
# second (default 300).
wait_serve() { for _ in $(seq 1 "${2:-300}"); do grep -qs 'stop with Ctrl-C' "$1" && break; sleep 0.1; done; }
