#!/usr/bin/env python3
"""Asserts what the CloudFormation template that `sls package` generates must contain.

Usage: check_template.py TEMPLATE.json CONFIG.yml [STAGE]

TEMPLATE.json is .serverless/cloudformation-template-update-stack.json (or the --package
directory's copy); CONFIG.yml is the configuration it was packaged with. Checks the functions
(runtime, architecture, handler, role, environment), their events, the least-privilege IAM
statements, and the infra/ resources (table, bucket, ECS, load balancer, monitoring). Exits 1
with one line per failed check.
"""

import json
import re
import sys

import yaml

SERVICE = "jsonrpc-proxy"
# The keys of config.<stage>.yml's `gate:` section; each reaches config_renderer as GATE_<KEY>.
GATE_KEYS = ("open_without_key", "default_calls_per_second", "default_concurrent_requests",
             "deny_methods", "max_body_bytes", "max_batch_calls", "max_get_logs_blocks",
             "trusted_proxy_cidrs", "lua_dir", "access_log", "shared_dict_mib", "head_poll_ms",
             "cache_mib", "finality_depth")
# The keys of its `proxy:` section; each reaches config_renderer as PROXY_<KEY>.
PROXY_KEYS = ("connect_timeout_secs", "read_timeout_secs", "retry_tries", "retry_timeout_secs",
              "max_fails", "fail_timeout_secs", "keepalive", "websocket_timeout_secs")

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def logical(name):
    """The framework's logical-id prefix of a function key (add_backend -> AddUnderscorebackend)."""
    normalized = name[0].upper() + name[1:]
    return normalized.replace("-", "Dash").replace("_", "Underscore")


