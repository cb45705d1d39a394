//! `bluehook dev`: the whole pipeline in one process on the embedded SQLite database.

pub mod event_log;
pub mod inspector;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::collections::BTreeMap;

use crate::analytics::Analytics;
use crate::config::{needs_ssm, Config, SourceConfig};
use crate::delivery::local::{run_worker, Stage};
use crate::delivery::{Deliver, Deliverer, Format, RetryPolicy};
use crate::idempotency::sqlite::SqliteIdempotency;
use crate::idempotency::IdempotencyStore;
use crate::ingress::{build_sources, Ingress};
use crate::metrics::SqliteCounters;
use crate::objects::LocalDir;
use crate::queue::Queue;
use crate::queue::SqliteQueue;
use crate::router::Router;
use crate::routing::{Destination, Routes};
use crate::sinks::crm::{CrmAdapter, CrmSync};
use crate::sinks::sms::SmsFallback;
use crate::sinks::Outbox;
use crate::sqlite::Db;
use crate::state::sqlite::SqliteState;
use crate::state::StateStore;

/// The local events queue (and `events-dlq`, its dead-letter queue).
pub const EVENTS_QUEUE: &str = "events";
pub const DB_FILE: &str = "bluehook.db";
/// The local analytics archive, under the data folder.
pub const ANALYTICS_DIR: &str = "analytics";

/// Every local queue (each has a `-dlq`).
pub fn local_queues() -> Vec<&'static str> {
    std::iter::once(EVENTS_QUEUE)
        .chain(Destination::ALL.iter().map(|d| d.queue_name()))
        .chain(std::iter::once(crate::sinks::reply::QUEUE))
        .collect()
}
/// Deliveries under way at once to one destination.
const DELIVERY_CONCURRENCY: usize = 32;

