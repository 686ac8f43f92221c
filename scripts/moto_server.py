"""moto_server, with what the deployed template needs and moto 5.2 does not model.

Run as `python3 scripts/moto_server.py -H 127.0.0.1 -p PORT` (the arguments of `moto_server`).
It adds, before the server starts:

- `Fn::GetAtt [<target group>, TargetGroupFullName]` (and `TargetGroupName`): moto answers 500
  on every stack operation of a template that asks for them;
- a CloudFormation model of `AWS::CloudWatch::Alarm`: moto skips the resource, so
  `Fn::GetAtt [<alarm>, Arn]` fails the stack. The model creates the alarm with
  `PutMetricAlarm`, so `DescribeAlarms` shows what the template declared;
- DynamoDB writes one at a time: the server answers requests on threads, and moto checks a
  write's condition and then writes, so two concurrent conditional puts of one new item could
  both succeed (seen: two `add_client` of one name both answered 201), which DynamoDB never
  allows.

Nothing else of moto changes. docs/architecture.md ("The local AWS endpoint") says why and
lists what moto still leaves out.
"""

import functools
import sys
import threading

from moto.cloudwatch.models import cloudwatch_backends
from moto.core.common_models import CloudFormationModel
from moto.dynamodb.models import DynamoDBBackend
from moto.elbv2.models import FakeTargetGroup


def _target_group_attributes():
    """FakeTargetGroup has no `get_cfn_attribute`: every GetAtt of a target group is a 500."""

    def get_cfn_attribute(self, attribute):
        from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

        if attribute == "TargetGroupFullName":
            # arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>
            return self.arn.split(":", 5)[5]
        if attribute == "TargetGroupName":
            return self.name
        if attribute == "TargetGroupArn":
            return self.arn
        if attribute == "LoadBalancerArns":
            return list(self.load_balancer_arns)
        raise UnformattedGetAttTemplateException()

    FakeTargetGroup.get_cfn_attribute = get_cfn_attribute


class CloudWatchAlarm(CloudFormationModel):
    """`AWS::CloudWatch::Alarm` (single-metric alarms, the only kind the template declares)."""

    # moto's model registry files a model under the service its module names.
    __module__ = "moto.cloudwatch.models"

    def __init__(self, alarm):
        self.alarm = alarm

    @staticmethod
    def cloudformation_type():
        return "AWS::CloudWatch::Alarm"

    @staticmethod
    def cloudformation_name_type():
        return "AlarmName"

    @property
    def physical_resource_id(self):
        return self.alarm.name

    @classmethod
    def has_cfn_attr(cls, attribute):
        return attribute == "Arn"

    def get_cfn_attribute(self, attribute):
        from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

        if attribute == "Arn":
            return self.alarm.alarm_arn
        raise UnformattedGetAttTemplateException()

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
    ):
        properties = cloudformation_json["Properties"]
        backend = cloudwatch_backends[account_id][region_name]
        number = lambda key: int(properties[key]) if key in properties else None  # noqa: E731
        alarm = backend.put_metric_alarm(
            name=properties.get("AlarmName") or resource_name,
            namespace=properties.get("Namespace"),
            metric_name=properties.get("MetricName"),
            comparison_operator=properties["ComparisonOperator"],
            evaluation_periods=number("EvaluationPeriods"),
            datapoints_to_alarm=number("DatapointsToAlarm"),
            period=number("Period"),
            threshold=float(properties["Threshold"]),
            statistic=properties.get("Statistic"),
            extended_statistic=properties.get("ExtendedStatistic"),
            description=properties.get("AlarmDescription", ""),
            dimensions=properties.get("Dimensions", []),
            alarm_actions=properties.get("AlarmActions", []),
            ok_actions=properties.get("OKActions", []),
            insufficient_data_actions=properties.get("InsufficientDataActions", []),
            unit=properties.get("Unit"),
            actions_enabled=str(properties.get("ActionsEnabled", "true")).lower() == "true",
            treat_missing_data=properties.get("TreatMissingData"),
            evaluate_low_sample_count_percentile=None,
            threshold_metric_id=None,
            rule=None,
        )
        return cls(alarm)

    @classmethod
    def update_from_cloudformation_json(
        cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name
    ):
        cls.delete_from_cloudformation_json(
            original_resource.alarm.name, cloudformation_json, account_id, region_name
        )
        return cls.create_from_cloudformation_json(
            new_resource_name, cloudformation_json, account_id, region_name
        )

    @classmethod
    def delete_from_cloudformation_json(
        cls, resource_name, cloudformation_json, account_id, region_name
    ):
        cloudwatch_backends[account_id][region_name].delete_alarms([resource_name])


def _atomic_dynamodb_writes():
    """One DynamoDB write at a time, so a condition holds until its write is done."""
    lock = threading.RLock()
    for name in ("put_item", "update_item", "delete_item", "transact_write_items",
                 "batch_write_item"):
        write = getattr(DynamoDBBackend, name)

        @functools.wraps(write)
        def one_at_a_time(self, *args, _write=write, **kwargs):
            with lock:
                return _write(self, *args, **kwargs)

        setattr(DynamoDBBackend, name, one_at_a_time)


def main():
    _target_group_attributes()
    _atomic_dynamodb_writes()
    from moto.server import main as moto_server

    return moto_server(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
