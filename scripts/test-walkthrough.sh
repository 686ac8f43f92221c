#!/usr/bin/env bash
# The article's walkthrough, run for real on the local AWS endpoint, with the README's commands
# (run by scripts/test.sh after cargo test):
#  1. the local stack (`jsonrpc-proxy-local`, what scripts/local-stack.sh runs) starts the local
#     AWS endpoint on port 4566 and deploys the `local` stage with `sls deploy -s local`;
#  2. `npx sls invoke -f add_backend -d $DATA -s local` with the article's two payloads, byte for
#     byte, answers 201 with the article's fields; `list_backends` piped through the article's
#     python one-liner lists them; `remove_backend` removes them;
#  3. two anvil nodes registered with `sls invoke`, one health round (`sls invoke -f
#     health_checker -s local`): both healthy, a config rendered into the deployed bucket, the
#     deployed ECS service moved onto it, nginx answering JSON-RPC through it at the demo
#     client's key URL the stack printed (401 without a key), as one chain (a head that never
#     goes back, blocks it names found);
#  4. the healthy-node metric below the alarm's threshold: the alarm's SNS message reaches
#     slack_notifier, which posts to the Slack stand-in;
#  5. after the renders, a second `sls deploy -s local` (a tolerance and nginx_desired_count
#     changed) updates the stack and the service, and the proxy still answers;
#  6. `sls remove -s local` removes it.
# Every failure names the command and shows its output.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jsonrpc-proxy-target}"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export SLS_TELEMETRY_DISABLED=1 SLS_NOTIFICATIONS_MODE=off
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL

work=$(mktemp -d)
stack_pid=""
cleanup() {
  if [ -n "$stack_pid" ] && kill -0 "$stack_pid" 2>/dev/null; then
    kill -INT "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
  fi
  if [ "${kept:-}" != "" ]; then
    rm -rf "$kept"
    cp -a "$work" "$kept" 2>/dev/null
    printf 'test-walkthrough: the work directory (stack log, sls output, function logs) is kept in %s\n' "$kept" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '== test-walkthrough: %s\n' "$*"; }
