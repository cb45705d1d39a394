//! Helpers shared by the integration tests: moto (started by `scripts/test.sh`), AWS clients
//! pointed at it, and the `bluehook` binary as a real process.

#![allow(dead_code)]

pub mod cdn;
pub mod fake;
pub mod leaks;
pub mod proxy;
pub mod runtime;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

/// moto's endpoint. The tests need it: run them with `./scripts/test.sh`.
pub fn moto_endpoint() -> String {
    std::env::var("BLUEHOOK_TEST_AWS_ENDPOINT").expect(
        "BLUEHOOK_TEST_AWS_ENDPOINT is not set: run the tests with ./scripts/test.sh, which starts moto",
    )
}

pub async fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(2))
                .build(),
        )
        .load()
        .await
}

/// How long a test waits for the pipeline to get somewhere before it fails. Generous on
/// purpose: a slow or busy machine only makes a test wait longer, never fail. Tests assert
/// outcomes (nothing lost, nothing doubled, the right answer); speed is for the benchmarks.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// Polls `done` until it holds; fails naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_until`] for async tests: polls without blocking the runtime.
pub async fn wait_until_async(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `bluehook stats --json` once every local queue is empty (nothing queued or in flight).
pub fn wait_until_drained(data_dir: &Path) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until("the local queues to drain", || {
        last = stats(data_dir);
        last["queued"] == 0
    });
    last
}

/// Waits until the events queue is empty: every accepted event is in the event log (the
/// sinks' queues may still hold work).
pub fn wait_until_logged(data_dir: &Path) {
    wait_until("the events queue to drain into the event log", || {
        stats(data_dir)["queues"]["events"]["queued"] == 0
    });
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates an idempotency table as the template declares it (key `pk`).
pub async fn create_idempotency_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
}

/// Creates a follow-up timers table as the template does: key `pk`, and the sparse index `due`
/// (`due_bucket`, `due_ms`) over the scheduled timers.
#[allow(dead_code)]
pub async fn create_timers_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{GlobalSecondaryIndex, Projection, ProjectionType};
    let attr = |n: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(t)
            .build()
            .unwrap()
    };
    let key = |n: &str, k: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(k)
            .build()
            .unwrap()
    };
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("due_bucket", ScalarAttributeType::S))
        .attribute_definitions(attr("due_ms", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(bluehook::timers::DUE_INDEX)
                .key_schema(key("due_bucket", KeyType::Hash))
                .key_schema(key("due_ms", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
}

/// Stores `value` as a SecureString parameter `/bluehook/test/<unique name from prefix>`;
/// answers its name.
pub async fn put_secure_parameter(ssm: &aws_sdk_ssm::Client, prefix: &str, value: &str) -> String {
    let name = format!("/bluehook/test/{}", unique(prefix));
    ssm.put_parameter()
        .name(&name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    name
}

pub async fn create_queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .unwrap()
}

/// One SQS record as Lambda's event source mapping hands it to a function: `receive_count` is
/// its `ApproximateReceiveCount`, `queue` the last part of its queue's ARN.
pub fn sqs_record(
    id: &str,
    receipt: &str,
    body: &str,
    receive_count: u32,
    queue: &str,
) -> serde_json::Value {
    serde_json::json!({
        "messageId": id, "receiptHandle": receipt, "body": body,
        "attributes": {"ApproximateReceiveCount": receive_count.to_string()},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{queue}"),
        "awsRegion": "us-east-1",
    })
}

/// The record of a message received from a queue, with the receive count SQS gave (1 when it
/// gave none).
pub fn sqs_record_of(m: &aws_sdk_sqs::types::Message, queue: &str) -> serde_json::Value {
    let count = m
        .attributes
        .as_ref()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        })
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    sqs_record(
        m.message_id.as_deref().unwrap_or_default(),
        m.receipt_handle.as_deref().unwrap_or_default(),
        m.body.as_deref().unwrap_or_default(),
        count,
        queue,
    )
}

/// An SQS event of these records, as JSON (`serde_json::from_value` makes it an `SqsEvent`).
pub fn sqs_event(records: impl IntoIterator<Item = serde_json::Value>) -> serde_json::Value {
    serde_json::json!({ "Records": records.into_iter().collect::<Vec<_>>() })
}

/// Every message in the queue (received and deleted).
pub async fn drain_queue(client: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            return bodies;
        }
        for m in msgs {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
            bodies.push(m.body.unwrap());
        }
    }
}

/// A running `bluehook dev`.
pub struct DevProcess {
    pub child: Child,
    pub base_url: String,
}

impl DevProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> DevProcess {
        Self::start_logging(data_dir, extra, "warn", None)
    }

    /// Starts with `BLUEHOOK_LOG=level`, its log (stderr) going to `log_file` if given.
    pub fn start_logging(
        data_dir: &Path,
        extra: &[&str],
        level: &str,
        log_file: Option<&Path>,
    ) -> DevProcess {
        Self::start_on("127.0.0.1:0", data_dir, extra, level, log_file)
    }

    /// Starts listening on `listen` (the URL it prints may name an unspecified address).
    pub fn start_on(
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
        level: &str,
        log_file: Option<&Path>,
    ) -> DevProcess {
        let stderr = match log_file {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_bluehook"))
            .arg("dev")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .current_dir(data_dir)
            .env("BLUEHOOK_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start bluehook dev");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base_url = loop {
            let line = lines
                .next()
                .expect("bluehook dev exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("bluehook dev listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep reading stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        DevProcess { child, base_url }
    }

    /// Starts with `config`, logging at trace level into `dev.log` in the data folder; returns
    /// the log's path too.
    pub fn start_tracing(data_dir: &Path, config: &Path) -> (DevProcess, PathBuf) {
        let log = data_dir.join("dev.log");
        let dev = Self::start_logging(
            data_dir,
            &["--config", config.to_str().unwrap()],
            "trace",
            Some(&log),
        );
        (dev, log)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Ctrl-C (SIGINT) and wait for a clean exit.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bluehook <args> --data-dir <data_dir>`: whether it succeeded, and its stdout then stderr.
#[allow(dead_code)]
pub fn cli(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `bluehook <args> --data-dir <data_dir>`, whose output is JSON.
pub fn cli_json(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `bluehook events show <id> --json` on a data folder.
pub fn events_show(data_dir: &Path, id: &str) -> serde_json::Value {
    cli_json(data_dir, &["events", "show", id, "--json"])
}

/// `bluehook stats --json` for a data folder.
pub fn stats(data_dir: &Path) -> serde_json::Value {
    cli_json(data_dir, &["stats", "--json"])
}

/// `bluehook dev` with `config` as its config file must refuse to start, saying `expected`.
pub fn assert_dev_refuses(config: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bluehook.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["dev", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(expected),
        "{config}\n{stderr}"
    );
}
