#!/usr/bin/env bash
# Runs the benchmarks kept in the repository (tools/bench) and rewrites the generated part of
# docs/benchmarks.md: health-check fan-out (1 to 10 000 backends, 10 % hanging), proxy overhead
# (wrk straight to anvil, through our nginx, the original's style and blutgang, interleaved),
# switch time through the local stack, and the Lambda functions' footprint (arm64 zips,
# start-up, memory). Prints one report; takes ~20 minutes.
#
# Usage: scripts/bench.sh [jsonrpc-proxy-bench options]   (e.g. --only proxy; see --help)
# With --only, docs/benchmarks.md keeps the other parts' results (their sections, each with
# its own provenance line, and their goal rows) from earlier runs.
# Installs what it needs: the project's tools (scripts/install-deps.sh), wrk (apt) and, for the
# proxy part, blutgang (crates.io, pinned below; built once into $CARGO_TARGET_DIR/tools).
# Measure on a quiet machine: the load average is printed first and recorded in the report.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

log() { printf '[bench] %s\n' "$*" >&2; }

for arg in "$@"; do
  if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
    cargo run --quiet --release -p bench -- --help || true
    exit 0
  fi
done

scripts/install-deps.sh
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (apt)"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq wrk >/dev/null
fi

# The proxy part's peer: blutgang, pinned, installed once (a cold build takes minutes; a rerun
# finds it). Its own build folder: cargo's temporary one, not the workspace's target.
blutgang_version=0.3.6
wants_proxy=true
previous=""
for arg in "$@"; do
  if [ "$previous" = "--only" ] && [[ ",$arg," != *",proxy,"* ]]; then wants_proxy=false; fi
  previous="$arg"
done
tools="$CARGO_TARGET_DIR/tools"
export BLUTGANG_BIN="$tools/bin/blutgang"
if $wants_proxy && ! { [ -x "$BLUTGANG_BIN" ] &&
  grep -qs "^\"blutgang $blutgang_version (" "$tools/.crates.toml"; }; then
  log "installing blutgang $blutgang_version into $tools (cargo install --locked; once)"
  if ! env -u CARGO_TARGET_DIR cargo install --locked --root "$tools" "blutgang@$blutgang_version" >&2; then
    log "blutgang did not build: the proxy part will say the peer was not measured"
  fi
fi

log "building the bench, the functions and the config agent (release)"
cargo build --release -p bench -p config_agent -p functions

log "building the deployment zips (cargo lambda build --release --arm64 --output-format zip)"
if ! cargo lambda build --release --arm64 --output-format zip -p functions >&2; then
  log "cargo lambda build failed: the report will say the zips are not built"
fi

log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
exec "$CARGO_TARGET_DIR/release/jsonrpc-proxy-bench" \
  --out "$root/docs/benchmarks.md" \
  --json "$CARGO_TARGET_DIR/bench-results.json" \
  --command "scripts/bench.sh${*:+ $*}" \
  "$@"
