//! Logging and AWS configuration shared by every binary.

/// Installs a `tracing` subscriber writing one line per event to stdout (CloudWatch Logs adds
/// the time). `RUST_LOG` filters; `LOG_FORMAT=json` switches to JSON lines.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .without_time();
    let result = if std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A subscriber may already be installed (tests); that one keeps working.
    let _ = result;
}

/// Loads the AWS configuration the standard way: region, credentials and the
/// `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables from the environment.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