fail() {
  printf 'test-walkthrough: FAILED: %s\n' "$*" >&2
  kept="$CARGO_TARGET_DIR/walkthrough-failed"
  if [ -f "$work/stack.log" ]; then
    printf -- '--- local stack output (last 40 lines)\n' >&2
    tail -n 40 "$work/stack.log" >&2
  fi
  exit 1
}
# run NAME COMMAND...: runs a command, keeps its output in $work/NAME.out, fails naming it.
run() {
  local name=$1
  shift
  if ! "$@" >"$work/$name.out" 2>&1; then
    cat "$work/$name.out" >&2
    fail "\`$*\` exited with an error (output above)"
  fi
}
# expect NAME PYTHON-CONDITION: the JSON answer of `sls invoke` in $work/NAME.out, as `answer`,
# must satisfy the condition.
expect() {
  local name=$1 condition=$2
  python3 - "$work/$name.out" "$condition" <<'PY' || fail "$name answered $(cat "$work/$name.out")"
import json, sys
text = open(sys.argv[1]).read()
answer = json.loads(text[text.index("{"):])
body = json.loads(answer["body"]) if isinstance(answer.get("body"), str) else None
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
}
# deploy and remove take the checkout's sls lock, as the local stacks' own calls do (tests may run
# beside; tools/local_stack/src/deploy.rs, Serverless::exclusive).
sls_lock="${TMPDIR:-/tmp}/jsonrpc-proxy-sls$(realpath "$root" | tr -d '\n' | tr -c 'A-Za-z0-9' '_').lock"
sls() {
  case "$1" in
    deploy | remove) flock "$sls_lock" node_modules/.bin/sls "$@" ;;
    *) node_modules/.bin/sls "$@" ;;
  esac
}
# aws PYTHON: runs boto3 code against the local AWS endpoint (clients cf, lam, ecs, s3).
aws() {
  python3 - "$1" <<'PY'
import sys, boto3
kw = dict(endpoint_url="http://127.0.0.1:4566", region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
cf, lam, ecs, s3 = (boto3.client(n, **kw) for n in ("cloudformation", "lambda", "ecs", "s3"))
exec(sys.argv[1])
PY
}

# The debug builds that cargo test made (scripts/local-stack.sh runs release builds of the same
# code): a cold release build of the host binaries would add a quarter of an hour to CI.
step "build the function binaries, the config agent and the local stack"
mapfile -t functions < <(scripts/functions.sh)
bash scripts/build-test-binaries.sh

# As scripts/local-stack.sh does before it starts: the stack's `sls deploy` then finds them current.
step "the functions' arm64 zips (cargo lambda build --release --arm64)"
run zips cargo lambda build --release --arm64 --output-format zip -p functions

step "start the local stack (sls deploy -s local on the local AWS endpoint)"
"$CARGO_TARGET_DIR/debug/jsonrpc-proxy-local" --no-view --no-register --interval 3600 \
  --anvil-nodes 1 --work-dir "$work/run" >"$work/stack.log" 2>&1 &
stack_pid=$!
for _ in $(seq 1 600); do
  grep -q '^JSON-RPC proxy:' "$work/stack.log" && break
  kill -0 "$stack_pid" 2>/dev/null || fail "the local stack exited while starting"
  sleep 0.5
done
grep -q '^JSON-RPC proxy:' "$work/stack.log" || fail "the local stack did not start in 300 s"
leader=$(sed -n 's/^anvil leader: //p' "$work/stack.log")
node=$(sed -n 's/^anvil node: //p' "$work/stack.log")
[ -n "$leader" ] && [ -n "$node" ] || fail "the local stack printed no anvil nodes"
FUNCTIONS="${functions[*]}" aws '
import os
stack = cf.describe_stacks(StackName="jsonrpc-proxy-local")["Stacks"][0]
assert stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"), stack["StackStatus"]
names = sorted(f["FunctionName"] for f in lam.list_functions()["Functions"])
assert names == sorted("jsonrpc-proxy-local-" + f for f in os.environ["FUNCTIONS"].split()), names
' || fail "the deployed stack is not complete with every function of serverless.yml"

step "the article's add_backend payloads, byte for byte"
# The article's lines as written: the quotes are JSON's, and $DATA goes unquoted.
# shellcheck disable=SC2089
DATA='{"body":"{\"url\":\"https://kovan.infura.io/kb56QStVQWIFv1n5fRfn\",\"is_leader\":true}"}'
# shellcheck disable=SC2086,SC2090
run add-leader sls invoke -f add_backend -d $DATA -s local
expect add-leader 'answer["statusCode"] == 201 and body["url"] == "https://kovan.infura.io/kb56QStVQWIFv1n5fRfn" and body["is_leader"] is True and body["is_healthy"] is False and "when_added" in body'
# shellcheck disable=SC2089
DATA='{"body":"{\"url\":\"http://kovan-parity-1.rumblefishdev.com:8545\",\"is_leader\":false}"}'
# shellcheck disable=SC2086,SC2090
run add-node sls invoke -f add_backend -d $DATA -s local
expect add-node 'answer["statusCode"] == 201 and body["url"] == "http://kovan-parity-1.rumblefishdev.com:8545" and body["is_leader"] is False and body["is_healthy"] is False'

step "the article's list_backends pipeline"
if ! sls invoke -f list_backends -s local \
  | python3 -c "import sys,json; print(json.loads(sys.stdin.read())['body'])" \
  | python3 -m "json.tool" >"$work/list.out" 2>&1; then
  cat "$work/list.out" >&2
  fail "sls invoke -f list_backends -s local | python3 -c … | python3 -m json.tool"
fi
python3 - "$work/list.out" <<'PY' || fail "list_backends listed $(cat "$work/list.out")"
import json, sys
listed = {b["url"]: b for b in json.load(open(sys.argv[1]))}
assert set(listed) == {"https://kovan.infura.io/kb56QStVQWIFv1n5fRfn",
                       "http://kovan-parity-1.rumblefishdev.com:8545"}, listed
assert listed["https://kovan.infura.io/kb56QStVQWIFv1n5fRfn"]["is_leader"] is True
PY

step "remove_backend takes both out"
for url in https://kovan.infura.io/kb56QStVQWIFv1n5fRfn http://kovan-parity-1.rumblefishdev.com:8545; do
  run remove sls invoke -f remove_backend -s local -d "{\"body\":\"{\\\"url\\\":\\\"$url\\\"}\"}"
  expect remove "answer[\"statusCode\"] == 200 and body[\"url\"] == \"$url\""
done
run list-empty sls invoke -f list_backends -s local
expect list-empty 'answer["statusCode"] == 200 and body == []'

step "two anvil nodes, one health round"
run add-anvil-leader sls invoke -f add_backend -s local -d "{\"body\":\"{\\\"url\\\":\\\"$leader\\\",\\\"is_leader\\\":true}\"}"
expect add-anvil-leader 'answer["statusCode"] == 201'
run add-anvil-node sls invoke -f add_backend -s local -d "{\"body\":\"{\\\"url\\\":\\\"$node\\\",\\\"is_leader\\\":false}\"}"
expect add-anvil-node 'answer["statusCode"] == 201'
run round sls invoke -f health_checker -s local
run list-healthy sls invoke -f list_backends -s local
expect list-healthy 'len(body) == 2 and all(b["is_healthy"] and b["block_number"] > 0 for b in body)'

step "a config rendered into the deployed bucket, the deployed ECS service moved onto it"
for _ in $(seq 1 60); do
  aws '
bucket = next(r["PhysicalResourceId"] for r in cf.describe_stack_resources(
    StackName="jsonrpc-proxy-local")["StackResources"]
    if r["ResourceType"] == "AWS::S3::Bucket" and r["LogicalResourceId"] == "ConfigBucket")
configs = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
           if o["Key"].endswith("_nginx.conf")]
