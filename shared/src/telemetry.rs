//! Logging: JSON lines on Lambda (CloudWatch), readable lines locally. Filter with
//! `BLUEHOOK_LOG` (or `RUST_LOG`), default `info`. Nothing logged ever holds a secret; message
//! content is never logged.

use tracing_subscriber::EnvFilter;

/// Wire-level tracing of the HTTP and AWS layers would print request and response bodies (an
/// SSM secret among them), and the Lambda runtime's traces print every raw event (a provider's
/// signing secret in its headers, the message text in its body): those targets are capped
/// whatever level is asked for.
const CAPS: &[&str] = &[
    "lambda_runtime=debug",
    "lambda_runtime_api_client=debug",
    "lambda_http=debug",
    "aws_smithy_runtime=info",
    "aws_smithy_runtime_api=info",
    "aws_smithy_http=info",
    "aws_smithy_http_client=info",
    "aws_sigv4=info",
    "aws_config=info",
    "hyper=info",
    "hyper_util=info",
    "h2=info",
    "rustls=info",
    "reqwest=info",
];

fn filter() -> EnvFilter {
    let asked = std::env::var("BLUEHOOK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let directives = std::iter::once(asked.as_str())
        .chain(CAPS.iter().copied())
        .collect::<Vec<_>>()
        .join(",");
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// JSON logs on stdout, for Lambda.
pub fn init_json() {
    init_json_with(std::io::stdout);
}

/// JSON logs, as [`init_json`], written through `writer` (a function returning an
/// `io::Write`): for embedding bluehook's handlers in another process, and for tests that read
/// every line logged.
pub fn init_json_with<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(writer)
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
