#!/usr/bin/env bash
# Measures Parley's Signal code and the reference implementations in one run, on
# this machine, and writes bench/results/crypto-<commit>.json.
#   scripts/bench-crypto.sh [BUILD_DIR]      (SECONDS_PER_CASE=1 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
secs=${SECONDS_PER_CASE:-1}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out=bench/results/crypto-$commit.json
mkdir -p bench/results

parley_json=$("$build/parley-bench-crypto" --seconds "$secs")
ref_json=$(cd tests/interop && node bench.js)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
cat >"$out" <<JSON
{"commit":"$commit","date":"$(date -u +%FT%TZ)","machine":{"cpu":"$cpu","cores":$(nproc),"kernel":"$(uname -r)"},
 "parley":$parley_json,
 "reference":$ref_json}
JSON
echo "wrote $out" >&2
cat "$out"