assert configs, "no config in " + bucket
service = ecs.describe_services(cluster="local", services=["jsonrpc-proxy-local-nginx"])["services"][0]
definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
env = {e["name"]: e["value"] for e in definition["containerDefinitions"][0].get("environment", [])}
path = env.get("S3_CONFIG_PATH", "")
assert path.startswith("s3://" + bucket + "/") and path.split("/")[-1] in configs, path
' 2>/dev/null && break
  sleep 0.5
done
aws '
service = ecs.describe_services(cluster="local", services=["jsonrpc-proxy-local-nginx"])["services"][0]
definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
env = {e["name"]: e["value"] for e in definition["containerDefinitions"][0].get("environment", [])}
assert env.get("S3_CONFIG_PATH", "").endswith("_nginx.conf"), env
' || fail "the deployed ECS service does not run a rendered config"
# The demo client the stack registered at start, through its printed key URL; without a key, 401.
demo=$(sed -n 's/^demo client "demo": \(http:[^ ]*\) .*/\1/p' "$work/stack.log")
case "$demo" in http://127.0.0.1:18545/v3/?*) ;; *) fail "the stack printed no demo client URL" ;; esac
answered=""
for _ in $(seq 1 40); do
  if answered=$(curl -s --max-time 2 -X POST -H 'Content-Type: application/json' \
    --data '{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}' \
    "$demo") && printf '%s' "$answered" | grep -q '"result":"0x'; then
    break
  fi
  answered=""
  sleep 0.5
done
[ -n "$answered" ] || fail "nginx did not answer eth_blockNumber at the demo client's URL"
status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST -H 'Content-Type: application/json' \
  --data '{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}' http://127.0.0.1:18545)
[ "$status" = 401 ] || fail "a call without a key got HTTP $status, not 401"

step "the endpoint answers as one chain: its head never goes back, the blocks it names are found"
python3 - "$demo" "$node" <<'PY' || fail "the demo client's URL did not answer as one chain"
import json, sys, time, urllib.request
url, node = sys.argv[1], sys.argv[2]
def call(target, method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)["result"]
last = 0
for _ in range(20):
    head = int(call(url, "eth_blockNumber", []), 16)
    assert head >= last, f"the head went back from {last} to {head}"
    last = head
    block = call(url, "eth_getBlockByNumber", [hex(head), False])
    assert block and int(block["number"], 16) == head, f"block {head}, just named, answered {block}"
    time.sleep(0.1)
its = int(call(node, "eth_blockNumber", []), 16)
assert its - 3 <= last <= its, f"the endpoint's head {last}, the node's own {its}"
PY

step "the healthy-node metric below the alarm threshold reaches Slack"
# Rounds every few seconds keep a datapoint in every 10 s period (missing data breaches).
# With both nodes healthy (threshold 2) the alarm goes to OK; with one removed, to ALARM.
slack_line() { grep -n "Slack: .*\*$1\*" "$work/stack.log" | tail -n 1 | cut -d: -f1; }
for _ in $(seq 1 20); do
  [ -n "$(slack_line OK)" ] && break
  run round sls invoke -f health_checker -s local
