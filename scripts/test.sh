#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every check and test.
# Servers (moto_server, anvil, nginx, the CloudWatch recorder) are started and stopped by the
# tests themselves.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
require_plain_checkout
cd "$root"
bash scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jsonrpc-proxy-target}"
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo machete (unused dependencies)"
cargo machete --with-metadata
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The deployment checks first: their `sls package -s dev` builds the functions' arm64 zips,
# which the local stacks of the tests deploy (sls deploy -s local).
echo "== scripts/test-deploy.sh"
bash scripts/test-deploy.sh
echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee "$CARGO_TARGET_DIR/test-output.txt"
for extra in scripts/test-*.sh; do
  [ "$extra" = scripts/test-deploy.sh ] && continue
  echo "== $extra"
  bash "$extra"
done
echo "== all checks passed"
