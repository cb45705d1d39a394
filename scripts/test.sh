#!/usr/bin/env bash
# The test command: installs what the tests need (a Python venv with moto's server, cfn-lint,
# the SAM CLI and cargo-lambda, from PyPI; Debian's chromium and playwright-core from npm for the
# inspector's browser test), validates template.yaml, builds every Lambda
# function's bootstrap with `cargo lambda build --release` and the test binaries, starts moto on
# a free loopback port, runs every test of the workspace, and stops moto.
# Extra arguments go to the test runner (e.g. a test name filter).
# `scripts/test.sh --install-only` only makes the venv; `--prepare` makes it and builds the
# bootstraps (CI starts that beside its lints; the run after it finds them built).
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
# The inspector's browser test: Debian's chromium and playwright-core (tests/browser).
mkdir -p target
chromium="${BLUEHOOK_TEST_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "==> installing chromium (Debian's package) for the inspector's browser test"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q chromium >target/apt.log 2>&1; then
    $sudo apt-get update -q >>target/apt.log 2>&1
    $sudo apt-get install -y -q chromium >>target/apt.log 2>&1 || {
      echo "FAILED: apt-get install chromium (target/apt.log):"; tail -n 20 target/apt.log; exit 1; }
  fi
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "==> npm ci (tests/browser: playwright-core)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
export PATH="$(cd "$venv" && pwd)/bin:$PATH"
mkdir -p target

# Every function's deployable bootstrap (x86_64; arm64 too when the target is installed).
functions=(-p ingress -p router -p crm-sync -p sms-fallback -p analytics -p deliver -p media -p automations)
build_bootstraps_now() {
  cargo lambda build --release "${functions[@]}" --lambda-dir target/lambda
  if rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$'; then
    cargo lambda build --release --arm64 "${functions[@]}" --lambda-dir target/lambda-arm64
  fi
}
# One build of the bootstraps at a time, moves included: cargo's own lock covers the compile but
# not cargo-lambda moving each binary to its bootstrap afterwards, and two builds finishing
# together (CI's early `--prepare` and this script's) would move the same files.
build_bootstraps() {
  if command -v flock >/dev/null 2>&1; then
    (
      flock 9
      build_bootstraps_now
    ) 9>target/.bootstraps.lock
  else
    build_bootstraps_now
  fi
}
if [ "${1:-}" = "--prepare" ]; then
  build_bootstraps
  exit 0
fi

# Waits for a background step; on failure prints its log and stops.
finish() {
  local pid=$1 what=$2 log=$3
  if ! wait "$pid"; then
    echo "FAILED: $what (its log, $log):"
    tail -n 80 "$log"
    exit 1
  fi
  echo "==> $what: ok"
}

# The template checks need only Python: they run beside the builds.
(
  cfn-lint template.yaml
  SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" sam validate --lint
) >target/template-checks.log 2>&1 &
checks=$!

# The bootstraps build while the test binaries build: their link-time optimisation runs on one
# core for minutes, and the test build uses the other. (Already built: a quick check.)
build_bootstraps >target/lambda-build.log 2>&1 &
bootstraps=$!
echo "==> cargo lambda build --release (in the background, log: target/lambda-build.log)"

# The Lambda functions' binaries (run by tests/lambda_runtime.rs through a runtime API server),
# the load generator (run by tests/load.rs) and every test binary.
echo "==> cargo build (tests)"
cargo build --workspace --bins --example loadgen --quiet
runner=test
if cargo nextest --version >/dev/null 2>&1; then
  runner=nextest
  cargo nextest run --workspace --all-targets --no-run --cargo-quiet
else
  cargo test --workspace --no-run --quiet
fi

finish "$checks" "cfn-lint template.yaml, sam validate --lint" target/template-checks.log
finish "$bootstraps" "cargo lambda build --release" target/lambda-build.log
export BLUEHOOK_TEST_LAMBDA_DIR="$PWD/target/lambda"

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
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
if [ "$runner" = nextest ]; then
  cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
