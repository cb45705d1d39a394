#!/usr/bin/env bash
# The deployed topology measured against moto: seven `cargo lambda build --release` bootstraps
# (ingress, router, crm-sync, sms-fallback, analytics, deliver, media) through a Lambda runtime
# API server, a counting proxy in front of moto, a fake CRM, Twilio, destination and CDN;
# prints durations, CPU per event, events/s, AWS requests per event and the cost per million
# webhooks (docs/cost.md explains the model).
#   scripts/bench-aws.sh [webhooks, default 1000]
# Uses the venv of scripts/test.sh (moto, cargo-lambda); run that once first.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-1000}"
venv="${BLUEHOOK_VENV:-.venv}"
[ -x "$venv/bin/moto_server" ] && [ -x "$venv/bin/cargo-lambda" ] || {
  echo "run ./scripts/test.sh once first (it installs moto and cargo-lambda into $venv)" >&2; exit 1; }
export PATH="$(cd "$venv" && pwd)/bin:$PATH"

cargo lambda build --release -p ingress -p router -p crm-sync -p sms-fallback -p analytics -p deliver -p media -p automations \
  --lambda-dir target/lambda
cargo build --release --quiet --example aws_pipeline

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p target
moto_server -H 127.0.0.1 -p "$port" >target/moto-bench.log 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null && break; sleep 0.2; done
echo "machine: $(nproc) cores, $(uname -m)"
target/release/examples/aws_pipeline --endpoint "http://127.0.0.1:$port" --events "$events"
