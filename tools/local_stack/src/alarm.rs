//! Plays CloudWatch's alarm evaluation, which the local endpoint does not do: the deployed
//! alarm's own definition over the datapoints the CloudWatch recorder received, and on a state
//! change the message CloudWatch publishes to SNS, delivered as SNS delivers it to a
//! subscribed function (docs/architecture.md, "The local stage").

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::deploy::AlarmDefinition;

/// An alarm state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmState {
    /// `OK`.
    Ok,
    /// `ALARM`.
    Alarm,
    /// `INSUFFICIENT_DATA`.
    InsufficientData,
}

impl AlarmState {
    /// CloudWatch's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Alarm => "ALARM",
            Self::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// One evaluation: the new state and CloudWatch's reason text.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The state the alarm is in.
    pub state: AlarmState,
    /// `NewStateReason`.
    pub reason: String,
}

/// The datapoints of the alarm's metric (value, epoch seconds) out of the recorder's calls.
pub fn datapoints(alarm: &AlarmDefinition, recorded: &[Value]) -> Vec<(f64, f64)> {
    recorded
        .iter()
        .filter(|call| call["namespace"] == alarm.namespace.as_str())
        .flat_map(|call| call["metric_data"].as_array().into_iter().flatten())
        .filter(|datum| datum["MetricName"] == alarm.metric_name.as_str())
        .filter(|datum| {
            let dimensions: Vec<(String, String)> = datum["Dimensions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| Some((d["Name"].as_str()?.into(), d["Value"].as_str()?.into())))
                .collect();
            alarm.dimensions.iter().all(|d| dimensions.contains(d))
        })
        .filter_map(|datum| Some((datum["Value"].as_f64()?, datum["Timestamp"].as_f64()?)))
        .collect()
}

fn statistic(name: &str, values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let sum: f64 = values.iter().sum();
    Some(match name {
        "Minimum" => values.iter().copied().fold(f64::INFINITY, f64::min),
        "Maximum" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "Sum" => sum,
        "SampleCount" => values.len() as f64,
        _ => sum / values.len() as f64,
    })
}

fn breaches(operator: &str, value: f64, threshold: f64) -> bool {
    match operator {
        "GreaterThanOrEqualToThreshold" => value >= threshold,
        "GreaterThanThreshold" => value > threshold,
        "LessThanThreshold" => value < threshold,
        "LessThanOrEqualToThreshold" => value <= threshold,
        _ => false,
    }
}

/// Evaluates the alarm at `now` (epoch seconds) over the last `EvaluationPeriods` complete
/// periods, with `TreatMissingData` for periods without a datapoint.
pub fn evaluate(alarm: &AlarmDefinition, points: &[(f64, f64)], now: f64) -> Evaluation {
    let period = alarm.period as f64;
    let end = (now / period).floor() * period;
    let mut values = Vec::new();
    for n in (1..=alarm.evaluation_periods).rev() {
        let start = end - n as f64 * period;
        let inside: Vec<f64> = points
            .iter()
            .filter(|(_, at)| *at >= start && *at < start + period)
            .map(|(value, _)| *value)
            .collect();
        values.push((start, statistic(&alarm.statistic, &inside)));
    }
    let breaching = values
        .iter()
        .filter(|(_, value)| match value {
            Some(value) => breaches(&alarm.comparison_operator, *value, alarm.threshold),
            None => alarm.treat_missing_data == "breaching",
        })
        .count() as u64;
    let present = values.iter().filter(|(_, v)| v.is_some()).count();
    let listed: Vec<String> = values
        .iter()
        .rev()
        .filter_map(|(start, value)| {
            let at = OffsetDateTime::from_unix_timestamp(*start as i64).ok()?;
            Some(format!(
                "{:.1} ({:02}/{:02}/{:02} {:02}:{:02}:{:02})",
                (*value)?,
                at.day(),
                u8::from(at.month()),
                at.year() % 100,
                at.hour(),
                at.minute(),
                at.second()
            ))
        })
        .collect();
    let state = if breaching >= alarm.datapoints_to_alarm {
        AlarmState::Alarm
    } else if present == 0 && alarm.treat_missing_data == "missing" {
        AlarmState::InsufficientData
    } else {
        AlarmState::Ok
    };
    let verb = match alarm.comparison_operator.as_str() {
        "LessThanThreshold" => "less than",
        "LessThanOrEqualToThreshold" => "less than or equal to",
        "GreaterThanThreshold" => "greater than",
        _ => "greater than or equal to",
    };
    let reason = match state {
        AlarmState::Alarm => format!(
            "Threshold Crossed: {breaching} out of the last {} datapoints [{}] were {verb} the threshold ({:.1}) (minimum {} datapoints for OK -> ALARM transition).",
            alarm.evaluation_periods,
            listed.join(", "),
            alarm.threshold,
            alarm.datapoints_to_alarm
        ),
        AlarmState::Ok => format!(
            "Threshold Crossed: {} out of the last {} datapoints [{}] were not {verb} the threshold ({:.1}) (minimum 1 datapoint for ALARM -> OK transition).",
            alarm.evaluation_periods - breaching,
            alarm.evaluation_periods,
            listed.join(", "),
            alarm.threshold
        ),
        AlarmState::InsufficientData => {
            "Insufficient Data: no datapoints were received for the evaluated periods.".to_owned()
        }
    };
    Evaluation { state, reason }
}

/// CloudWatch's time format in alarm messages, e.g. `2026-11-24T03:05:12.345+0000`.
fn cloudwatch_time(at: OffsetDateTime) -> String {
    at.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    ))
    .unwrap_or_default()
}

