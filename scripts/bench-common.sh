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

# Saves a fleetward HTTP address's /metrics ($1, with or without http://) to a file ($2), for
# hist_quantile.
scrape() { curl -s -m 5 "http://${1#http://}/metrics" >"$2"; }

# The q-quantile, in milliseconds, of what a histogram observed between two scrapes, interpolated
# within a bucket as Prometheus' histogram_quantile() does (0 when nothing was observed):
#   hist_quantile 0.99 before.txt after.txt fleetward_connect_duration_seconds 'device="new"'
hist_quantile() {
  python3 - "$@" <<'PY'
import sys
q, before, after, name, labels = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
def buckets(path):
    out = {}
    for line in open(path):
        if not line.startswith(name + "_bucket{") or labels not in line:
            continue
        le = line.split('le="', 1)[1].split('"', 1)[0]
        out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out
a, b = buckets(before), buckets(after)
bounds = sorted(b)
counts = [b[x] - a.get(x, 0) for x in bounds]
if not counts or counts[-1] <= 0:
    print(0); sys.exit()
rank, lower, below = q * counts[-1], 0.0, 0.0
for bound, n in zip(bounds, counts):
    if n >= rank:
        if bound == float("inf"):
            print(f"{lower * 1000:.2f}"); break
        print(f"{(lower + (bound - lower) * (rank - below) / max(n - below, 1e-9)) * 1000:.2f}"); break
    lower, below = bound, n
PY
}
