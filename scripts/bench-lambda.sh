#!/usr/bin/env bash
# Cold start, warm per-invocation time and peak memory of every Lambda function, measured on the
# `cargo lambda build --release` bootstraps through a local Lambda runtime API server.
#   scripts/bench-lambda.sh [cold starts per function, default 20] [warm invocations, default 2000]
# Needs cargo-lambda (`pip install cargo-lambda`; scripts/test.sh puts it in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
starts="${1:-20}"
invocations="${2:-2000}"
if [ -x .venv/bin/cargo-lambda ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

cargo lambda build --release -p ingress -p router -p crm-sync -p sms-fallback -p analytics -p deliver -p media -p automations \
  --lambda-dir target/lambda
cargo build --release --quiet --example lambda_bench
echo "machine: $(nproc) cores, $(uname -m), $(uname -r)"
target/release/examples/lambda_bench --bootstraps target/lambda --starts "$starts" \
  --invocations "$invocations"
