#!/usr/bin/env bash
# Prints the Lambda functions of the service, one per line: the keys under `functions:` in
# serverless.yml, the one list of them (each is also the name of its binary, crates/functions/src/bin/<function>.rs). Scripts read it
# with `mapfile -t functions < <(scripts/functions.sh)`; Rust code with devstack::functions().
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
awk '
  /^[^ #]/ { inside = ($0 ~ /^functions:[[:space:]]*$/); next }
  inside && /^  [a-z0-9_]+:[[:space:]]*$/ { sub(/^  /, ""); sub(/:.*/, ""); print }
' "$root/serverless.yml"
