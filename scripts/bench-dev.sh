#!/usr/bin/env bash
# Load benchmark of `bluehook dev` as shipped (durable: WAL + synchronous=FULL), on loopback.
# Starts an optimised build on a fresh data folder, runs the load generator at the maximum and at
# fixed rates, then checks that every accepted event reached the event log exactly once.
#   scripts/bench-dev.sh [seconds per run, default 10] [connections, default 64]
# With SINKS=off it serves a config with the sendblue source only (ingress, router and event
# log, no sinks): the ingress path alone. PROFILE=release benchmarks the bootstraps' profile
# instead of `cli`, the command line's (the README's run command); FEATURES=none builds the
# command line as the README's quick start does (`--no-default-features`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-64}"
profile="${PROFILE:-cli}"
features=()
if [ "${FEATURES:-default}" = none ]; then features=(--no-default-features); fi

cargo build --profile "$profile" --quiet --bin bluehook "${features[@]}"
cargo build --profile "$profile" --quiet --example loadgen
bin="target/$profile/bluehook"
loadgen="target/$profile/examples/loadgen"
data="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
config=()
if [ "${SINKS:-on}" = off ]; then
  printf '[sources.sendblue]\nprovider = "sendblue"\nsecrets = ["bench-secret-0123456789"]\n' >"$data/bluehook.toml"
  config=(--config "$data/bluehook.toml")
fi
BLUEHOOK_LOG=warn "$bin" dev --listen "127.0.0.1:$port" --data-dir "$data" "${config[@]}" >"$data/dev.out" 2>"$data/dev.err" &
dev_pid=$!
trap 'kill "$dev_pid" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q "listening" "$data/dev.out" 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/webhooks/sendblue/outbound"
if [ "${SINKS:-on}" = off ]; then secret=bench-secret-0123456789; else secret="$(cat "$data/dev-secret")"; fi

echo "machine: $(nproc) cores, $(uname -m); profile $profile; run: ${secs}s each, ${conns} connections; sinks ${SINKS:-on}"
accepted=0
# Fixed rates first: the maximum leaves a backlog for the sinks that would slow what follows.
for rate in 500 2000 max; do
  if [ "$rate" = max ]; then extra=(); else extra=(--rate "$rate"); fi
  out="$("$loadgen" --url "$url" --secret "$secret" --connections "$conns" --duration "$secs" "${extra[@]}")"
  echo "rate=$rate $out"
  accepted=$((accepted + $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["accepted"])' "$out")))
done

# Nothing lost, nothing doubled: wait for the worker to drain, then count.
for _ in $(seq 600); do
  q="$("$bin" stats --json --data-dir "$data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queues"]["events"]["queued"])')"
  [ "$q" = 0 ] && break
  sleep 0.2
done
logged="$(wc -l <"$data/events.ndjson")"
unique="$(python3 -c 'import json,sys; print(len({json.loads(l)["id"] for l in open(sys.argv[1])}))' "$data/events.ndjson")"
echo "accepted=$accepted logged=$logged unique_logged=$unique"
if [ "$accepted" != "$logged" ] || [ "$logged" != "$unique" ]; then
  echo "MISMATCH: an accepted event is missing from the event log or logged twice" >&2
  exit 1
fi
echo "ok: every accepted event is in the event log exactly once"