/// Where `bluehook dev` keeps the secret it made up when there is no config file.
pub const DEV_SECRET_FILE: &str = "dev-secret";
/// The source served when there is no config file.
pub const DEFAULT_SOURCE: &str = "sendblue";

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `None`: use `./bluehook.toml` if it exists, else the built-in default.
    pub config: Option<PathBuf>,
    pub default_config: PathBuf,
    /// `--inspector-token`: the inspector on any listen address, for requests that carry it.
    pub inspector_token: Option<String>,
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// The dev secret kept in the data folder, made on first use.
pub fn dev_secret(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(DEV_SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("dev_{}", hex::encode(bytes));
    write_private(&path, &secret)?;
    Ok(secret)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    opts.open(path)?.write_all(contents.as_bytes())
}

/// Reads the config the options point at. The second value is the made-up dev secret when
/// the built-in default is used.
pub fn load_config(opts: &DevOptions) -> anyhow::Result<(Config, Option<String>, Option<PathBuf>)> {
    let path = match &opts.config {
        Some(p) => Some(p.clone()),
        None if opts.default_config.exists() => Some(opts.default_config.clone()),
        None => None,
    };
    if let Some(path) = path {
        let config = Config::from_file(&path)?;
        return Ok((config, None, Some(path)));
    }
    let secret = dev_secret(&opts.data_dir)?;
    let mut config = Config::default();
    config.sources.insert(
        DEFAULT_SOURCE.to_owned(),
        SourceConfig {
            provider: "sendblue".into(),
            secrets: vec![secret.clone()],
            sender: None,
            settings: toml::Table::new(),
        },
    );
    Ok((config, Some(secret), None))
}

/// Runs `bluehook dev` until Ctrl-C or SIGTERM.
pub async fn run_dev(opts: DevOptions) -> anyhow::Result<()> {
    let (config, dev_secret, config_path) = load_config(&opts)?;
    std::fs::create_dir_all(&opts.data_dir)?;
    let db = Db::open(&db_path(&opts.data_dir))?;

    let ssm = ssm_client(&config).await?;
    let sources = build_sources(&config, ssm.as_ref().map(|c| c as _)).await?;
    let mut signers: Vec<(String, Arc<dyn crate::provider::Provider>)> = sources
        .iter()
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    signers.sort_by(|a, b| a.0.cmp(&b.0));
    // A source's own signature header (an HMAC source names it) is redacted like the usual ones.
    let secret_headers: Vec<String> = config
        .sources
        .values()
        .filter_map(|s| {
            s.settings
                .get("header")?
                .as_str()
                .map(str::to_ascii_lowercase)
        })
        .collect();
    let metrics = Arc::new(SqliteCounters::new(db.clone()));
    let idempotency = SqliteIdempotency::new(db.clone());
    let queue = SqliteQueue::new(
        db.clone(),
        EVENTS_QUEUE,
        Duration::from_secs(config.queue.visibility_timeout_secs),
        config.queue.max_receive_count,
    );
    // This process is the queue's only consumer: whatever a previous run had in flight when it
    // stopped goes back to the queue now.
    let recovered = queue.recover_in_flight().await?;
    if recovered > 0 {
        tracing::info!(
            messages = recovered,
            "re-queued messages in flight at the last stop"
        );
    }
    let ingress = Arc::new(
        Ingress::new(
            sources,
            Arc::new(idempotency.clone()),
            Arc::new(queue.clone()),
            metrics.clone(),
            config.ingress.clone(),
        )
        .with_atomic_accept(Arc::new(queue.clone())),
    );
    let log = event_log::EventLog::open(&opts.data_dir)?;

    // Sinks: with the built-in default config all three are on (CRM and SMS into the outbox
    // table); with a config file, each sink whose [sinks.<name>] section exists.
    let ssm_ref = ssm.as_ref().map(|c| c as &dyn crate::config::SsmReader);
    let destinations = crate::destinations::from_config(&config.destinations, ssm_ref).await?;
    let names: Vec<String> = destinations.keys().cloned().collect();
    let routes = Routes::from_config_with(&config.routes, &names)?;
    let unrouted: Vec<&str> = names
        .iter()
        .filter(|n| !routes.named().contains(n))
        .map(String::as_str)
        .collect();
    for name in config.sinks.keys() {
        if Destination::parse(name).is_none() {
            anyhow::bail!(
                "unknown sink `[sinks.{name}]` (known: crm, sms_fallback, analytics, media)"
            );
        }
    }
    let local_queue = |d: Destination| {
        SqliteQueue::new(
            db.clone(),
            d.queue_name(),
            Duration::from_secs(config.queue.visibility_timeout_secs),
            config.queue.max_receive_count,
        )
    };
    let empty = toml::Value::Table(toml::Table::new());
    let sink_section = |d: Destination| match (&dev_secret, config.sinks.get(d.as_str())) {
        (_, Some(v)) => Some(v.clone()),
        (Some(_), None) => Some(empty.clone()),
        (None, None) => None,
    };
    let outbox = Outbox::new(db.clone());
    let senders =
        crate::sinks::sms::senders_from_config(&config.senders, Some(outbox.clone()), ssm_ref)
            .await?;
    let state: Arc<dyn StateStore> = Arc::new(SqliteState::new(db.clone()));
    let effects: Arc<dyn IdempotencyStore> = Arc::new(idempotency.clone());
    // A sink retries like its queue on AWS: after the visibility timeout, dead-lettered after
    // the maximum receives.
    let visibility = Duration::from_secs(config.queue.visibility_timeout_secs);
    let sink_retry = RetryPolicy {
        max_attempts: config.queue.max_receive_count,
        first_delay: visibility,
        max_delay: visibility,
    };
    let engine = |target: Arc<dyn Deliver>, concurrency: usize| Stage::Each {
        target,
        format: Format::Event,
        concurrency,
    };
    let mut stages: Vec<(Destination, Stage)> = Vec::new();
    // The media archive: attachments under <data-dir>/media/, each file's result in SQLite.
    let media_root = match sink_section(Destination::Media) {
        Some(v) => {
            let settings = crate::sinks::media::MediaSettings::from_config(&v, false)?;
            let auth = crate::sinks::media::media_auth_from_config(&config, ssm_ref).await?;
            let store = Arc::new(crate::sinks::media::LocalMediaStore::new(
                opts.data_dir.clone(),
                db.clone(),
            ));
            let media = crate::sinks::media::MediaArchive::new(
                store,
                settings,
                auth,
                metrics.clone(),
                sink_retry,
            );
            let root = media.root();
            stages.push((
                Destination::Media,
                engine(
                    Arc::new(Deliverer::new(media, effects.clone(), metrics.clone())),
                    4,
                ),
            ));
            Some(root)
        }
        None => None,
    };
    if let Some(v) = sink_section(Destination::Crm) {
        let adapter = CrmAdapter::from_config(&v, Some(outbox.clone()), ssm_ref).await?;
        let crm = CrmSync::new(state.clone(), adapter, metrics.clone(), sink_retry)
            .with_media_archive(media_root.clone());
        stages.push((
            Destination::Crm,
            // Locally batches need not stop at SQS's ten: fewer, larger transactions.
            engine(
                Arc::new(Deliverer::new(crm, effects.clone(), metrics.clone())),
                64,
            ),
        ));
    }
    if let Some(v) = sink_section(Destination::SmsFallback) {
        let sender =
            crate::sinks::sms::fallback_sender(&v, &senders, Some(outbox.clone()), ssm_ref).await?;
        let sms = SmsFallback::new(Some(state.clone()), sender, metrics.clone(), sink_retry);
        stages.push((
            Destination::SmsFallback,
            engine(
                Arc::new(Deliverer::new(sms, effects.clone(), metrics.clone())),
                10,
            ),
        ));
    }
    if sink_section(Destination::Analytics).is_some() {
        let store = Arc::new(LocalDir::new(opts.data_dir.join(ANALYTICS_DIR)));
        stages.push((
            Destination::Analytics,
            Stage::Batch {
                processor: Arc::new(
                    Analytics::new(store, metrics.clone(), false)
                        .with_media_archive(media_root.clone()),
                ),
                // Each archive object is fsynced: write few, large ones.
                batch: 500,
            },
        ));
    }
    // Bot replies: through the sender of the source the contact wrote to.
    let reply_senders = crate::sinks::reply::senders_by_source(&config, &senders);
    let replies_queue = SqliteQueue::new(
        db.clone(),
        crate::sinks::reply::QUEUE,
        visibility,
        config.queue.max_receive_count,
    );
    replies_queue.recover_in_flight().await?;
    let replies = engine(
        Arc::new(Deliverer::new(
            crate::sinks::reply::Replies::new(reply_senders.clone(), metrics.clone(), sink_retry),
            effects.clone(),
            metrics.clone(),
        )),
        10,
    );
    let mut sink_queues: BTreeMap<Destination, Arc<dyn Queue>> = BTreeMap::new();
    for (d, _) in &stages {
        sink_queues.insert(*d, Arc::new(local_queue(*d)));
    }
    for d in Destination::ALL {
        local_queue(d).recover_in_flight().await?;
    }
    // CRM pushes and deliveries a previous run left half-done may be repeated (the receivers
    // dedupe by webhook-id); fallback SMS claims are kept: an SMS of unknown outcome is never
    // resent.
    idempotency.release_in_progress("effect:crm:").await?;
    // A download cut off by the stop is done again (storing a file again changes nothing).
    idempotency.release_in_progress("effect:media:").await?;
    idempotency
        .release_in_progress("effect:destination:")
        .await?;
    // Destinations: a queue and a worker each, so that one slow or failing destination delays
    // no other (nor the acks).
    let mut endpoints: BTreeMap<String, Arc<dyn Queue>> = BTreeMap::new();
    let mut origins = Vec::new();
    let mut deliverers = Vec::new();
    let mut destination_queues = BTreeMap::new();
    for (name, d) in destinations {
        let q = SqliteQueue::new(
            db.clone(),
            &crate::delivery::local::queue_name(&name),
            // Only a crash leaves a delivery in flight: it is handed out again after this.
            d.timeout + Duration::from_secs(30),
            // The engine dead-letters after `max_attempts`; this is the backstop.
            d.retry.max_attempts + 1,
        );
        q.recover_in_flight().await?;
        endpoints.insert(name.clone(), Arc::new(q.clone()));
        destination_queues.insert(name.clone(), q.clone());
        origins.push((name, d.origin()));
        deliverers.push((
            q,
            Stage::Each {
                target: Arc::new(Deliverer::new(d, effects.clone(), metrics.clone())),
                format: Format::Envelope,
                concurrency: DELIVERY_CONCURRENCY,
            },
        ));
    }
    let router = Router::new(routes, sink_queues, metrics.clone()).with_endpoints(endpoints);
    let followup_rules = crate::followups::rules_from_config(&config.followups, &names)?;
    let alert_rules = crate::alerts::rules_from_config(&config.alerts, ssm_ref).await?;
    let alerts_from = crate::alerts::start_local(&db).await?;
    let followups = crate::followups::Followups {
        db: db.clone(),
        rules: followup_rules.clone(),
        senders: reply_senders.clone(),
        metrics: metrics.clone(),
    };
    let interrupted = followups.recover().await?;
    if interrupted > 0 {
        tracing::warn!(
            followups = interrupted,
            "follow-ups interrupted while sending at the last stop are not repeated (state `unknown`)"
        );
    }

    let listener = TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let sinks: Vec<&str> = stages.iter().map(|(d, _)| d.as_str()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let access = inspector::Access::decide(addr, opts.inspector_token.clone());
    let inspector = inspector::Inspector::start(inspector::InspectorParts {
        db: db.clone(),
        access: access.clone(),
        listen: addr,
        sources: signers,
        secret_headers,
        destinations: destination_queues,
        queues: local_queues().into_iter().map(str::to_owned).collect(),
        analytics_dir: opts.data_dir.join(ANALYTICS_DIR),
        shutdown: stop_rx.clone(),
    });
    print_banner(
        addr,
        &opts,
        &ingress,
        config_path.as_deref(),
        dev_secret.as_deref(),
        &sinks,
        &access,
    );
    for (name, origin) in &origins {
        println!("  destination: {name} -> {origin}");
    }
    for name in unrouted {
        println!("  warning:     destination `{name}` is named by no [[routes]] rule: nothing goes to it");
    }

    // The server stops first; the workers then drain what it queued, the router first.
    let (stop_workers_tx, stop_workers_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, ingress, inspector, stop_rx.clone()));
    let mut workers = vec![tokio::spawn(run_worker(
        queue,
        Stage::Batch {
            processor: Arc::new(
                event_log::LoggingRouter::new(log, router)
                    .with_index(db.clone())
                    .with_followups(followup_rules),
            ),
            batch: 64,
        },
        stop_workers_rx.clone(),
    ))];
    for (q, stage) in deliverers {
        workers.push(tokio::spawn(run_worker(q, stage, stop_workers_rx.clone())));
    }
    workers.push(tokio::spawn(followups.run(stop_workers_rx.clone())));
    workers.push(tokio::spawn(crate::alerts::run_local(
        db.clone(),
        alert_rules,
        alerts_from,
        metrics.clone(),
        stop_workers_rx.clone(),
    )));
    workers.push(tokio::spawn(run_worker(
        replies_queue,
        replies,
        stop_workers_rx.clone(),
    )));
    for (d, stage) in stages {
        workers.push(tokio::spawn(run_worker(
            local_queue(d),
            stage,
            stop_workers_rx.clone(),
        )));
    }
    let purge = tokio::spawn(purge_expired_keys(idempotency, db.clone(), stop_rx));

    wait_for_signal().await;
    tracing::info!("stopping: finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = stop_workers_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let _ = purge.await;
    db.flush().await?;
    println!("bluehook dev stopped cleanly");
    Ok(())
}

/// An SSM client when the configuration has `ssm:` references.
#[cfg(feature = "aws")]
async fn ssm_client(config: &Config) -> anyhow::Result<Option<aws_sdk_ssm::Client>> {
    if !needs_ssm(config) {
        return Ok(None);
    }
    let aws = aws_config::load_from_env().await;
    Ok(Some(aws_sdk_ssm::Client::new(&aws)))
}

/// Without the AWS SDK, an `ssm:` reference cannot be read: say how to get it.
#[cfg(not(feature = "aws"))]
async fn ssm_client(config: &Config) -> anyhow::Result<Option<NoSsm>> {
    anyhow::ensure!(
        !needs_ssm(config),
        "the config has `ssm:` references, and this bluehook was built without the AWS SDK: \
         build it with the `aws` feature (the default), e.g. `cargo run --profile cli --bin bluehook -- dev`"
    );
    Ok(None)
}

/// Stands in for the SSM client in a build without the AWS SDK; never constructed.
#[cfg(not(feature = "aws"))]
enum NoSsm {}

#[cfg(not(feature = "aws"))]
#[async_trait::async_trait]
impl crate::config::SsmReader for NoSsm {
    async fn get_secure(&self, _: &str) -> Result<String, String> {
        match *self {}
    }
}

fn print_banner(
    addr: SocketAddr,
    opts: &DevOptions,
    ingress: &Ingress,
    config_path: Option<&Path>,
    dev_secret: Option<&str>,
    sinks: &[&str],
    access: &inspector::Access,
) {
    let log_path = opts.data_dir.join(event_log::FILE_NAME);
    let base = format!("http://{addr}");
    println!("bluehook dev listening on {base}");
    match access {
        inspector::Access::Loopback => println!("  inspector:   {base}/"),
        inspector::Access::Token(_) => {
            println!("  inspector:   {base}/  (every request needs `Authorization: Bearer <token>`)")
        }
        inspector::Access::Off => println!(
            "  inspector:   off (the listen address is not loopback; --inspector-token T turns it on)"
        ),
    }
    println!("  data folder: {}", opts.data_dir.display());
    println!("  event log:   {}", log_path.display());
    if sinks.is_empty() {
        println!("  sinks:       none configured (events go to the event log only)");
    } else {
        println!("  sinks:       {}", sinks.join(", "));
    }
    match config_path {
        Some(p) => println!("  config:      {}", p.display()),
        None => println!(
            "  config:      none found ({}); using the built-in default",
            opts.default_config.display()
        ),
    }
    let mut names: Vec<&str> = ingress.source_names().collect();
    names.sort_unstable();
    for name in names {
        println!("  source:      POST {base}/webhooks/{name}");
    }
    if let Some(secret) = dev_secret {
        println!(
            "  dev secret:  {secret}  (source `{DEFAULT_SOURCE}`, kept in {})",
            opts.data_dir.join(DEV_SECRET_FILE).display()
        );
        println!();
        println!("Try it:");
        println!("  bluehook send sendblue.receive --url {base}/webhooks/{DEFAULT_SOURCE} --secret {secret}");
    }
    println!("Press Ctrl-C to stop.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Every ten minutes: expired idempotency keys go, and the records `bluehook events` reads keep
/// only their newest rows.
async fn purge_expired_keys(store: SqliteIdempotency, db: Db, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.changed() => return,
        }
        let now = chrono::Utc::now().timestamp();
        match store.purge_expired(now).await {
            Ok(n) if n > 0 => tracing::info!(keys = n, "purged expired idempotency keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging expired keys failed"),
        }
        if let Err(e) = crate::delivery::local::prune(&db).await {
            tracing::warn!(error = %e, "pruning the events index failed");
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
