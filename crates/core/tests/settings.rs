//! One place per setting: the variables each function reads are what its settings ask the
//! environment for, and every other place that names them is held against that: the function's
//! `environment:` in `serverless.yml`, the table in docs/architecture.md ("Environment
//! variables"), and, for the config agent, its task definition (`infra/ecs.yml`) and
//! `config_agent --help`. Every `custom.config` key the templates read is in
//! `config.yml.sample`, and every key of the sample is read.

use std::cell::RefCell;
use std::collections::BTreeSet;

use config_agent::settings::USAGE;
use jsonrpc_proxy::functions::admin::{RemoveBackendSettings, TableSettings};
use jsonrpc_proxy::functions::clients::{ClientChangeSettings, ClientsTableSettings};
use jsonrpc_proxy::functions::config_renderer::ConfigRendererSettings;
use jsonrpc_proxy::functions::ecs_updater::EcsUpdaterSettings;
use jsonrpc_proxy::functions::health_checker::HealthCheckerSettings;
use jsonrpc_proxy::settings::Env;
use slack_notifier::SlackSettings;

/// Read by every function, through `telemetry::init_tracing`.
const LOGGING: [&str; 2] = ["RUST_LOG", "LOG_FORMAT"];

type Names = BTreeSet<String>;

/// The variables `from_env` asks for, given a usable value for each required one.
fn asked_by(from_env: impl FnOnce(&Env<'_>) -> Result<(), String>) -> Names {
    let asked = RefCell::new(Names::new());
    let env = Env::from_fn(|name| {
        asked.borrow_mut().insert(name.to_owned());
        let value = match name {
            "CLUSTER_ARN" => "arn:aws:ecs:eu-west-1:123456789012:cluster/main",
            "SLACK_WEBHOOK_URL" => "https://hooks.slack.com/services/T0/B0/x",
            "NGINX_CONFIG_BUCKET_NAME" => "config-bucket",
            _ if name.ends_with("_TABLE")
                || name.ends_with("_FUNCTION")
                || name.ends_with("_FAMILY")
                || name.ends_with("_SERVICE")
                || ["STACK_NAME", "CLOUDWATCH_NAMESPACE"].contains(&name) =>
            {
                "a-name"
            }
            _ => return None,
        };
        Some(value.to_owned())
    });
    if let Err(error) = from_env(&env) {
        panic!("give this test a usable value for what failed: {error}");
    }
    drop(env);
    asked.into_inner()
}

/// What a Lambda function reads: its settings (as its binary,
/// `crates/functions/src/bin/<function>.rs`, builds them) and the logging.
fn read_by(function: &str) -> Names {
    fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<(), String> {
        result.map(drop).map_err(|e| e.to_string())
    }
    let mut names = asked_by(|env| match function {
        "add_backend" | "list_backends" => ok(TableSettings::from_env(env)),
        "remove_backend" => ok(RemoveBackendSettings::from_env(env)),
        "add_client" | "remove_client" => ok(ClientChangeSettings::from_env(env)),
        "list_clients" => ok(ClientsTableSettings::from_env(env)),
        "health_checker" => ok(HealthCheckerSettings::from_env(env)),
        "config_renderer" => ok(ConfigRendererSettings::from_env(env)),
        "ecs_updater" => ok(EcsUpdaterSettings::from_env(env)),
        "slack_notifier" => ok(SlackSettings::from_env(env)),
        other => panic!("{other}: say here which settings its binary reads"),
    });
    names.extend(LOGGING.map(String::from));
    names
}

fn text(path: &str) -> String {
    let path = devstack::repo_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The keys of the mapping at `indent` spaces under each line that `opens` accepts, up to the
/// next line indented less.
fn keys_under(text: &str, opens: impl Fn(&str) -> bool, indent: usize) -> Names {
    let mut keys = Names::new();
    let mut inside: Option<usize> = None;
    for line in text.lines() {
        let depth = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(opened_at) = inside {
            if depth <= opened_at {
                inside = None;
            } else if depth == indent {
                if let Some((key, _)) = trimmed.split_once(':') {
                    keys.insert(key.to_owned());
                }
                continue;
            }
        }
        if opens(line) {
            inside = Some(depth);
        }
    }
    keys
}

/// A function's `environment:` in serverless.yml, with the provider's, which every function has.
fn serverless_environment(function: &str) -> Names {
    let yml = text("serverless.yml");
    let provider = section(&yml, "provider:");
    let own = section(&section(&yml, "functions:"), &format!("  {function}:"));
    let mut names = keys_under(&provider, |l| l == "  environment:", 4);
    names.extend(keys_under(&own, |l| l == "    environment:", 6));
    names
}

/// The lines from `opening` (a whole line) to the next line indented as little as it is.
fn section(text: &str, opening: &str) -> String {
    let depth = opening.len() - opening.trim_start().len();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if inside {
            let indent = line.len() - line.trim_start().len();
            if !line.trim().is_empty() && indent <= depth && !line.trim_start().starts_with('#') {
                break;
            }
            out.push(line);
        } else if line == opening {
            inside = true;
            out.push(line);
        }
    }
    out.join("\n")
}

/// The variables docs/architecture.md's table says `function` reads ("all" reaches every one).
fn documented_for(function: &str) -> Names {
    let doc = text("docs/architecture.md");
    let table = doc
        .split("\n## Environment variables\n")
        .nth(1)
        .expect("the heading");
    let mut names = Names::new();
    for row in table
        .lines()
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("| `"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let users: Vec<&str> = cells[2]
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        if users.contains(&function) || users == ["all"] {
            names.extend(backticked_variables(cells[1]));
        }
    }
    names
}

/// `NAME` in backticks (a `NAME=value` counts as `NAME`).
fn backticked_variables(cell: &str) -> Names {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|quoted| quoted.split('=').next().unwrap_or(quoted))
        .filter(|name| {
            name.len() > 2
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_function_is_given_and_documented_what_it_reads_and_nothing_else() {
    let functions = devstack::functions().expect("serverless.yml's functions");
    assert_eq!(functions.len(), 10, "{functions:?}");
    let mut wrong = Vec::new();
    for function in &functions {
        let reads = read_by(function);
        for (place, names) in [
            ("serverless.yml", serverless_environment(function)),
            ("docs/architecture.md", documented_for(function)),
        ] {
            let missing: Vec<_> = reads.difference(&names).collect();
            let extra: Vec<_> = names.difference(&reads).collect();
            if !missing.is_empty() || !extra.is_empty() {
                wrong.push(format!(
                    "{function}: {place} lacks {missing:?} and has {extra:?}, which it does not read"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_config_agent_is_given_only_what_it_reads_and_says_so_in_its_help() {
    let reads = asked_by(|env| {
        config_agent::parse_args(&[], env)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    assert!(reads.contains("CONFIG_POINTER_PATH") && reads.contains("STACK_NAME"));
    let undocumented: Vec<_> = reads.iter().filter(|name| !USAGE.contains(*name)).collect();
    assert!(
        undocumented.is_empty(),
        "config_agent --help lacks {undocumented:?}"
    );
    let given: Names = text("infra/ecs.yml")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- Name: "))
        .filter(|name| name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .map(str::to_owned)
        .collect();
    // The SDK's own variable; the agent reads it through the AWS configuration.
    let unread: Vec<_> = given
        .iter()
        .filter(|name| !reads.contains(*name) && *name != "AWS_REGION")
        .collect();
    assert!(
        unread.is_empty(),
        "infra/ecs.yml sets {unread:?}, which the agent does not read"
    );
}

#[test]
fn every_config_key_the_templates_read_is_in_the_sample_and_every_sample_key_is_read() {
    let sample = text("config.yml.sample");
    let mut in_sample = Names::new();
    let mut section_name: Option<String> = None;
    for line in sample.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !line.starts_with(' ') {
            let key = key.trim().to_owned();
            section_name = value.trim().is_empty().then(|| key.clone());
            in_sample.insert(key);
        } else if let (Some(section), Some(nested)) = (&section_name, key.strip_prefix("  ")) {
            if !nested.starts_with(' ') && !nested.starts_with('-') {
                in_sample.insert(format!("{section}.{}", nested.trim()));
            }
        }
    }
    let templates = [
        "serverless.yml",
        "infra/storage.yml",
        "infra/iam.yml",
        "infra/ecs.yml",
        "infra/monitoring.yml",
    ]
    .map(text)
    .join("\n");
    let mut read = Names::new();
    for piece in templates.split("self:custom.config.").skip(1) {
        let key: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.')
            .collect();
        let key = key.trim_end_matches('.').to_owned();
        if let Some((section, _)) = key.split_once('.') {
            read.insert(section.to_owned());
        }
        read.insert(key);
    }
    let unread: Vec<_> = in_sample.difference(&read).collect();
    let missing: Vec<_> = read.difference(&in_sample).collect();
    assert!(
        unread.is_empty() && missing.is_empty(),
        "config.yml.sample has {unread:?}, which no template reads, and lacks {missing:?}"
    );
}

#[test]
fn the_parsers_of_this_test_read_what_they_should() {
    let yml = "provider:\n  environment:\n    A: 1\nfunctions:\n  f:\n    environment:\n      B: x # c\n      # D: no\n    events:\n      - E: 1\n  g:\n    environment:\n      C: y\n";
    assert_eq!(
        keys_under(
            &section(&section(yml, "functions:"), "  f:"),
            |l| l == "    environment:",
            6
        ),
        Names::from(["B".to_owned()])
    );
    assert_eq!(
        backticked_variables("`A_B`, `LOG_FORMAT=json` (`true` or `false`)"),
        Names::from(["A_B".to_owned(), "LOG_FORMAT".to_owned()])
    );
}
