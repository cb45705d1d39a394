#!/usr/bin/env bash
# The test command: installs what the tests need (a Python venv with moto's server, cfn-lint,
# the SAM CLI and cargo-lambda, from PyPI), validates template.yaml, builds every Lambda
# function's bootstrap with `cargo lambda build --release`, starts moto on a free loopback port,
# runs every test of the workspace, and stops moto.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${BLUEHOOK_VENV:-.venv}"
if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/sam" ] \
  || [ ! -x "$venv/bin/cargo-lambda" ]; then
  echo "==> installing moto[server], cfn-lint, aws-sam-cli and cargo-lambda into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6' 'cfn-lint>=1,<2' \
    'aws-sam-cli>=1.100,<2' 'cargo-lambda>=1,<2'
fi
export PATH="$(cd "$venv" && pwd)/bin:$PATH"

echo "==> cfn-lint template.yaml"
cfn-lint template.yaml
echo "==> sam validate --lint"
SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" sam validate --lint

# Every function's deployable bootstrap (x86_64; arm64 too when the target is installed).
echo "==> cargo lambda build --release"
functions=(-p ingress -p router -p crm-sync -p sms-fallback -p analytics)
cargo lambda build --release "${functions[@]}" --lambda-dir target/lambda
if rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$'; then
  echo "==> cargo lambda build --release --arm64"
  cargo lambda build --release --arm64 "${functions[@]}" --lambda-dir target/lambda-arm64
fi
export BLUEHOOK_TEST_LAMBDA_DIR="$PWD/target/lambda"

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p target
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT

"$venv/bin/python" - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/moto-api/"
for _ in range(150):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit("moto did not start; see target/moto.log")
PY
echo "==> moto on 127.0.0.1:$port"

export BLUEHOOK_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
# The Lambda functions' binaries (run by tests/lambda_runtime.rs through a runtime API server)
# and the load generator (run by tests/load.rs).
cargo build --workspace --bins --example loadgen --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
