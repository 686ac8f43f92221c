#!/usr/bin/env bash
# The README's first command: runs the whole system on this machine.
# Installs what it needs, builds the functions (host builds to run; `sls deploy -s local` builds
# the arm64 zips it deploys), the config agent and the local stack, then runs
# `jsonrpc-proxy-local` (arguments are passed through; --help lists them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
export PATH="$root/.tools/node/node_modules/.bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jsonrpc-proxy-target}"
echo "[local-stack] building (first build takes a few minutes)…" >&2
mapfile -t functions < <(scripts/functions.sh)
packages=()
for function in "${functions[@]}" config_agent local_stack; do packages+=(-p "$function"); done
cargo build --release --quiet "${packages[@]}"
exec "$CARGO_TARGET_DIR/release/jsonrpc-proxy-local" "$@"
