#!/usr/bin/env bash
# parley-bench's standard suite against parleyd (docs/bench.md): about four minutes on a
# 2-core VM. Runs each workload once, printing its table as it goes, then a summary, and
# writes bench/results/<UTC date>-<commit>.json = {commit, date, machine, runs: [...]},
# one parley-bench JSON object per run. Exits non-zero if any run FAILED (after writing
# the file and the summary).
#   scripts/bench.sh [BUILD_DIR [PARLEY-BENCH OPTIONS...]]
# The options go before each workload, e.g. another server to compare with:
#   scripts/bench.sh build --build OLD_CHECKOUT/build --commit OLD_COMMIT
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
extra=("$@")
bench=$build/parley-bench
if [ ! -x "$bench" ]; then
  echo "bench.sh: no $bench (build first: make build)" >&2
  exit 2
fi
info=$("$bench" info) || exit 2
commit=$(printf '%s\n' "$info" | sed -n 's/.*"commit":"\([^"]*\)".*/\1/p')
for ((i = 0; i + 1 < ${#extra[@]}; i++)); do # a --commit among the options wins
  [ "${extra[$i]}" = "--commit" ] && commit=${extra[$((i + 1))]} && extra=("${extra[@]:0:i}" "${extra[@]:i+2}") && break
done
date=$(printf '%s\n' "$info" | sed -n 's/.*"date":"\([^"]*\)".*/\1/p')
machine=$(printf '%s\n' "$info" | sed -n 's/.*"machine":\({[^}]*}\).*/\1/p')
mkdir -p bench/results
out=bench/results/$(printf '%s' "$date" | tr -d ':-')-$commit.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

runs=()
summaries=()
failed=0
run() {
  echo "== parley-bench $*"
  "$bench" "${extra[@]}" --commit "$commit" "$@" | tee "$tmp/out"
  local rc=${PIPESTATUS[0]} last summary
  last=$(tail -n 1 "$tmp/out")
  summary=$(sed -n 's/^summary: //p' "$tmp/out")
  if [ "${last:0:1}" = "{" ]; then
    runs+=("$last")
  else
    runs+=("{\"workload\":\"$1\",\"arguments\":\"$*\",\"correct\":false,\"error\":\"no result (exit $rc)\"}")
  fi
  if [ "$rc" -ne 0 ]; then
    failed=1
    summary=${summary:-"$1: FAILED (exit $rc, no summary)"}
  fi
  summaries+=("$summary")
  echo
}

run idle --connections 15000 --hold 10
run pairs --pairs 500 --window 32 --seconds 10 --warmup 2
run pairs --pairs 100 --window 32 --rate 50000 --seconds 10 --warmup 2
run offline --messages 500000 --recipients 1000 --senders 100
run storm --devices 10000 --pending 10 --senders 100
# the storage setup of docs/bench.md ("The inbox log"): parleyd alone on CPU 0 with one I/O
# thread, the load generator on CPU 1, 1,000 pairs that receive and ack like phones
one_core=(--server-threads 1 --server-cpus 0 --cpus 1)
run pairs "${one_core[@]}" --pairs 1000 --window 32 --seconds 10 --warmup 2
run pairs "${one_core[@]}" --pairs 1000 --window 32 --rate 5000 --seconds 10 --warmup 2
run offline "${one_core[@]}" --messages 500000 --recipients 1000 --senders 100
# and both cores, nothing pinned, parleyd with two I/O threads
run pairs --server-threads 2 --pairs 1000 --window 32 --seconds 10 --warmup 2

{
  printf '{"commit":"%s","date":"%s","machine":%s,"runs":[\n' "$commit" "$date" "$machine"
  for i in "${!runs[@]}"; do
    [ "$i" -gt 0 ] && printf ',\n'
    printf '%s' "${runs[$i]}"
  done
  printf '\n]}\n'
} >"$out"

echo "parley-bench suite, commit $commit, $date:"
for s in "${summaries[@]}"; do
  echo "  $s"
done
echo "wrote $out"
[ "$failed" -eq 0 ] || echo "bench.sh: a run FAILED" >&2
exit "$failed"
