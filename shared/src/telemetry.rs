//! Logging: JSON lines on Lambda (CloudWatch), readable lines locally. Filter with
//! `BLUEHOOK_LOG` (or `RUST_LOG`), default `info`. Nothing logged ever holds a secret; message
//! content is never logged.

use tracing_subscriber::EnvFilter;

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("BLUEHOOK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// JSON logs, for Lambda.
pub fn init_json() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .with_current_span(false)
        .without_time() // CloudWatch stamps each line
        .with_target(false)
        .try_init();
}

/// Human-readable logs on stderr, for the local commands.
pub fn init_local() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init();
}
