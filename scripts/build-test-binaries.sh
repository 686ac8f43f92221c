#!/usr/bin/env bash
# Builds the binaries the tests start (the functions, the config agent, the local stack) from
# the units `cargo test --workspace` builds, so that after it this only links them:
# - the same features: every member's, dev-dependencies included (a build of a few packages
#   resolves fewer, such as tokio's without `test-util`, and compiles the whole graph again);
# - none of the CARGO_* variables cargo gives a running test (ring's build script reruns when
#   CARGO_MANIFEST_DIR changes, and everything that depends on ring with it).
# Run by the local-stack tests (tools/local_stack/tests/common) and the walkthrough.
# Usage: build-test-binaries.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t functions < <(scripts/functions.sh)
bins=()
for name in "${functions[@]}" config_agent jsonrpc-proxy-local; do bins+=(--bin "$name"); done
unset CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_CRATE_NAME CARGO_PRIMARY_PACKAGE OUT_DIR \
  "${!CARGO_PKG_@}" "${!CARGO_BIN_@}"
exec "${CARGO:-cargo}" build --quiet --workspace --tests "${bins[@]}" "$@"