def optional_value(value):
    """A setting whose default is empty (the `gate:` and `proxy:` keys, among others) as the
    template's environment holds it: YAML booleans as true/false, empty or missing as ''."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None or value == "" else str(value)


def as_list(value):
    return value if isinstance(value, list) else [value]


def flatten(value):
    """Every string inside an intrinsic-function structure, in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in flatten(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in flatten(item)]
    return [str(value)]


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    template = json.load(open(sys.argv[1], encoding="utf-8"))
    config = yaml.safe_load(open(sys.argv[2], encoding="utf-8"))
    stage = sys.argv[3] if len(sys.argv) > 3 else "dev"
    stack = f"{SERVICE}-{stage}"
    resources = template["Resources"]

    def resource(name, kind):
        found = resources.get(name)
        if check(found is not None, f"resource {name} is missing"):
            check(found["Type"] == kind, f"{name} is {found['Type']}, expected {kind}")
            return found.get("Properties", {})
        return {}

    namespace = config.get("cloudwatch_namespace") or stack
    renderer = f"{stack}-config_renderer"
    bucket_name = {"Fn::Join": ["-", [{"Ref": "AWS::StackName"}, {"Ref": "AWS::AccountId"},
                                      {"Ref": "AWS::Region"}, "config"]]}
    common = {"RUST_LOG": "info", "LOG_FORMAT": "json"}
    # nginx's port and socket directory in its container: the renderer, the task definition
    # and the service must agree.
    port = config.get("nginx_listen_port", 80)
    socket_dir = config.get("nginx_socket_dir", "/var/run/jsonrpc-proxy")
    clients_table = f"{stack}-clients"
    gate = config.get("gate") or {}
    proxy = config.get("proxy") or {}
    functions = {
        "add_backend": ("AddBackendRole", {"DYNAMODB_TABLE": stack}),
        "list_backends": ("ListBackendsRole", {"DYNAMODB_TABLE": stack}),
        "remove_backend": ("RemoveBackendRole", {
            "DYNAMODB_TABLE": stack, "CONFIG_RENDERER_FUNCTION": renderer}),
        "add_client": ("AddClientRole", {
            "DYNAMODB_CLIENTS_TABLE": clients_table, "CONFIG_RENDERER_FUNCTION": renderer}),
        "list_clients": ("ListClientsRole", {"DYNAMODB_CLIENTS_TABLE": clients_table}),
        "remove_client": ("RemoveClientRole", {
            "DYNAMODB_CLIENTS_TABLE": clients_table, "CONFIG_RENDERER_FUNCTION": renderer}),
        "health_checker": ("HealthCheckerRole", {
            "DYNAMODB_TABLE": stack,
            "STACK_NAME": stack,
            "DIFF_TOLERANCE": str(config.get("diff_tolerance", 10)),
            "CLOUDWATCH_NAMESPACE": namespace,
            "NGINX_CONFIG_BUCKET_NAME": bucket_name,
            "CONFIG_RENDERER_FUNCTION": renderer,
            "DYNAMODB_CLIENTS_TABLE": clients_table,
            "PROBE_TIMEOUT_MS": str(config.get("probe_timeout_ms", 2000)),
            "UNHEALTHY_AFTER": str(config.get("unhealthy_after", 2)),
            "HEALTHY_AFTER": str(config.get("healthy_after", 2)),
            "EXPECTED_CHAIN_ID": str(config.get("expected_chain_id", "") or ""),
            "ROUNDS_PER_INVOCATION": str(config.get("rounds_per_invocation", 1)),
            "ROUND_INTERVAL_SECS": str(config.get("round_interval_secs", 15)),
            "ROW_REFRESH_SECS": str(config.get("row_refresh_secs", 300)),
            **{key.upper(): optional_value(config.get(key))
               for key in ("probe_concurrency", "probe_max_body_bytes", "write_concurrency")},
        }),
        "config_renderer": ("ConfigRendererRole", {
            "DYNAMODB_TABLE": stack,
            "DYNAMODB_CLIENTS_TABLE": clients_table,
            "NGINX_CONFIG_BUCKET_NAME": bucket_name,
            "NGINX_LISTEN_PORT": str(port),
            "NGINX_LISTEN_ADDRESS": optional_value(config.get("nginx_listen_address")),
            "NGINX_SOCKET_DIR": socket_dir,
            "NGINX_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
            "DIFF_TOLERANCE": str(config.get("diff_tolerance", 10)),
            **{f"GATE_{key.upper()}": optional_value(gate.get(key)) for key in GATE_KEYS},
            **{f"PROXY_{key.upper()}": optional_value(proxy.get(key)) for key in PROXY_KEYS},
        }),
        "ecs_updater": ("EcsUpdaterRole", {
            "TASK_DEFINITION_FAMILY": f"{stack}-nginx",
            "CLUSTER_ARN": config["ecs_cluster_arn"],
            "ECS_SERVICE": f"{stack}-nginx",
            "NGINX_CONFIG_BUCKET_NAME": bucket_name,
        }),
        "slack_notifier": ("SlackNotifierRole", {
            "SLACK_WEBHOOK_URL": config["slack_webhook_url"],
            "SLACK_CHANNEL": config.get("slack_channel", "") or "",
        }),
    }

    # --- Functions -----------------------------------------------------------------------
    lambda_functions = [n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Function"]
    check(len(lambda_functions) == len(functions),
          f"expected {len(functions)} functions, found {sorted(lambda_functions)}")
    for name, (role, env) in functions.items():
        props = resource(f"{logical(name)}LambdaFunction", "AWS::Lambda::Function")
        if not props:
            continue
        check(props.get("FunctionName") == f"{stack}-{name}", f"{name}: FunctionName")
        check(props.get("Runtime") == "provided.al2023", f"{name}: runtime")
        check(props.get("Architectures") == ["arm64"], f"{name}: architecture")
        check(props.get("Handler") == "bootstrap", f"{name}: handler")
        check(props.get("Role") == {"Fn::GetAtt": [role, "Arn"]}, f"{name}: role is not {role}")
        variables = props.get("Environment", {}).get("Variables", {})
        expected = {**common, **env}
        check(variables == expected,
              f"{name}: environment {json.dumps(variables)} != {json.dumps(expected)}")
        log_group = resource(f"{logical(name)}LogGroup", "AWS::Logs::LogGroup")
        check(log_group.get("RetentionInDays") == config.get("log_retention_days", 14),
              f"{name}: log retention")

    checker = resources.get("HealthUnderscorecheckerLambdaFunction", {}).get("Properties", {})
    check(checker.get("ReservedConcurrentExecutions")
          == config.get("health_checker_reserved_concurrency", 1),
          "health_checker: reserved concurrency")
    check(checker.get("VpcConfig") == {"SecurityGroupIds": config["security_group_ids"],
                                       "SubnetIds": config["subnet_ids"]},
          "health_checker: VPC configuration")
    check(checker.get("Timeout") == config.get("health_checker_timeout_seconds", 50),
          "health_checker: timeout")

    # --- Events --------------------------------------------------------------------------
    rules = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    scheduled = sorted(t["Arn"]["Fn::GetAtt"][0] for r in rules for t in r.get("Targets", []))
    check(scheduled == ["EcsUnderscoreupdaterLambdaFunction", "HealthUnderscorecheckerLambdaFunction"],
          f"one schedule each for the health checker and ecs_updater, found {scheduled}")
    for rule in rules:
        check(rule.get("ScheduleExpression") == config.get("health_check_rate", "rate(1 minute)"),
              "schedule rate")
        check(len(rule.get("Targets", [])) == 1, "a schedule targets one function")

    bucket = resource("ConfigBucket", "AWS::S3::Bucket")
    check(bucket.get("BucketName") == bucket_name, "config bucket name")
    check(all(bucket.get("PublicAccessBlockConfiguration", {}).get(k) for k in
              ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"]),
          "config bucket blocks public access")
    notifications = bucket.get("NotificationConfiguration", {}).get("LambdaConfigurations", [])
    check(notifications == [{
        "Event": "s3:ObjectCreated:*",
        "Filter": {"S3Key": {"Rules": [{"Name": "suffix", "Value": ".conf"}]}},
        "Function": {"Fn::GetAtt": ["EcsUnderscoreupdaterLambdaFunction", "Arn"]},
    }], f"config bucket notification: {notifications}")
    check("EcsUpdaterS3InvokePermission" in as_list(resources["ConfigBucket"].get("DependsOn", [])),
          "the bucket waits for the invoke permission")
    permission = resource("EcsUpdaterS3InvokePermission", "AWS::Lambda::Permission")
    check(permission.get("Principal") == "s3.amazonaws.com", "S3 may invoke ecs_updater")

    subscriptions = [r["Properties"] for r in resources.values()
                     if r["Type"] == "AWS::SNS::Subscription"]
    check(subscriptions == [{
        "TopicArn": {"Ref": "AlarmTopic"}, "Protocol": "lambda",
        "Endpoint": {"Fn::GetAtt": ["SlackUnderscorenotifierLambdaFunction", "Arn"]},
    }], f"alarm topic subscription: {subscriptions}")

    # --- IAM -----------------------------------------------------------------------------
    star_allowed = {
        "ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition",
        "ecs:ListTaskDefinitions", "ecs:DeregisterTaskDefinition",
        "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses", "cloudwatch:PutMetricData",
    }
    expected_actions = {
        "AddBackendRole": {"logs:CreateLogStream", "logs:PutLogEvents",
                           "dynamodb:Scan", "dynamodb:UpdateItem"},
        "ListBackendsRole": {"logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:Scan"},
        "RemoveBackendRole": {"logs:CreateLogStream", "logs:PutLogEvents",
                              "dynamodb:DeleteItem", "lambda:InvokeFunction"},
        "AddClientRole": {"logs:CreateLogStream", "logs:PutLogEvents",
                          "dynamodb:PutItem", "lambda:InvokeFunction"},
        "ListClientsRole": {"logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:Scan"},
        "RemoveClientRole": {"logs:CreateLogStream", "logs:PutLogEvents",
                             "dynamodb:DeleteItem", "lambda:InvokeFunction"},
        "HealthCheckerRole": {"logs:CreateLogStream", "logs:PutLogEvents",
                              "dynamodb:Scan", "dynamodb:UpdateItem", "s3:GetObject",
                              "s3:ListBucket", "lambda:InvokeFunction",
                              "cloudwatch:PutMetricData", "ec2:CreateNetworkInterface",
                              "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                              "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
                              "ec2:UnassignPrivateIpAddresses"},
        "ConfigRendererRole": {"logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:Scan",
                               "s3:GetObject", "s3:PutObject", "s3:ListBucket"},
        "EcsUpdaterRole": {"logs:CreateLogStream", "logs:PutLogEvents", "s3:GetObject",
                           "s3:ListBucket", "ecs:DescribeServices", "ecs:UpdateService",
                           "ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition",
                           "ecs:ListTaskDefinitions", "ecs:DeregisterTaskDefinition",
                           "iam:PassRole"},
        "SlackNotifierRole": {"logs:CreateLogStream", "logs:PutLogEvents"},
        "NginxTaskRole": {"s3:GetObject", "s3:ListBucket", "cloudwatch:PutMetricData"},
    }
    # The tables each role may reach (the clients table, with its key hashes: the client
    # functions, the renderer, and the health checker, which compares it with the rendered
    # clients).
    tables = {
        "AddBackendRole": {"BackendsTable"}, "ListBackendsRole": {"BackendsTable"},
        "RemoveBackendRole": {"BackendsTable"},
        "HealthCheckerRole": {"BackendsTable", "ClientsTable"},
        "AddClientRole": {"ClientsTable"}, "ListClientsRole": {"ClientsTable"},
        "RemoveClientRole": {"ClientsTable"},
        "ConfigRendererRole": {"BackendsTable", "ClientsTable"},
    }
    roles = [n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"]
    check(sorted(roles) == sorted(expected_actions),
          f"roles {sorted(roles)} != {sorted(expected_actions)} (no shared default role)")
    for role_name, actions in expected_actions.items():
        role = resource(role_name, "AWS::IAM::Role")
        check(not role.get("ManagedPolicyArns"), f"{role_name}: no managed policies")
        statements = [s for p in role.get("Policies", [])
                      for s in p["PolicyDocument"]["Statement"]]
        granted = set()
        reached = set()
        for statement in statements:
            check(statement["Effect"] == "Allow", f"{role_name}: only Allow statements")
            statement_actions = as_list(statement["Action"])
            granted.update(statement_actions)
            for action in statement_actions:
                check("*" not in action, f"{role_name}: wildcard action {action}")
            if statement["Resource"] == "*" or "*" in as_list(statement["Resource"]):
                for action in statement_actions:
                    check(action in star_allowed,
                          f"{role_name}: {action} on Resource '*' although it can be named")
                if "cloudwatch:PutMetricData" in statement_actions:
                    check(statement.get("Condition") == {
                        "StringEquals": {"cloudwatch:namespace": namespace}},
                        f"{role_name}: PutMetricData not limited to the namespace")
            if any(a.startswith("logs:") for a in statement_actions):
                function = {v[0]: k for k, v in functions.items()}[role_name]
                check(flatten(statement["Resource"])[0].endswith(
                    f":log-group:/aws/lambda/{stack}-{function}:*"),
                    f"{role_name}: logs limited to its own log group")
            if any(a.startswith("dynamodb:") for a in statement_actions):
                target = statement["Resource"]
                table_name = (target.get("Fn::GetAtt", [None])[0]
                              if isinstance(target, dict) else None)
                check(table_name in tables.get(role_name, set())
                      and target == {"Fn::GetAtt": [table_name, "Arn"]},
                      f"{role_name}: table actions on {target}, not one of its own tables")
                reached.add(table_name)
            if "lambda:InvokeFunction" in statement_actions:
                check(flatten(statement["Resource"])[0].endswith(f":function:{renderer}"),
                      f"{role_name}: invokes the renderer only")
            if "iam:PassRole" in statement_actions:
                check(statement["Resource"] == {"Fn::GetAtt": ["NginxTaskRole", "Arn"]}
                      and statement.get("Condition") == {
                          "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
                      f"{role_name}: PassRole of the task role to ECS only")
            if "ecs:UpdateService" in statement_actions:
                check(f"service/${{ClusterName}}/{stack}-nginx" in flatten(statement["Resource"])[0],
                      f"{role_name}: service actions on the stack's service only")
        check(granted == actions, f"{role_name}: actions {sorted(granted)} != {sorted(actions)}")
        check(reached == tables.get(role_name, set()),
              f"{role_name}: reaches tables {sorted(reached)}, expected "
              f"{sorted(tables.get(role_name, set()))}")

    # --- Storage, ECS, load balancer -----------------------------------------------------
    table = resource("BackendsTable", "AWS::DynamoDB::Table")
    check(table.get("TableName") == stack, "table is named after the stack")
    check(table.get("BillingMode") == "PAY_PER_REQUEST", "table on-demand billing")
    check(table.get("KeySchema") == [{"AttributeName": "url", "KeyType": "HASH"}], "hash key url")
    check(table.get("AttributeDefinitions") == [{"AttributeName": "url", "AttributeType": "S"}],
          "url is a string")

    clients = resource("ClientsTable", "AWS::DynamoDB::Table")
    check(clients.get("TableName") == clients_table, "clients table is <stack>-clients")
    check(clients.get("BillingMode") == "PAY_PER_REQUEST", "clients table on-demand billing")
    check(clients.get("KeySchema") == [{"AttributeName": "name", "KeyType": "HASH"}],
          "clients table: hash key name")
    check(clients.get("AttributeDefinitions") == [{"AttributeName": "name", "AttributeType": "S"}],
          "clients table: name is a string")
    check(clients.get("SSESpecification") == {"SSEEnabled": True}, "clients table encrypted")
    check(clients.get("PointInTimeRecoverySpecification")
          == {"PointInTimeRecoveryEnabled": True}, "clients table point-in-time recovery")

    task = resource("NginxTaskDefinition", "AWS::ECS::TaskDefinition")
    check(task.get("NetworkMode") == "bridge", "bridge networking")
    check(task.get("Family") == f"{stack}-nginx", "task family")
    check(task.get("TaskRoleArn") == {"Fn::GetAtt": ["NginxTaskRole", "Arn"]}, "task role")
    containers = task.get("ContainerDefinitions", [])
    check(len(containers) == 1, "one container")
    if containers:
        container = containers[0]
        check(container.get("Image") == config["ecr_image_uri"], "image from the config")
        check(container.get("Memory") == config.get("nginx_memory_mib", 128), "memory")
        check(container.get("PortMappings") == [{"ContainerPort": port, "HostPort": 0,
                                                 "Protocol": "tcp"}], "dynamic host port")
        environment = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
        check(set(environment) == {"AWS_REGION", "CONFIG_POINTER_PATH", "CONFIG_POLL_SECONDS",
                                   "CLOUDWATCH_NAMESPACE", "STACK_NAME", "NGINX_SOCKET_DIR"},
              f"container environment {set(environment)}")
        check(environment.get("NGINX_SOCKET_DIR") == socket_dir, "the renderer's socket dir")
        check(container.get("LogConfiguration", {}).get("LogDriver") == "awslogs", "awslogs")
    nginx_logs = resource("NginxLogGroup", "AWS::Logs::LogGroup")
    check(nginx_logs.get("RetentionInDays") == config.get("log_retention_days", 14),
          "nginx log retention")

    target_group = resource("NginxTargetGroup", "AWS::ElasticLoadBalancingV2::TargetGroup")
    check(target_group.get("VpcId") == config["vpc_id"], "target group VPC")
    check(target_group.get("HealthCheckPath") == "/healthz", "health check path")
    check(target_group.get("Matcher") == {"HttpCode": "200,503"}, "health check matcher")
    rule = resource("NginxListenerRule", "AWS::ElasticLoadBalancingV2::ListenerRule")
    check(rule.get("ListenerArn") == config["alb_listener_arn"], "listener")
    check(rule.get("Priority") == config["alb_rule_priority"], "rule priority")
    check(rule.get("Conditions") == [{"Field": "host-header",
                                      "HostHeaderConfig": {"Values": [config["host_name"]]}}],
          "host-header condition")
    service = resource("NginxService", "AWS::ECS::Service")
    check(service.get("Cluster") == config["ecs_cluster_arn"], "service cluster")
    check(service.get("ServiceName") == f"{stack}-nginx", "service name")
    check(service.get("TaskDefinition") == {"Ref": "NginxTaskDefinition"}, "service task def")
    check(service.get("LoadBalancers") == [{"ContainerName": "nginx", "ContainerPort": port,
                                            "TargetGroupArn": {"Ref": "NginxTargetGroup"}}],
          "service load balancer")

    # --- Monitoring ----------------------------------------------------------------------
    alarm = resource("HealthyNodesAlarm", "AWS::CloudWatch::Alarm")
    check(alarm.get("Namespace") == namespace, "alarm namespace")
    check(alarm.get("MetricName") == "Number of healthy ETH nodes", "alarm metric")
    check(alarm.get("Dimensions") == [{"Name": "Stack name", "Value": stack}], "alarm dimension")
    check(alarm.get("ComparisonOperator") == "LessThanThreshold", "alarm below threshold")
    check(alarm.get("Threshold") == config.get("alarm_healthy_nodes_threshold", 1),
          "alarm threshold")
    check(alarm.get("TreatMissingData") == "breaching", "missing data breaches")
    check(alarm.get("Period") == config.get("alarm_period_seconds", 60), "alarm period")
    check(alarm.get("EvaluationPeriods") == config.get("alarm_evaluation_periods", 3)
          == alarm.get("DatapointsToAlarm"), "alarm evaluation periods")
    check(alarm.get("Statistic") == "Minimum", "alarm on the minimum")
    check(alarm.get("AlarmActions") == [{"Ref": "AlarmTopic"}]
          and alarm.get("OKActions") == [{"Ref": "AlarmTopic"}], "ALARM and OK go to the topic")
    resource("AlarmTopic", "AWS::SNS::Topic")

    dashboard = resource("Dashboard", "AWS::CloudWatch::Dashboard")
    body_template, variables = dashboard.get("DashboardBody", {}).get("Fn::Sub", ["{}", {}])
    names = set(re.findall(r"\$\{([^}]+)\}", body_template))
    check(names <= set(variables) | {"AWS::Region"},
          f"dashboard variables without values: {names - set(variables)}")
    body = re.sub(r"\$\{[^}]+\}", "1", body_template)
    try:
        widgets = json.loads(body)["widgets"]
        text = json.dumps(widgets)
        for needed in ["RequestCount", "HTTPCode_Target_5XX_Count", "ETH node block difference",
                       "Number of healthy ETH nodes", "Leader stalled", "SEARCH(",
                       "Gate calls served", "Gate calls refused", "Client,Reason"]:
            check(needed in text, f"dashboard lacks {needed}")
    except (ValueError, KeyError) as error:
        check(False, f"dashboard body is not valid JSON: {error}")
    check(variables.get("Namespace") == namespace and variables.get("StackName") == stack,
          "dashboard namespace and stack")

    if failures:
        for failure in failures:
            print(f"template check failed: {failure}", file=sys.stderr)
        return 1
    print(f"template checks passed ({len(resources)} resources)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