done
ok_line=$(slack_line OK)
[ -n "$ok_line" ] || fail "no OK message reached the Slack stand-in while both nodes were healthy"
running_config() {
  aws '
service = ecs.describe_services(cluster="local", services=["jsonrpc-proxy-local-nginx"])["services"][0]
definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
print({e["name"]: e["value"] for e in definition["containerDefinitions"][0]["environment"]}["S3_CONFIG_PATH"])
'
}
before=$(running_config)
run remove-node sls invoke -f remove_backend -s local -d "{\"body\":\"{\\\"url\\\":\\\"$node\\\"}\"}"
expect remove-node 'answer["statusCode"] == 200'
# remove_backend re-renders at once: the service moves without a health round.
for _ in $(seq 1 40); do
  [ "$(running_config)" != "$before" ] && break
  sleep 0.25
done
[ "$(running_config)" != "$before" ] \
  || fail "remove_backend did not re-render: the ECS service still runs $before"
alarm_after_ok() { [ "$(slack_line ALARM)" -gt "$ok_line" ] 2>/dev/null; }
for _ in $(seq 1 20); do
  alarm_after_ok && break
  run round sls invoke -f health_checker -s local
done
alarm_after_ok || fail "no ALARM message reached the Slack stand-in after a node was removed"

step "a second sls deploy -s local, after renders, updates the stack and the service"
# After several renders the template's own task definition revision is still ACTIVE: AWS refuses a
# stack update that points the service at an INACTIVE one (moto does not, so it is checked here).
template_revision() {
  aws '
definition = next(r["PhysicalResourceId"] for r in cf.describe_stack_resources(
    StackName="jsonrpc-proxy-local")["StackResources"]
    if r.get("ResourceType") == "AWS::ECS::TaskDefinition")
status = ecs.describe_task_definition(taskDefinition=definition)["taskDefinition"]["status"]
assert status == "ACTIVE", definition + " is " + status
revisions = ecs.list_task_definitions(familyPrefix=definition.split("/")[-1].split(":")[0])["taskDefinitionArns"]
assert len(revisions) >= 2, revisions
'
}
template_revision || fail "the template's task definition revision is not ACTIVE after the renders"
# Changed settings, as a user would deploy them: one the functions read, one the service has.
sed -i -e 's/^diff_tolerance: .*/diff_tolerance: 7/' -e 's/^nginx_desired_count: .*/nginx_desired_count: 2/' \
  config.local.yml
run redeploy sls deploy -s local
aws '
stack = cf.describe_stacks(StackName="jsonrpc-proxy-local")["Stacks"][0]
assert stack["StackStatus"] == "UPDATE_COMPLETE", stack["StackStatus"]
env = lam.get_function_configuration(FunctionName="jsonrpc-proxy-local-health_checker")["Environment"]["Variables"]
assert env["DIFF_TOLERANCE"] == "7", env
service = ecs.describe_services(cluster="local", services=["jsonrpc-proxy-local-nginx"])["services"][0]
assert service["desiredCount"] == 2, service["desiredCount"]
' || fail "the second deploy did not update the stack and the service"
template_revision || fail "the template's task definition revision is not ACTIVE after the second deploy"
# Whatever revision the stack update left the service on, the proxy still serves the newest
# configuration: a health round heals the service (docs/architecture.md).
run round sls invoke -f health_checker -s local
answers_demo() {
  curl -sf --max-time 2 -X POST -H 'Content-Type: application/json' \
    --data '{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}' "$demo" | grep -q '"result":"0x'
}
for _ in $(seq 1 40); do answers_demo && break; sleep 0.5; done
answers_demo || fail "nginx did not answer eth_blockNumber at the demo client's URL after the second deploy"

step "sls remove -s local removes it"
run remove-stack sls remove -s local
aws '
try:
    cf.describe_stacks(StackName="jsonrpc-proxy-local")
except cf.exceptions.ClientError as error:
    assert "does not exist" in str(error), error
else:
    raise AssertionError("the stack still exists")
assert not lam.list_functions()["Functions"]
' || fail "the stack is still there after sls remove"

step "the local stack stops on Ctrl-C"
kill -INT "$stack_pid"
wait "$stack_pid" || fail "the local stack exited with an error"
stack_pid=""
grep -q 'stopped: every process the local stack started has ended' "$work/stack.log" \
  || fail "the local stack did not say it stopped"
step "the walkthrough passed"
