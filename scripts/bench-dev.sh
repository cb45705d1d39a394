#!/usr/bin/env bash
# Load benchmark of `bluehook dev` as shipped (durable: WAL + synchronous=FULL), on loopback.
# Starts an optimised build on a fresh data folder, runs the load generator at the maximum and at
# fixed rates, then checks that every accepted event reached the event log exactly once.
#   scripts/bench-dev.sh [seconds per run, default 10] [connections, default 64]
# With SINKS=off it serves a config with the sendblue source only (ingress, router and event
# log, no sinks): the ingress path alone. PROFILE=release benchmarks the bootstraps' profile
# instead of `cli`, the command line's (the README's run command); FEATURES=none builds the
# command line as the README's quick start does (`--no-default-features`). DESTINATIONS=N adds N
# destinations, every event routed to each, all pointing at `examples/receiver.rs` (an instant
# receiver); the run then also waits for every delivery. INSPECTOR=off listens on 0.0.0.0 (the
# inspector is off there: no request recorded for it), to measure what the inspector costs. The last line gives the CPU the dev
# process used (user + system), per accepted event.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-64}"
profile="${PROFILE:-cli}"
features=()
if [ "${FEATURES:-default}" = none ]; then features=(--no-default-features); fi

cargo build --profile "$profile" --quiet --bin bluehook "${features[@]}"
cargo build --profile "$profile" --quiet --example loadgen --example receiver
bin="target/$profile/bluehook"
loadgen="target/$profile/examples/loadgen"
destinations="${DESTINATIONS:-0}"
listen_host=127.0.0.1
if [ "${INSPECTOR:-on}" = off ]; then listen_host=0.0.0.0; fi
data="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
config=()
receiver_pid=
if [ "${SINKS:-on}" = off ] || [ "$destinations" != 0 ]; then
  printf '[sources.sendblue]\nprovider = "sendblue"\nsecrets = ["bench-secret-0123456789"]\n' >"$data/bluehook.toml"
  config=(--config "$data/bluehook.toml")
fi
if [ "$destinations" != 0 ]; then
  "target/$profile/examples/receiver" >"$data/receiver.out" &
  receiver_pid=$!
  for _ in $(seq 100); do grep -q "listening" "$data/receiver.out" 2>/dev/null && break; sleep 0.1; done
  receiver="$(sed -n 's/^listening on //p' "$data/receiver.out")"
  names=()
  for i in $(seq "$destinations"); do
    printf '[destinations.d%s]\nurl = "%s/hooks/d%s"\n\n' "$i" "$receiver" "$i" >>"$data/bluehook.toml"
    names+=("\"d$i\"")
  done
  to="$(IFS=,; echo "${names[*]}")"
  printf '[[routes]]\nto = [%s]\n\n' "$to" >>"$data/bluehook.toml"
  if [ "${SINKS:-on}" != off ]; then
    # [[routes]] replaces the defaults: write them out, and turn every sink on.
    cat >>"$data/bluehook.toml" <<'TOML'
[[routes]]
to = "analytics"

[[routes]]
when = { kind = ["message.received", "message.status"] }
to = "crm"

[[routes]]
when = { kind = "message.status", status = "failed", service = "iMessage", direction = "outbound" }
to = "sms_fallback"

[sinks.crm]
[sinks.sms_fallback]
[sinks.analytics]
TOML
  fi
fi
BLUEHOOK_LOG=warn "$bin" dev --listen "$listen_host:$port" --data-dir "$data" "${config[@]}" >"$data/dev.out" 2>"$data/dev.err" &
dev_pid=$!
trap 'kill "$dev_pid" 2>/dev/null || true; [ -z "$receiver_pid" ] || kill "$receiver_pid" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q "listening" "$data/dev.out" 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/webhooks/sendblue/outbound"
if [ -f "$data/bluehook.toml" ]; then secret=bench-secret-0123456789; else secret="$(cat "$data/dev-secret")"; fi

echo "machine: $(nproc) cores, $(uname -m); profile $profile; run: ${secs}s each, ${conns} connections; sinks ${SINKS:-on}; destinations $destinations"
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
if [ "$destinations" != 0 ]; then
  want=$((accepted * destinations))
  for _ in $(seq 3000); do
    got="$("$bin" stats --json --data-dir "$data" | python3 -c 'import json,sys; print(sum(d["delivered"] for d in json.load(sys.stdin)["destinations"].values()))')"
    [ "$got" -ge "$want" ] && break
    sleep 0.2
  done
  echo "deliveries: $got of $want delivered"
fi
# Let every sink finish, then read the process's CPU time (utime + stime, in clock ticks).
for _ in $(seq 3000); do
  q="$("$bin" stats --json --data-dir "$data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queued"])')"
  [ "$q" = 0 ] && break
  sleep 0.2
done
python3 - "$dev_pid" "$accepted" <<'PY'
import os, sys
fields = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
ticks = int(fields[11]) + int(fields[12])
secs = ticks / os.sysconf("SC_CLK_TCK")
print(f"cpu: {secs:.2f} s for {sys.argv[2]} events, {secs / int(sys.argv[2]) * 1e6:.0f} us per event")
PY
