#!/usr/bin/env bash
# `bluehook dev` (every sink on, durable as shipped) against its peer, the Express endpoint in
# bench/express (the shared-secret check and an in-memory Set of seen message handles: nothing
# durable, nothing routed), on the same load: `examples/loadgen.rs` at the maximum (closed loop)
# over keep-alive connections, alternating the two servers, each on a fresh start.
#   scripts/bench-peer.sh [seconds per run, default 10] [pairs, default 3] [connections, default 64]
# Prints each run, the medians and their ratio. Needs node and npm (express is installed into
# bench/express/node_modules from package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
pairs="${2:-3}"
conns="${3:-64}"
profile="${PROFILE:-cli}"
secret=bench-secret-0123456789

cargo build --profile "$profile" --quiet --bin bluehook
cargo build --profile "$profile" --quiet --example loadgen
(cd bench/express && npm ci --no-audit --no-fund --silent)
bin="target/$profile/bluehook"
loadgen="target/$profile/examples/loadgen"
work="$(mktemp -d)"
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_listening() { for _ in $(seq 200); do grep -q listening "$1" 2>/dev/null && return; sleep 0.05; done; echo "did not start" >&2; exit 1; }

run_bluehook() {
  local data="$work/data-$1" port
  port="$(free_port)"
  mkdir -p "$data"
  # The built-in default (every sink on), with a known secret instead of a made-up one.
  printf '%s' "$secret" >"$data/dev-secret"
  BLUEHOOK_LOG=warn "$bin" dev --listen "127.0.0.1:$port" --data-dir "$data" >"$data/out" 2>"$data/err" &
  pid=$!
  wait_listening "$data/out"
  "$loadgen" --url "http://127.0.0.1:$port/webhooks/sendblue/outbound" --secret "$secret" \
    --connections "$conns" --duration "$secs"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

run_express() {
  local port
  port="$(free_port)"
  WEBHOOK_SECRET="$secret" PORT="$port" node bench/express/server.js >"$work/express-$1.out" 2>&1 &
  pid=$!
  wait_listening "$work/express-$1.out"
  "$loadgen" --url "http://127.0.0.1:$port/webhooks/sendblue/outbound" --secret "$secret" \
    --connections "$conns" --duration "$secs"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

echo "machine: $(nproc) cores, $(uname -m); node $(node --version); profile $profile; ${secs}s per run, ${conns} connections, ${pairs} pairs"
: >"$work/results"
for i in $(seq "$pairs"); do
  b="$(run_bluehook "$i")"; echo "bluehook $b" | tee -a "$work/results"
  e="$(run_express "$i")"; echo "express $e" | tee -a "$work/results"
done
python3 - "$work/results" <<'PY'
import json, statistics, sys
runs = {"bluehook": [], "express": []}
for line in open(sys.argv[1]):
    name, doc = line.split(" ", 1)
    runs[name].append(json.loads(doc))
med = {k: statistics.median(r["accepted_per_sec"] for r in v) for k, v in runs.items()}
p99 = {k: statistics.median(r["latency_ms"]["p99"] for r in v) for k, v in runs.items()}
errors = sum(r["errors"] for v in runs.values() for r in v)
for k in runs:
    print(f"{k}: median {med[k]:,.0f} accepted/s, p99 {p99[k]:.1f} ms")
print(f"ratio bluehook / express: {med['bluehook'] / med['express']:.2f}x (errors: {errors})")
PY