/// The SNS event a subscribed function receives for an alarm state change, with the message
/// CloudWatch publishes (the shape of `crates/slack_notifier/tests/fixtures`).
pub fn sns_event(
    alarm: &AlarmDefinition,
    topic_arn: &str,
    old: AlarmState,
    new: &Evaluation,
    at: OffsetDateTime,
) -> Value {
    let region = devstack::TEST_REGION;
    let region_name = "US East (N. Virginia)";
    let message = json!({
        "AlarmName": alarm.name,
        "AlarmDescription": alarm.description,
        "AWSAccountId": "123456789012",
        "AlarmConfigurationUpdatedTimestamp": cloudwatch_time(at),
        "NewStateValue": new.state.as_str(),
        "NewStateReason": new.reason,
        "StateChangeTime": cloudwatch_time(at),
        "Region": region_name,
        "AlarmArn": format!("arn:aws:cloudwatch:{region}:123456789012:alarm:{}", alarm.name),
        "OldStateValue": old.as_str(),
        "OKActions": alarm.ok_actions,
        "AlarmActions": alarm.alarm_actions,
        "InsufficientDataActions": [],
        "Trigger": {
            "MetricName": alarm.metric_name,
            "Namespace": alarm.namespace,
            "StatisticType": "Statistic",
            "Statistic": alarm.statistic.to_uppercase(),
            "Unit": null,
            "Dimensions": alarm.dimensions.iter().map(|(name, value)| json!({"value": value, "name": name})).collect::<Vec<_>>(),
            "Period": alarm.period,
            "EvaluationPeriods": alarm.evaluation_periods,
            "DatapointsToAlarm": alarm.datapoints_to_alarm,
            "ComparisonOperator": alarm.comparison_operator,
            "Threshold": alarm.threshold,
            "TreatMissingData": alarm.treat_missing_data,
            "EvaluateLowSampleCountPercentile": ""
        }
    });
    let id = format!("{:032x}", at.unix_timestamp_nanos());
    let subscription = format!("{topic_arn}:{}-{}-{}", &id[..8], &id[8..12], &id[12..24]);
    json!({"Records": [{
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": subscription,
        "Sns": {
            "Type": "Notification",
            "MessageId": format!("{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..28]),
            "TopicArn": topic_arn,
            "Subject": format!("{}: \"{}\" in {region_name}", new.state.as_str(), alarm.name),
            "Message": message.to_string(),
            "Timestamp": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "SignatureVersion": "1",
            "Signature": "LOCAL",
            "SigningCertUrl": format!("https://sns.{region}.amazonaws.com/SimpleNotificationService-local.pem"),
            "UnsubscribeUrl": format!("https://sns.{region}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={subscription}"),
            "MessageAttributes": {}
        }
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm() -> AlarmDefinition {
        AlarmDefinition {
            name: "jsonrpc-proxy-local healthy ETH nodes".into(),
            description: "Fewer than 2 backends".into(),
            namespace: "ns".into(),
            metric_name: "Number of healthy ETH nodes".into(),
            dimensions: vec![("Stack name".into(), "jsonrpc-proxy-local".into())],
            statistic: "Minimum".into(),
            period: 10,
            evaluation_periods: 2,
            datapoints_to_alarm: 2,
            threshold: 2.0,
            comparison_operator: "LessThanThreshold".into(),
            treat_missing_data: "breaching".into(),
            alarm_actions: vec!["arn:aws:sns:us-east-1:123456789012:t".into()],
            ok_actions: vec!["arn:aws:sns:us-east-1:123456789012:t".into()],
        }
    }

    #[test]
    fn the_minimum_of_each_period_is_compared_and_missing_data_breaches() {
        let alarm = alarm();
        // Periods [100, 110) and [110, 120) are evaluated at 125.
        let healthy = [(3.0, 101.0), (3.0, 111.0)];
        assert_eq!(evaluate(&alarm, &healthy, 125.0).state, AlarmState::Ok);
        let one_dip = [(3.0, 101.0), (1.0, 112.0), (3.0, 115.0)];
        assert_eq!(evaluate(&alarm, &one_dip, 125.0).state, AlarmState::Ok);
        let both = [(1.0, 101.0), (1.0, 112.0)];
        let evaluation = evaluate(&alarm, &both, 125.0);
        assert_eq!(evaluation.state, AlarmState::Alarm);
        assert!(evaluation
            .reason
            .starts_with("Threshold Crossed: 2 out of the last 2"));
        let silent = [(3.0, 80.0)];
        assert_eq!(evaluate(&alarm, &silent, 125.0).state, AlarmState::Alarm);
        let mut missing_is_missing = alarm.clone();
        missing_is_missing.treat_missing_data = "missing".into();
        assert_eq!(
            evaluate(&missing_is_missing, &silent, 125.0).state,
            AlarmState::InsufficientData
        );
    }

    #[test]
    fn datapoints_are_those_of_the_alarm_metric_and_dimensions() {
        let alarm = alarm();
        let recorded = vec![
            json!({"namespace": "ns", "metric_data": [
                {"MetricName": "Number of healthy ETH nodes", "Value": 1.0, "Timestamp": 5.0,
                 "Dimensions": [{"Name": "Stack name", "Value": "jsonrpc-proxy-local"}]},
                {"MetricName": "Number of healthy ETH nodes", "Value": 7.0, "Timestamp": 5.0,
                 "Dimensions": [{"Name": "Stack name", "Value": "other"}]},
                {"MetricName": "ETH node block number", "Value": 9.0, "Timestamp": 5.0,
                 "Dimensions": [{"Name": "Stack name", "Value": "jsonrpc-proxy-local"}]}
            ]}),
            json!({"namespace": "other", "metric_data": [
                {"MetricName": "Number of healthy ETH nodes", "Value": 4.0, "Timestamp": 5.0,
                 "Dimensions": [{"Name": "Stack name", "Value": "jsonrpc-proxy-local"}]}
            ]}),
        ];
        assert_eq!(datapoints(&alarm, &recorded), vec![(1.0, 5.0)]);
    }

    #[test]
    fn the_sns_event_carries_cloudwatchs_message() {
        let alarm = alarm();
        let evaluation = evaluate(&alarm, &[], 125.0);
        let at = OffsetDateTime::from_unix_timestamp(125).unwrap();
        let event = sns_event(&alarm, "arn:t", AlarmState::Ok, &evaluation, at);
        let sns = &event["Records"][0]["Sns"];
        assert_eq!(sns["TopicArn"], "arn:t");
        let message: Value = serde_json::from_str(sns["Message"].as_str().unwrap()).unwrap();
        assert_eq!(message["NewStateValue"], "ALARM");
        assert_eq!(message["OldStateValue"], "OK");
        assert_eq!(message["Trigger"]["Threshold"], 2.0);
        assert_eq!(message["Trigger"]["Dimensions"][0]["name"], "Stack name");
        assert!(sns["Subject"]
            .as_str()
            .unwrap()
            .starts_with("ALARM: \"jsonrpc-proxy-local healthy ETH nodes\""));
    }
}
