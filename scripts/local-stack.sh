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
cargo build --release --quiet \
  -p add_backend -p list_backends -p remove_backend -p health_checker \
  -p config_renderer -p ecs_updater -p slack_notifier -p config_agent -p local_stack
exec "$CARGO_TARGET_DIR/release/jsonrpc-proxy-local" "$@"
