#!/usr/bin/env bash
# Runs every test that starts a local stack or nginx N times in a row (default 10), to find
# what fails one run in many: the local_stack and config_agent tests, core's tests that run
# nginx (gate, chain, render_nginx_check, integration) and the walkthrough. A failure is counted and
# its log kept, never retried. With --beside, the rest of the suite (`cargo test --workspace`)
# runs alongside every round, as on a loaded CI machine, and counts as one more run. Prints a line per run and a summary;
# exits 1 when anything failed.
#
#   scripts/soak-tests.sh [N] [--beside]
set -uo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$root" || exit 1
rounds=10
beside=false
for arg in "$@"; do
  case "$arg" in
    --beside) beside=true ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *[!0-9]*|'') echo "soak-tests: N must be a whole number, not '$arg'" >&2; exit 2 ;;
    *) rounds=$arg ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jsonrpc-proxy-target}"
export CARGO_TERM_COLOR=never

# The integration tests of a package, as cargo finds them (tests/*.rs, tests/*/main.rs), as
# --test arguments.
tests_of() {
  local f args=()
  for f in "$1"/tests/*.rs "$1"/tests/*/main.rs; do
    [ -e "$f" ] || continue
    [[ $f == */main.rs ]] && f=${f%/main.rs}
    f=${f##*/}
    args+=(--test "${f%.rs}")
  done
  echo "${args[*]}"
}
# name|cargo test arguments. Always --workspace (test names are unique in it): the features
# `cargo test --workspace` resolves, so its build serves these (a -p build compiles the
# dependency graph again, several minutes each).
targets=(
  "local_stack|--workspace $(tests_of tools/local_stack)"
  "config_agent|--workspace $(tests_of crates/config_agent)"
  "core gate|--workspace --test gate"
  "core chain|--workspace --test chain"
  "core render_nginx_check|--workspace --test render_nginx_check"
  "core integration|--workspace --test integration"
)
logs="$CARGO_TARGET_DIR/soak/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$logs"
echo "[soak] building the test binaries"
for target in "${targets[@]}"; do
  # shellcheck disable=SC2086 # a target is several arguments
  cargo test ${target#*|} --no-run --quiet || exit 1
done
$beside && { cargo test --workspace --no-run --quiet || exit 1; }
# The local stacks deploy the arm64 zips, building them when they are older than the code: once
# here, so that no round's time limit pays for it.
echo "[soak] building the deployment zips"
cargo lambda build --release --arm64 --output-format zip -p functions >"$logs/zips.log" 2>&1 || exit 1

runs=0
failed=0
declare -A failures=()
started=$(date +%s)
record() { # name, exit status, log
  runs=$((runs + 1))
  if [ "$2" -eq 0 ]; then
    echo "[soak] ok      $1"
  else
    failed=$((failed + 1))
    failures[$1]=$(( ${failures[$1]:-0} + 1 ))
    echo "[soak] FAILED  $1 (log: $3)"
    grep -E '^test .* FAILED$|panicked at|^---- ' "$3" | head -5 | sed 's/^/[soak]         /'
  fi
}
for round in $(seq 1 "$rounds"); do
  echo "[soak] round $round of $rounds"
  beside_pid=""
  if $beside; then
    cargo test --workspace --quiet >"$logs/round$round-beside.log" 2>&1 &
    beside_pid=$!
  fi
  for target in "${targets[@]}"; do
    name=${target%%|*}
    log="$logs/round$round-${name// /-}.log"
    # shellcheck disable=SC2086
    cargo test ${target#*|} >"$log" 2>&1
    record "$name" $? "$log"
  done
  log="$logs/round$round-walkthrough.log"
  bash scripts/test-walkthrough.sh >"$log" 2>&1
  record "walkthrough" $? "$log"
  if [ -n "$beside_pid" ]; then
    wait "$beside_pid"
    record "beside: cargo test --workspace" $? "$logs/round$round-beside.log"
  fi
done
elapsed=$(( $(date +%s) - started ))
echo "[soak] $rounds rounds, $runs runs, $failed failed, $((elapsed / 60)) min $((elapsed % 60)) s; logs in $logs"
for name in "${!failures[@]}"; do
  echo "[soak]   $name: ${failures[$name]} of $rounds failed"
done
[ "$failed" -eq 0 ]
