#!/usr/bin/env bash
# The README's first command: runs the whole system on this machine.
# Installs what it needs, builds the functions (host builds to run, and the arm64 zips that
# `sls deploy -s local` deploys), the config agent and the local stack, then runs
# `jsonrpc-proxy-local` (arguments are passed through; --help lists them at once, from
# tools/local_stack/src/usage.txt, which the binary prints too). Each step prints its time.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
for arg in "$@"; do
  case "$arg" in
    -h|--help) cat "$root/tools/local_stack/src/usage.txt"; exit 0 ;;
  esac
done
require_plain_checkout
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jsonrpc-proxy-target}"

started=$SECONDS
step_started=$SECONDS
step_name=""
minutes() { printf '%d min %02d s' $(($1 / 60)) $(($1 % 60)); }
step() { # number, description
  [ -z "$step_name" ] || echo "[local-stack] $step_name: done in $(minutes $((SECONDS - step_started)))" >&2
  step_name="step $1/4, $2"
  step_started=$SECONDS
  echo "[local-stack] $step_name…" >&2
}
echo "[local-stack] 4 steps; the first run builds for a long while (README.md, \"Set up\"), later runs take seconds" >&2

step 1 "tools (scripts/install-deps.sh)"
bash scripts/install-deps.sh

step 2 "host builds of the functions, the config agent and the local stack (cargo build --release)"
cargo build --release -p functions -p config_agent -p local_stack

# sls deploy -s local builds the zips again, in seconds once they are current.
step 3 "the functions' arm64 zips (cargo lambda build --release --arm64)"
cargo lambda build --release --arm64 --output-format zip -p functions

step 4 "start: local AWS endpoint, sls deploy -s local, nodes, nginx, functions"
echo "[local-stack] built in $(minutes $((SECONDS - started)))" >&2
exec "$CARGO_TARGET_DIR/release/jsonrpc-proxy-local" "$@"
