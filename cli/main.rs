//! The `bluehook` command: `dev` runs the local pipeline, `send` posts a signed sample webhook,
//! `stats` prints the counters of a data folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bluehook::config::Secret;
use bluehook::local::{self, DevOptions, EVENTS_QUEUE};
use bluehook::metrics::Stats;
use bluehook::provider::{sample_names, sample_request, SampleOptions};
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
    },
    /// Post a correctly signed sample webhook and print the answer.
    Send {
        /// `<provider>.<event>`, e.g. `sendblue.receive`, `sendblue.outbound`.
        sample: String,
        /// Where to post. A URL ending in `/webhooks/<source>` gets the event's type appended
        /// (`/webhooks/sendblue/outbound`).
        #[arg(long)]
        url: Option<String>,
        /// The signing secret [default: $BLUEHOOK_SECRET, else the dev secret in --data-dir].
        #[arg(long, env = "BLUEHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
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
    /// Print the counters of a local data folder.
    Stats {
        #[arg(long, default_value = "./.bluehook")]
        data_dir: PathBuf,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
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
        } => local::run_dev(DevOptions {
            listen,
            data_dir,
            config,
            default_config: PathBuf::from("bluehook.toml"),
        })
        .await
        .map(|_| ExitCode::SUCCESS),
        Command::Send {
            sample,
            url,
            secret,
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
            send(
                &sample,
                url,
                secret,
                SampleOptions {
                    status,
                    handle,
                    content,
                },
                &data_dir,
            )
            .await
        }
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

async fn send(
    sample: &str,
    url: Option<String>,
    secret: Option<String>,
    opts: SampleOptions,
    data_dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let (provider, event) = sample.split_once('.').with_context(|| {
        format!(
            "expected <provider>.<event>; known: {}",
            sample_names().join(", ")
        )
    })?;
    let secret = match secret {
        Some(s) => s,
        None => std::fs::read_to_string(data_dir.join(local::DEV_SECRET_FILE))
            .map(|s| s.trim().to_owned())
            .with_context(|| {
                format!(
                    "no --secret given, no $BLUEHOOK_SECRET, and no dev secret in {}",
                    data_dir.display()
                )
            })?,
    };
    let req =
        sample_request(provider, event, &opts, &Secret::new(secret)).map_err(anyhow::Error::msg)?;
    let base = url.unwrap_or_else(|| format!("http://127.0.0.1:3000/webhooks/{provider}"));
    let url = match &req.path_suffix {
        Some(suffix) if ends_with_source(&base) => {
            format!("{}{suffix}", base.trim_end_matches('/'))
        }
        _ => base,
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut builder = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, req.content_type)
        .body(req.body);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let response = builder
        .send()
        .await
        .with_context(|| format!("cannot reach {url} (is `bluehook dev` running?)"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("POST {url}");
    println!("HTTP {status}");
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// True for `.../webhooks/<source>` (one segment after `webhooks`).
fn ends_with_source(url: &str) -> bool {
    let path = url.split('?').next().unwrap_or(url).trim_end_matches('/');
    let mut segments = path.rsplit('/');
    let _source = segments.next();
    segments.next() == Some("webhooks")
}

async fn stats(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let path = local::db_path(data_dir);
    anyhow::ensure!(
        path.exists(),
        "no bluehook data in {} (start `bluehook dev` first, or pass --data-dir)",
        data_dir.display()
    );
    let db = bluehook::sqlite::Db::open(&path)?;
    let stats = Stats::load(&db, &[EVENTS_QUEUE]).await?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
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
    println!("queued         {}", stats.queued);
    println!("processed      {}", stats.processed);
    println!("dead-lettered  {}", stats.dead_lettered);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_urls_get_the_type_appended() {
        assert!(super::ends_with_source(
            "http://127.0.0.1:3000/webhooks/sendblue"
        ));
        assert!(super::ends_with_source("http://h/webhooks/sb/"));
        assert!(!super::ends_with_source("http://h/webhooks/sb/outbound"));
        assert!(!super::ends_with_source("http://h/hooks"));
    }
}
