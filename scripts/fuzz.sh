#!/usr/bin/env bash
# Fuzzes every provider's verifier and parser with a proptest harness (no nightly toolchain
# needed): random and JSON-/form-shaped bodies, random signature headers, type hints and query
# strings; fails on any panic or on an accepted event that does not round-trip.
#   scripts/fuzz.sh [cases, default 100000] [time limit in seconds, default 600]
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-100000}"
limit="${2:-600}"
start=$(date +%s)
BLUEHOOK_FUZZ_CASES="$cases" timeout "$limit" \
  cargo test -p bluehook --lib --quiet -- provider::props::fuzz_no_provider_panics --exact
echo "fuzz: $cases cases against every provider in $(( $(date +%s) - start )) s, no panic"
