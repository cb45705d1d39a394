//! The `bluehook` command: `dev` runs the local pipeline, `send` posts a signed sample webhook,
//! `stats` prints the counters of a data folder, `cost` what webhooks cost on AWS.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bluehook::analytics;
use bluehook::config::{resolve_secrets, Config, Secret, SourceConfig};
use bluehook::local::{self, DevOptions};
use bluehook::metrics::Stats;
use bluehook::provider::{self, sample_names, SampleOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bluehook",
    version,
    about = "Verified, idempotent, durable webhooks for messaging providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline locally on embedded SQLite.
    Dev {
        /// Address to serve HTTP on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// Folder for the database, the event log and the dev secret.
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
        /// Config file [default: ./bluehook.toml if it exists, else a built-in `sendblue` source].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve the inspector (the page at `/` and `/_bluehook/api/`) on any listen address,
        /// to requests with `Authorization: Bearer <token>` [default: the inspector is on for a
        /// loopback address only, without a token].
        #[arg(long, env = "BLUEHOOK_INSPECTOR_TOKEN", hide_env_values = true)]
        inspector_token: Option<String>,
    },
    /// Post a correctly signed sample webhook and print the answer.
    Send {
        /// `<provider>.<event>`, e.g. `sendblue.receive`, `twilio.delivered`; `--list` lists them.
        #[arg(required_unless_present = "list", default_value = "")]
        sample: String,
        /// Where to post [default: http://127.0.0.1:3000/webhooks/<source>]. For Sendblue a URL
        /// ending in `/webhooks/<source>` gets the event's type appended.
        #[arg(long)]
        url: Option<String>,
        /// The signing secret (for Standard Webhooks a `whsec_...` secret, for Twilio the auth
        /// token) [default: $BLUEHOOK_SECRET, else the source's first secret in the config,
        /// else the dev secret in --data-dir].
        #[arg(long, env = "BLUEHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// The configured source whose settings (header names, presets) sign the sample
        /// [default: the source named like the provider, if configured].
        #[arg(long)]
        source: Option<String>,
        /// Config file to read the source from [default: ./bluehook.toml if it exists].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Status to report (e.g. DELIVERED, READ, ERROR).
        #[arg(long)]
        status: Option<String>,
        /// Message handle; repeat one to send a duplicate.
        #[arg(long)]
        handle: Option<String>,
        /// Message text.
        #[arg(long)]
        content: Option<String>,
        /// Where `bluehook dev` keeps its dev secret.
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
        /// List the samples and exit.
        #[arg(long)]
        list: bool,
    },
    /// Move dead-lettered messages back to their queue, to be processed again.
    Replay {
        /// The queue to refill from its dead-letter queue: locally events, crm, sms-fallback,
        /// analytics, media or replies; with --aws an SQS queue name or URL (with --destination: the deliveries
        /// queue, the `DeliveriesQueueName` output).
        #[arg(long, required_unless_present = "destination")]
        queue: Option<String>,
        /// A destination (`[destinations.<name>]`) whose dead-lettered deliveries to send again.
        #[arg(long)]
        destination: Option<String>,
        /// Most messages to move.
        #[arg(long, default_value_t = u64::MAX, hide_default_value = true)]
        max: u64,
        /// Replay on AWS SQS (credentials and region from the environment) instead of locally.
        #[arg(long)]
        aws: bool,
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
    },
    /// Show recent events, their routes and every delivery attempt (local data folder).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// What webhooks cost on AWS, per million and per month: the AWS requests each function
    /// makes per webhook (as `scripts/bench-aws.sh` measured them) at list prices, beside the
    /// fewest the same guarantees need.
    Cost {
        /// Webhooks a month.
        #[arg(long, default_value_t = 1_000_000)]
        per_month: u64,
        /// The sinks on, comma-separated: crm, sms_fallback, analytics, media; or all, none.
        #[arg(long, default_value = "all")]
        sinks: String,
        /// Behind a Lambda function URL instead of the HTTP API.
        #[arg(long)]
        function_url: bool,
        /// Price Lambda's START/REPORT lines too (the template's PlatformLogLevel=INFO; its
        /// default, WARN, leaves them out).
        #[arg(long)]
        platform_logs: bool,
        /// Price crm-sync with `[sinks.crm] receiver_dedupes = true` (the receiver drops a
        /// repeated webhook-id: pushes are not recorded, two DynamoDB writes per event).
        #[arg(long)]
        crm_receiver_dedupes: bool,
        /// Deliveries to destinations per webhook (2: every webhook to two destinations; 0.5:
        /// half of them to one), priced on top.
        #[arg(long, default_value_t = 0.0)]
        deliveries: f64,
        /// Attachments per webhook, archived by the media sink, priced on top.
        #[arg(long, default_value_t = 0.0)]
        attachments: f64,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print the counters of a local data folder.
    Stats {
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// One event: its JSON, its routes and every delivery attempt.
    Show {
        /// The event id (`evt_...`).
        id: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
    },
    /// Recent events with their delivery state, newest first.
    List {
        /// Only events from this source.
        #[arg(long)]
        source: Option<String>,
        /// Only events routed to this destination.
        #[arg(long)]
        destination: Option<String>,
        /// Only events with a delivery retrying or dead-lettered.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    bluehook::telemetry::init_local();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev {
            listen,
            data_dir,
            config,
            inspector_token,
        } => local::run_dev(DevOptions {
            listen,
            data_dir,
            config,
            default_config: PathBuf::from("bluehook.toml"),
            inspector_token: inspector_token.filter(|t| !t.is_empty()),
        })
        .await
        .map(|_| ExitCode::SUCCESS),
        Command::Send {
            sample,
            url,
            secret,
            source,
            config,
            status,
            handle,
            content,
            data_dir,
            list,
        } => {
            if list {
                for name in sample_names() {
                    println!("{name}");
                }
                return ExitCode::SUCCESS;
            }
            let target = Target {
                url,
                secret,
                source,
                config,
                data_dir,
            };
            send(
                &sample,
                target,
                SampleOptions {
                    status,
                    handle,
                    content,
                },
            )
            .await
        }
        Command::Replay {
            queue,
            destination,
            max,
            aws,
            data_dir,
        } => match (queue, destination) {
            (queue, Some(name)) => replay_destination(&name, queue, max, aws, &data_dir).await,
            (Some(queue), None) => replay(&queue, max, aws, &data_dir).await,
            (None, None) => unreachable!("clap requires one"),
        }
        .map(|_| ExitCode::SUCCESS),
        Command::Events { command } => events(command).await.map(|_| ExitCode::SUCCESS),
        Command::Cost {
            per_month,
            sinks,
            function_url,
            platform_logs,
            crm_receiver_dedupes,
            deliveries,
            attachments,
            json,
        } => bluehook::cost::parse_sinks(&sinks)
            .map(|sinks| bluehook::cost::Options {
                per_month,
                sinks,
                function_url,
                platform_logs,
                crm_receiver_dedupes,
                deliveries,
                attachments,
            })
            .and_then(|opts| opts.check().map(|_| opts))
            .map_err(anyhow::Error::msg)
            .and_then(|opts| cost(&opts, json))
            .map(|_| ExitCode::SUCCESS),
        Command::Stats { data_dir, json } => {
            stats(&data_dir, json).await.map(|_| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where and as whom `bluehook send` posts.
struct Target {
    url: Option<String>,
    secret: Option<String>,
    source: Option<String>,
    config: Option<PathBuf>,
    data_dir: PathBuf,
}

async fn send(sample: &str, target: Target, opts: SampleOptions) -> anyhow::Result<ExitCode> {
    let (provider, event) = sample.split_once('.').with_context(|| {
        format!(
            "expected <provider>.<event>; known: {}",
            sample_names().join(", ")
        )
    })?;
    let config_path = target
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("bluehook.toml")).filter(|p| p.exists()));
    let config = match &config_path {
        Some(p) => Some(Config::from_file(p)?),
        None => None,
    };
    let source_name = target.source.clone().unwrap_or_else(|| provider.to_owned());
    let configured = config.as_ref().and_then(|c| c.sources.get(&source_name));
    if let Some(c) = configured {
        anyhow::ensure!(
            c.provider == provider,
            "source `{source_name}` is a `{}` source, not `{provider}`",
            c.provider
        );
    }
    let source_config = configured.cloned().unwrap_or_else(|| SourceConfig {
        provider: provider.to_owned(),
        secrets: Vec::new(),
        sender: None,
        settings: Default::default(),
    });
    let secret = match (target.secret, configured) {
        (Some(s), _) => s,
        (None, Some(c)) => resolve_secrets(&source_name, &c.secrets, None)
            .await?
            .into_iter()
            .next()
            .map(|s| s.expose().to_owned())
            .with_context(|| format!("source `{source_name}` has no secret to sign with"))?,
        (None, None) => std::fs::read_to_string(target.data_dir.join(local::DEV_SECRET_FILE))
            .map(|s| s.trim().to_owned())
            .with_context(|| {
                format!(
                    "no --secret given, no $BLUEHOOK_SECRET, no source `{source_name}` configured, and no dev secret in {}",
                    target.data_dir.display()
                )
            })?,
    };
    let signer = provider::build(&source_name, &source_config, vec![Secret::new(secret)])?;
    let url = target
        .url
        .unwrap_or_else(|| format!("http://127.0.0.1:3000/webhooks/{source_name}"));
    let req = signer
        .sample(event, &opts, &url)
        .map_err(anyhow::Error::msg)?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut builder = client
        .post(&req.url)
        .header(reqwest::header::CONTENT_TYPE, req.content_type)
        .body(req.body);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let response = builder
        .send()
        .await
        .with_context(|| format!("cannot reach {} (is `bluehook dev` running?)", req.url))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("POST {}", req.url);
    println!("HTTP {status}");
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn replay(
    queue: &str,
    max: u64,
    aws: bool,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if aws {
        return replay_aws(queue, max).await;
    }
    anyhow::ensure!(
        local::local_queues().contains(&queue),
        "unknown local queue `{queue}` (known: {})",
        local::local_queues().join(", ")
    );
    let db = open_data(data_dir)?;
    let q = bluehook::SqliteQueue::new(db.clone(), queue, std::time::Duration::from_secs(30), 5);
    let moved = q.dead_letter_queue().move_to(queue, max).await?;
    db.flush().await?;
    println!("moved {moved} messages from {queue}-dlq back to {queue}");
    Ok(())
}

#[cfg(feature = "aws")]
async fn replay_aws(queue: &str, max: u64) -> anyhow::Result<()> {
    let conf = aws_config::load_from_env().await;
    let moved = bluehook::replay::replay_sqs(&aws_sdk_sqs::Client::new(&conf), queue, max).await?;
    println!("moved {moved} messages from the dead-letter queue of {queue} back to it");
    Ok(())
}

/// The dead-lettered deliveries to destination `name` on the deliveries queue `queue`.
#[cfg(feature = "aws")]
async fn replay_destination_aws(name: &str, queue: &str, max: u64) -> anyhow::Result<()> {
    let conf = aws_config::load_from_env().await;
    let moved =
        bluehook::replay::replay_sqs_where(&aws_sdk_sqs::Client::new(&conf), queue, max, |body| {
            serde_json::from_str::<bluehook::delivery::DeliveryMessage>(body)
                .is_ok_and(|d| d.destination == name)
        })
        .await?;
    println!("moved {moved} dead-lettered deliveries of `{name}` back to {queue}");
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn replay_destination_aws(_name: &str, queue: &str, max: u64) -> anyhow::Result<()> {
    replay_aws(queue, max).await
}

#[cfg(not(feature = "aws"))]
async fn replay_aws(_queue: &str, _max: u64) -> anyhow::Result<()> {
    anyhow::bail!(
        "this bluehook was built without the AWS SDK: build it with the `aws` feature (the default), e.g. `cargo build --profile cli --bin bluehook`"
    )
}

async fn replay_destination(
    name: &str,
    queue: Option<String>,
    max: u64,
    aws: bool,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if aws {
        let queue = queue.context(
            "with --aws, --queue names the deliveries queue (the DeliveriesQueueName output)",
        )?;
        return replay_destination_aws(name, &queue, max).await;
    }
    anyhow::ensure!(
        queue.is_none(),
        "locally, --destination replays that destination's own queue: leave out --queue"
    );
    let db = open_data(data_dir)?;
    let known = bluehook::delivery::local::known_destinations(&db).await?;
    anyhow::ensure!(
        known.iter().any(|k| k == name),
        "no destination `{name}` in {} (known: {})",
        data_dir.display(),
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    );
    let moved = bluehook::delivery::local::replay(&db, name, max).await?;
    db.flush().await?;
    println!("moved {moved} dead-lettered deliveries of `{name}` back to its queue");
    Ok(())
}

async fn events(command: EventsCommand) -> anyhow::Result<()> {
    use bluehook::delivery::local::{list_events, show_event, ListFilter};
    match command {
        EventsCommand::Show { id, json, data_dir } => {
            let db = open_data(&data_dir)?;
            let view = show_event(&db, &id)
                .await?
                .with_context(|| format!("no event `{id}` in {}", data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string(&view)?);
                return Ok(());
            }
            let e = &view.event;
            println!("event     {}", e["id"].as_str().unwrap_or(""));
            println!(
                "source    {} ({})",
                e["source"].as_str().unwrap_or(""),
                e["provider"].as_str().unwrap_or("")
            );
            println!("kind      {}", e["kind"].as_str().unwrap_or(""));
            if let Some(status) = e["status"].as_str() {
                println!("status    {status}");
            }
            println!("received  {}", e["received_at"].as_str().unwrap_or(""));
            if view.routes.is_empty() {
                println!("routes    (accepted, not routed yet)");
            } else {
                println!("routes    {}", view.routes.join(", "));
            }
            for (d, state) in &view.deliveries {
                println!("  {d:<20} {state}");
            }
            if !view.attempts.is_empty() {
                println!("attempts");
                for a in &view.attempts {
                    let outcome = match (a.status, &a.error) {
                        (Some(s), _) => format!("HTTP {s}"),
                        (None, Some(e)) => e.clone(),
                        (None, None) => "-".to_owned(),
                    };
                    println!(
                        "  {} {:<16} #{:<3} {:<12} {:>6} ms  -> {}",
                        a.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        a.destination,
                        a.attempt,
                        outcome,
                        a.duration_ms,
                        a.state
                    );
                }
            }
            if !view.media.is_empty() {
                println!("media");
                for m in &view.media {
                    let state = m["state"].as_str().unwrap_or("");
                    let mut line = format!(
                        "  #{} {:<12} {}",
                        m["n"],
                        state,
                        m["location"]
                            .as_str()
                            .unwrap_or("(named by its type once downloaded)")
                    );
                    if let Some(ct) = m["content_type"].as_str() {
                        line.push_str(&format!("  {ct}"));
                    }
                    if let Some(size) = m["size"].as_u64() {
                        line.push_str(&format!("  {size} B"));
                    }
                    if let Some(sha) = m["sha256"].as_str() {
                        line.push_str(&format!("  sha256 {sha}"));
                    }
                    if let Some(detail) = m["detail"].as_str() {
                        line.push_str(&format!("  ({detail})"));
                    }
                    println!("{line}");
                }
            }
            println!("json      {}", serde_json::to_string(&view.event)?);
        }
        EventsCommand::List {
            source,
            destination,
            failed,
            limit,
            json,
            data_dir,
        } => {
            let db = open_data(&data_dir)?;
            let list = list_events(
                &db,
                ListFilter {
                    source,
                    destination,
                    failed,
                    limit,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
                return Ok(());
            }
            for e in &list {
                let deliveries: Vec<String> = e
                    .deliveries
                    .iter()
                    .map(|(d, s)| format!("{d}={s}"))
                    .collect();
                println!(
                    "{}  {}  {:<14} {:<16} {}",
                    e.received_at,
                    e.id,
                    e.source,
                    e.kind,
                    deliveries.join(" ")
                );
            }
        }
    }
    Ok(())
}

fn open_data(data_dir: &std::path::Path) -> anyhow::Result<bluehook::sqlite::Db> {
    let path = local::db_path(data_dir);
    anyhow::ensure!(
        path.exists(),
        "no bluehook data in {} (start `bluehook dev` first, or pass --data-dir)",
        data_dir.display()
    );
    Ok(bluehook::sqlite::Db::open(&path)?)
}

async fn stats(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let db = open_data(data_dir)?;
    let stats = Stats::load(&db, &local::local_queues()).await?;
    let archive = data_dir.join(local::ANALYTICS_DIR);
    let summary = tokio::task::spawn_blocking(move || {
        analytics::summarise(&analytics::read_archive(&archive))
    })
    .await?;
    let names = bluehook::delivery::local::known_destinations(&db).await?;
    let destinations = bluehook::delivery::local::destination_stats(&db, names).await?;
    if json {
        let mut v = serde_json::to_value(&stats)?;
        v["analytics"] = serde_json::to_value(&summary)?;
        v["destinations"] = serde_json::to_value(&destinations)?;
        println!("{v}");
        return Ok(());
    }
    println!("received       {}", stats.received);
    println!("accepted       {}", stats.accepted);
    println!("duplicates     {}", stats.duplicates);
    println!("rejected       {}", stats.rejected.values().sum::<u64>());
    for (code, n) in stats.rejected.iter().filter(|(_, n)| **n > 0) {
        println!("  {code:<20} {n}");
    }
    for (reason, n) in &stats.auth_failures {
        println!("  auth: {reason:<14} {n}");
    }
    println!("pings          {}", stats.pings);
    println!("queued         {}", stats.queued);
    println!("processed      {}", stats.processed);
    println!("dead-lettered  {}", stats.dead_lettered);
    for (q, s) in &stats.queues {
        println!(
            "  queue {q:<14} queued {:<6} processed {:<8} dead-lettered {}",
            s.queued, s.processed, s.dead_lettered
        );
    }
    for (d, n) in &stats.routed {
        println!("  routed to {d:<12} {n}");
    }
    for (d, n) in &stats.skipped {
        println!("  skipped {d:<14} {n}  (sink not configured)");
    }
    for (d, s) in &destinations {
        println!(
            "  destination {d:<12} delivered {:<6} retrying {:<4} queued {:<4} dead-lettered {:<4} attempts {}",
            s.delivered, s.retrying, s.queued, s.dead_lettered, s.attempts
        );
    }
    let line = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("replies        {}", line(&stats.replies));
    println!("follow-ups     {}", line(&stats.followups));
    println!("alerts         {}", line(&stats.alerts));
    println!("media          {}", line(&stats.media));
    let pct = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    println!("analytics      {} events archived", summary.events);
    println!(
        "  delivery rate  {} ({} of {} sent)",
        pct(summary.delivery_rate),
        summary.messages_delivered,
        summary.messages_sent
    );
    println!(
        "  read rate      {} ({} of {} delivered)",
        pct(summary.read_rate),
        summary.messages_read,
        summary.messages_delivered
    );
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
    println!(
        "  median response time   {}",
        secs(summary.median_response_secs)
    );
    println!(
        "  median delivery time   {}",
        secs(summary.median_delivery_secs)
    );
    println!(
        "  median read time       {}",
        secs(summary.median_read_secs)
    );
    Ok(())
}

fn cost(opts: &bluehook::cost::Options, json: bool) -> anyhow::Result<()> {
    let estimate = bluehook::cost::estimate(opts);
    if json {
        println!("{}", serde_json::to_string_pretty(&estimate)?);
    } else {
        print!("{}", estimate.render());
    }
    Ok(())
}
