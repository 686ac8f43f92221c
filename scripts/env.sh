# shellcheck shell=bash
# Sourced by the scripts in scripts/: sets `root` (this checkout) and puts the tools that
# scripts/install-deps.sh installs first on PATH: .tools/venv/bin (the Python tools) and
# .tools/node/node_modules/.bin (anvil). devstack (tools/devstack/src/process.rs, TOOL_DIRS)
# looks in the same two directories, so plain `cargo test` finds them too.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$root/.tools/venv/bin:$root/.tools/node/node_modules/.bin:$PATH"

# require_plain_checkout [DIR]: exits with a message when DIR (default: this checkout) holds a
# character the rendered nginx configuration does not accept in a path (the gate's Lua
# directory and access log live under it; crates/core/src/render/gate.rs, `GatePolicyError::Path`).
require_plain_checkout() {
  local dir=${1:-$root}
  if [[ "$dir" == *[!A-Za-z0-9/._-]* ]]; then
    printf '%s: the checkout path %q holds characters other than letters, digits and / . _ -;\n' \
      "${0##*/}" "$dir" >&2
    printf '  nginx paths rendered under it would be refused. Clone or move it to a plain path, e.g. %s\n' \
      "$HOME/jsonrpc-proxy" >&2
    exit 2
  fi
}
