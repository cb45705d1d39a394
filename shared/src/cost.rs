//! What webhooks cost on AWS (`bluehook cost`): the AWS requests each function makes per
//! webhook, as `scripts/bench-aws.sh` measured them (docs/cost.md), at AWS's list prices, next
//! to the floor: the fewest requests the same guarantees need.
//!
//! The workload behind the counts: unique Sendblue webhooks, 40% inbound messages, 30% outbound
//! SENT, 28% their DELIVERED, 2% failed outbound iMessages (the SMS fallback sends those); none
//! with an attachment; functions at 128 MB on arm64; SQS batches as the template sets them, the
//! router's sends to the sinks packed (`queue::pack`).

use serde::Serialize;

/// AWS list prices, us-east-1, USD (public price pages, 2025), without free tiers.
pub mod price {
    /// HTTP API, per million requests (first 300 million a month).
    pub const HTTP_API_PER_M: f64 = 1.00;
    /// Lambda, per million requests.
    pub const LAMBDA_REQUESTS_PER_M: f64 = 0.20;
    /// Lambda duration per GB-second, arm64.
    pub const LAMBDA_GB_S_ARM: f64 = 0.000_013_333_4;
    /// SQS standard queue, per million requests.
    pub const SQS_PER_M: f64 = 0.40;
    /// DynamoDB on demand, per million write request units (items under 1 KB: one each).
    pub const DDB_WRITE_PER_M: f64 = 0.625;
    /// S3 Standard PUT, per million.
    pub const S3_PUT_PER_M: f64 = 5.00;
    /// S3 Standard GET and HEAD, per million.
    pub const S3_READ_PER_M: f64 = 0.40;
    /// CloudWatch Logs ingestion, per GB.
    pub const LOGS_PER_GB: f64 = 0.50;
}

/// Lambda's START, END and REPORT lines per invocation, in bytes: written only when the
/// template's `PlatformLogLevel` is INFO or DEBUG (its default, WARN, leaves them out).
const PLATFORM_LOG_BYTES: f64 = 350.0;
const MEMORY_GB: f64 = 128.0 / 1024.0;

/// The sinks `--sinks` can name.
pub const SINKS: &[&str] = &["crm", "sms_fallback", "analytics", "media"];

/// One function's share of a webhook: measured, and the floor.
#[derive(Debug, Clone, Copy)]
struct Share {
    function: &'static str,
    /// Invocations per webhook (a batch is one invocation).
    invocations: f64,
    /// Billed milliseconds per invocation (the measured median, rounded up).
    billed_ms: f64,
    /// SQS requests per webhook: sends, and the event source mapping's receive and delete
    /// per batch.
    sqs: f64,
    sqs_floor: f64,
    /// DynamoDB writes per webhook.
    ddb_writes: f64,
    ddb_writes_floor: f64,
    s3_puts: f64,
    s3_reads: f64,
}

impl Share {
    /// `n` of these per webhook (the duration per invocation stays).
    fn times(self, n: f64) -> Share {
        Share {
            invocations: self.invocations * n,
            sqs: self.sqs * n,
            sqs_floor: self.sqs_floor * n,
            ddb_writes: self.ddb_writes * n,
            ddb_writes_floor: self.ddb_writes_floor * n,
            s3_puts: self.s3_puts * n,
            s3_reads: self.s3_reads * n,
            ..self
        }
    }
}

/// Per webhook, from `scripts/bench-aws.sh 1000` (docs/cost.md). SQS requests as billed: each
/// 64 KiB of a request's payload is one request.
const INGRESS: Share = Share {
    function: "ingress",
    invocations: 1.0,
    billed_ms: 26.0,
    // SendMessage.
    sqs: 1.0,
    sqs_floor: 1.0,
    // Claim (PutItem) and completion (UpdateItem): the idempotency protocol's two steps.
    ddb_writes: 2.0,
    ddb_writes_floor: 2.0,
    s3_puts: 0.0,
    s3_reads: 0.0,
};
/// Batches of 100 events (one a second at most while traffic is light); its sends are per sink
/// below. The event source mapping's ReceiveMessage per ten events and DeleteMessageBatch per
/// ten.
const ROUTER: Share = Share {
    function: "router",
    invocations: 0.01,
    billed_ms: 1311.0,
    sqs: 0.2,
    sqs_floor: 0.2,
    ddb_writes: 0.0,
    ddb_writes_floor: 0.0,
    s3_puts: 0.0,
    s3_reads: 0.0,
};
/// crm-sync takes every message event (all of this workload) in packs of at most 32 events
/// (60 KiB), one pack per invocation. Per event, pushed to the `http` adapter: the message
/// state (one conditional UpdateItem, which is the push's claim), the conversation (one when
/// the event is in order), the push recorded done on the message's item. Floor: the same three; two would
/// mean not recording the push, so that a redelivered event is pushed again (for the receiver
/// to drop by its `webhook-id`).
const CRM: Share = Share {
    function: "crm-sync",
    invocations: 0.04,
    billed_ms: 863.0,
    // The router's SendMessageBatch of the packs (billed by 64 KiB), and the mapping's
    // receives (by 64 KiB) and deletes.
    sqs: 0.03 + 0.064,
    sqs_floor: 0.03 + 0.064,
    ddb_writes: CRM_WRITES_PER_EVENT,
    ddb_writes_floor: 3.0,
    s3_puts: 0.0,
    s3_reads: 0.0,
};
/// Measured DynamoDB writes per crm-sync event (`scripts/bench-aws.sh`).
pub const CRM_WRITES_PER_EVENT: f64 = 3.0;
/// With `receiver_dedupes = true`: the message state and the conversation (`tests/aws_sinks.rs`
/// counts them); the floor of that guarantee too.
pub const CRM_WRITES_PER_EVENT_RECEIVER_DEDUPES: f64 = 2.0;
/// sms-fallback: 2% of webhooks are failed iMessages, packed by the router (one send per router
/// batch) and taken in batches of ten; each SMS is sent once (claim + completion).
const SMS: Share = Share {
    function: "sms-fallback",
    invocations: 0.001,
    billed_ms: 214.0,
    sqs: 0.01 + 0.002,
    sqs_floor: 0.01 + 0.002,
    ddb_writes: 0.04,
    ddb_writes_floor: 0.04,
    s3_puts: 0.0,
    s3_reads: 0.0,
};
/// analytics: batches of up to 100 packs, one S3 object per hour of events in each (one
/// invocation per 1,000 webhooks here; fewer at volume).
const ANALYTICS: Share = Share {
    function: "analytics",
    invocations: 0.001,
    billed_ms: 43.0,
    sqs: 0.03 + 0.028,
    sqs_floor: 0.03 + 0.028,
    ddb_writes: 0.0,
    ddb_writes_floor: 0.0,
    s3_puts: 0.001,
    s3_reads: 0.0,
};
/// media: only events with an attachment reach its queue (none in this workload; priced per
/// attachment with `--attachments`, below).
const MEDIA: Share = Share {
    function: "media",
    invocations: 0.0,
    billed_ms: 0.0,
    sqs: 0.0,
    sqs_floor: 0.0,
    ddb_writes: 0.0,
    ddb_writes_floor: 0.0,
    s3_puts: 0.0,
    s3_reads: 0.0,
};

/// One delivery to a destination (`scripts/bench-aws.sh`: every message event to one
/// destination, 1,000 deliveries): the router's SendMessageBatch (0.1: ten envelopes a
/// batch, not packed, each delivery has its own backoff), the mapping's receive and delete per
/// batch of ten (0.2), a tenth of an invocation (median 93.1 ms), and the delivery's effect key
/// claimed before the request and completed after it. The floor is the same: without the
/// completion a redelivered message would be posted again.
const DELIVERY: Share = Share {
    function: "deliver",
    invocations: 0.1,
    billed_ms: 94.0,
    sqs: 0.1 + 0.2,
    sqs_floor: 0.1 + 0.2,
    ddb_writes: 2.0,
    ddb_writes_floor: 2.0,
    s3_puts: 0.0,
    s3_reads: 0.0,
};

/// One archived attachment (`scripts/bench-aws.sh`: 20 pictures of 20 KB): the router's send
/// (0.5) and the mapping's receive and delete (1.1; batches of one), one invocation (median
/// 20.4 ms), the effect key's claim and completion, an S3 HEAD (already stored?) and one PUT
/// (under 8 MiB; multipart above).
const ATTACHMENT: Share = Share {
    function: "media",
    invocations: 1.0,
    billed_ms: 21.0,
    sqs: 0.5 + 1.1,
    sqs_floor: 0.5 + 1.1,
    ddb_writes: 2.0,
    ddb_writes_floor: 2.0,
    s3_puts: 1.0,
    s3_reads: 1.0,
};

/// What `bluehook cost` is asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub per_month: u64,
    /// Sinks on (names from [`SINKS`]).
    pub sinks: Vec<String>,
    /// Behind a Lambda function URL instead of the HTTP API.
    pub function_url: bool,
    /// Lambda's own START/REPORT lines kept (`PlatformLogLevel=INFO`).
    pub platform_logs: bool,
    /// `[sinks.crm] receiver_dedupes = true`: pushes not recorded done (two writes per event).
    pub crm_receiver_dedupes: bool,
    /// Deliveries to destinations per webhook (2: every webhook to two destinations).
    pub deliveries: f64,
    /// Attachments per webhook, archived by the media sink.
    pub attachments: f64,
}

impl Options {
    /// The deliveries and attachments are counts, and attachments need the media sink.
    pub fn check(&self) -> Result<(), String> {
        for (flag, n) in [
            ("--deliveries", self.deliveries),
            ("--attachments", self.attachments),
        ] {
            if !(n.is_finite() && n >= 0.0) {
                return Err(format!(
                    "{flag} is a count per webhook, 0 or more (got {n})"
                ));
            }
        }
        if self.attachments > 0.0 && !self.sinks.iter().any(|s| s == "media") {
            return Err("--attachments are archived by the media sink: add it to --sinks".into());
        }
        Ok(())
    }
}

/// One line of the bill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    pub item: String,
    /// Per webhook.
    pub quantity: f64,
    pub floor_quantity: f64,
    pub usd_per_million: f64,
    pub floor_usd_per_million: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    pub per_month: u64,
    pub sinks: Vec<String>,
    pub front: &'static str,
    pub functions: Vec<&'static str>,
    pub lines: Vec<Line>,
    pub usd_per_million: f64,
    pub floor_usd_per_million: f64,
    pub usd_per_month: f64,
    pub floor_usd_per_month: f64,
    /// The budget per million webhooks with every sink on: $3.50 behind a function URL, $4.50
    /// behind the HTTP API.
    pub budget_per_million: f64,
    /// Lambda's START/REPORT lines priced (`PlatformLogLevel=INFO`).
    pub platform_logs: bool,
    /// crm-sync priced with `receiver_dedupes = true`.
    pub crm_receiver_dedupes: bool,
    /// Deliveries to destinations per webhook.
    pub deliveries_per_webhook: f64,
    /// Attachments archived per webhook.
    pub attachments_per_webhook: f64,
}

/// The sinks named in `--sinks` (comma-separated; `all`, `none`), checked.
pub fn parse_sinks(arg: &str) -> Result<Vec<String>, String> {
    match arg.trim() {
        "all" => return Ok(SINKS.iter().map(|s| s.to_string()).collect()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut sinks = Vec::new();
    for name in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let name = name.replace('-', "_");
        if !SINKS.contains(&name.as_str()) {
            return Err(format!(
                "unknown sink `{name}` (one of: {}, or all, none)",
                SINKS.join(", ")
            ));
        }
        if !sinks.contains(&name) {
            sinks.push(name);
        }
    }
    Ok(sinks)
}

pub fn estimate(opts: &Options) -> Estimate {
    let mut shares = vec![INGRESS];
    let on = |s: &str| opts.sinks.iter().any(|x| x == s);
    if !opts.sinks.is_empty() || opts.deliveries > 0.0 {
        shares.push(ROUTER);
    }
    for (name, share) in [
        (
            "crm",
            if opts.crm_receiver_dedupes {
                Share {
                    ddb_writes: CRM_WRITES_PER_EVENT_RECEIVER_DEDUPES,
                    ddb_writes_floor: CRM_WRITES_PER_EVENT_RECEIVER_DEDUPES,
                    ..CRM
                }
            } else {
                CRM
            },
        ),
        ("sms_fallback", SMS),
        ("analytics", ANALYTICS),
        ("media", MEDIA),
    ] {
        if on(name) {
            shares.push(share);
        }
    }
    if opts.attachments > 0.0 && on("media") {
        shares.push(ATTACHMENT.times(opts.attachments));
    }
    if opts.deliveries > 0.0 {
        shares.push(DELIVERY.times(opts.deliveries));
    }
    let sum = |f: &dyn Fn(&Share) -> f64| shares.iter().map(f).sum::<f64>();
    let invocations = sum(&|s| s.invocations);
    let gb_s = sum(&|s| s.invocations * s.billed_ms / 1000.0 * MEMORY_GB);
    let logs_kb = if opts.platform_logs {
        invocations * PLATFORM_LOG_BYTES / 1e3
    } else {
        0.0
    };
    let api = if opts.function_url { 0.0 } else { 1.0 };
    let line = |item: &str, quantity: f64, floor: f64, unit_per_m: f64| Line {
        item: item.to_owned(),
        quantity,
        floor_quantity: floor,
        usd_per_million: quantity * unit_per_m,
        floor_usd_per_million: floor * unit_per_m,
    };
    let mut lines = vec![
        line(
            "API Gateway HTTP API requests",
            api,
            api,
            price::HTTP_API_PER_M,
        ),
        line(
            "Lambda requests",
            invocations,
            invocations,
            price::LAMBDA_REQUESTS_PER_M,
        ),
        line(
            "Lambda duration (GB-s, 128 MB arm64)",
            gb_s,
            gb_s,
            price::LAMBDA_GB_S_ARM * 1e6,
        ),
        line(
            "SQS requests",
            sum(&|s| s.sqs),
            sum(&|s| s.sqs_floor),
            price::SQS_PER_M,
        ),
        line(
            "DynamoDB write request units",
            sum(&|s| s.ddb_writes),
            sum(&|s| s.ddb_writes_floor),
            price::DDB_WRITE_PER_M,
        ),
        line(
            "S3 PUTs",
            sum(&|s| s.s3_puts),
            sum(&|s| s.s3_puts),
            price::S3_PUT_PER_M,
        ),
        line(
            "S3 HEADs",
            sum(&|s| s.s3_reads),
            sum(&|s| s.s3_reads),
            price::S3_READ_PER_M,
        ),
        // A KB per webhook is a GB per million webhooks. Not in the floor: the lines are
        // optional (the template's default leaves them out).
        line(
            "CloudWatch Logs, Lambda platform lines (KB)",
            logs_kb,
            0.0,
            price::LOGS_PER_GB,
        ),
    ];
    lines.retain(|l| l.quantity > 0.0 || l.floor_quantity > 0.0);
    let total: f64 = lines.iter().map(|l| l.usd_per_million).sum();
    let floor: f64 = lines.iter().map(|l| l.floor_usd_per_million).sum();
    let months = opts.per_month as f64 / 1e6;
    Estimate {
        per_month: opts.per_month,
        sinks: opts.sinks.clone(),
        front: if opts.function_url {
            "Lambda function URL"
        } else {
            "API Gateway HTTP API"
        },
        functions: shares.iter().fold(Vec::new(), |mut functions, s| {
            if !functions.contains(&s.function) {
                functions.push(s.function);
            }
            functions
        }),
        lines,
        usd_per_million: total,
        floor_usd_per_million: floor,
        usd_per_month: total * months,
        floor_usd_per_month: floor * months,
        budget_per_million: if opts.function_url { 3.50 } else { 4.50 },
        platform_logs: opts.platform_logs,
        crm_receiver_dedupes: opts.crm_receiver_dedupes,
        deliveries_per_webhook: opts.deliveries,
        attachments_per_webhook: opts.attachments,
    }
}

impl Estimate {
    /// The table `bluehook cost` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let sinks = if self.sinks.is_empty() {
            "none".to_owned()
        } else {
            self.sinks.join(", ")
        };
        let _ = writeln!(
            out,
            "AWS cost of bluehook, us-east-1 list prices, no free tier; front: {}; sinks: {sinks}",
            self.front
        );
        let _ = writeln!(out, "functions: {}", self.functions.join(", "));
        if self.deliveries_per_webhook > 0.0 || self.attachments_per_webhook > 0.0 {
            let _ = writeln!(
                out,
                "per webhook: deliveries to destinations {}, attachments archived {}",
                self.deliveries_per_webhook, self.attachments_per_webhook
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>10} {:>12} {:>12}",
            "item", "per hook", "floor", "USD per 1M", "floor USD"
        );
        for l in &self.lines {
            let _ = writeln!(
                out,
                "{:<44} {:>10.4} {:>10.4} {:>12.2} {:>12.2}",
                l.item, l.quantity, l.floor_quantity, l.usd_per_million, l.floor_usd_per_million
            );
        }
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>10} {:>12.2} {:>12.2}",
            "total per million webhooks", "", "", self.usd_per_million, self.floor_usd_per_million
        );
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>10} {:>12.2} {:>12.2}",
            format!("total for {} webhooks a month", group(self.per_month)),
            "",
            "",
            self.usd_per_month,
            self.floor_usd_per_month
        );
        let _ = writeln!(out);
        let verdict = if self.sinks.len() < SINKS.len() {
            "not compared: some sinks are off here"
        } else if self.deliveries_per_webhook > 0.0 || self.attachments_per_webhook > 0.0 {
            "not compared: deliveries or attachments are priced on top here"
        } else if self.usd_per_million <= self.budget_per_million {
            "within"
        } else {
            "over"
        };
        let _ = writeln!(
            out,
            "budget with every sink on, {}: ${:.2} per million ({verdict})",
            self.front, self.budget_per_million
        );
        let once = if self.crm_receiver_dedupes {
            "each CRM push once at a receiver that drops a repeated webhook-id: [sinks.crm] receiver_dedupes = true"
        } else {
            "each CRM push once, even when SQS redelivers"
        };
        let items = if self.deliveries_per_webhook > 0.0 || self.attachments_per_webhook > 0.0 {
            "; each delivery and attachment once, even when SQS redelivers"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "floor: the fewest AWS requests the same guarantees need (the ingress's claim, enqueue and completion; {once}{items})."
        );
        let _ = writeln!(
            out,
            "not counted: storage, data transfer, idle SQS polling (~$0.26 a month per queue), application log lines, the CRM's and Twilio's own charges. docs/cost.md explains each line."
        );
        if !self.platform_logs {
            let _ = writeln!(
                out,
                "Lambda's START/REPORT lines are off (template parameter PlatformLogLevel=WARN, the default); --platform-logs prices them (INFO)."
            );
        }
        out
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(function_url: bool) -> Estimate {
        estimate(&Options {
            per_month: 3_000_000,
            sinks: parse_sinks("all").unwrap(),
            function_url,
            platform_logs: false,
            crm_receiver_dedupes: false,
            deliveries: 0.0,
            attachments: 0.0,
        })
    }

    #[test]
    fn the_lines_add_up_and_scale_with_the_volume() {
        let e = all(false);
        let sum: f64 = e.lines.iter().map(|l| l.usd_per_million).sum();
        assert!((sum - e.usd_per_million).abs() < 1e-9);
        assert!((e.usd_per_month - 3.0 * e.usd_per_million).abs() < 1e-9);
        assert!(e.floor_usd_per_million <= e.usd_per_million);
        // The HTTP API is $1.00 per million requests, one per webhook.
        let url = all(true);
        assert!((e.usd_per_million - url.usd_per_million - 1.0).abs() < 1e-9);
        assert!(!url.lines.iter().any(|l| l.item.contains("HTTP API")));
    }

    #[test]
    fn fewer_sinks_cost_less_and_the_ingress_alone_is_its_three_requests() {
        let none = estimate(&Options {
            per_month: 1_000_000,
            sinks: Vec::new(),
            function_url: true,
            platform_logs: false,
            crm_receiver_dedupes: false,
            deliveries: 0.0,
            attachments: 0.0,
        });
        assert_eq!(none.functions, vec!["ingress"]);
        let ddb = none
            .lines
            .iter()
            .find(|l| l.item.starts_with("DynamoDB"))
            .unwrap();
        assert_eq!(ddb.quantity, 2.0);
        let crm = estimate(&Options {
            per_month: 1_000_000,
            sinks: parse_sinks("crm").unwrap(),
            function_url: true,
            platform_logs: false,
            crm_receiver_dedupes: false,
            deliveries: 0.0,
            attachments: 0.0,
        });
        assert!(none.usd_per_million < crm.usd_per_million);
        assert!(crm.usd_per_million < all(true).usd_per_million);
    }

    #[test]
    fn platform_lines_are_priced_only_when_kept() {
        let off = all(true);
        assert!(!off.lines.iter().any(|l| l.item.contains("platform lines")));
        let on = estimate(&Options {
            per_month: 3_000_000,
            sinks: parse_sinks("all").unwrap(),
            function_url: true,
            platform_logs: true,
            crm_receiver_dedupes: false,
            deliveries: 0.0,
            attachments: 0.0,
        });
        let logs = on
            .lines
            .iter()
            .find(|l| l.item.contains("platform lines"))
            .unwrap();
        // 350 bytes for each of ~1.05 invocations per webhook, at $0.50 per GB.
        assert!(logs.usd_per_million > 0.15 && logs.usd_per_million < 0.30);
        assert_eq!(logs.floor_usd_per_million, 0.0);
        assert!((on.usd_per_million - off.usd_per_million - logs.usd_per_million).abs() < 1e-9);
        assert_eq!(on.floor_usd_per_million, off.floor_usd_per_million);
    }

    #[test]
    fn a_receiver_that_dedupes_saves_one_write_per_crm_event() {
        let dedupes = |function_url| {
            estimate(&Options {
                per_month: 3_000_000,
                sinks: parse_sinks("all").unwrap(),
                function_url,
                platform_logs: false,
                crm_receiver_dedupes: true,
                deliveries: 0.0,
                attachments: 0.0,
            })
        };
        for function_url in [true, false] {
            let (kept, dropped) = (all(function_url), dedupes(function_url));
            let writes = |e: &Estimate| {
                e.lines
                    .iter()
                    .find(|l| l.item.starts_with("DynamoDB"))
                    .map(|l| (l.quantity, l.floor_quantity))
                    .unwrap()
            };
            // One write fewer per message event (every webhook of the workload), at $0.625/M.
            assert!((writes(&kept).0 - writes(&dropped).0 - 1.0).abs() < 1e-9);
            assert!((writes(&kept).1 - writes(&dropped).1 - 1.0).abs() < 1e-9);
            assert!((kept.usd_per_million - dropped.usd_per_million - 0.625).abs() < 1e-9);
        }
        assert!(dedupes(true).render().contains("receiver_dedupes = true"));
        assert!(!all(true).render().contains("receiver_dedupes"));
    }

    #[test]
    fn every_sink_on_is_within_the_budgets_where_the_receiver_dedupes() {
        for function_url in [true, false] {
            let e = estimate(&Options {
                per_month: 1_000_000,
                sinks: parse_sinks("all").unwrap(),
                function_url,
                platform_logs: false,
                crm_receiver_dedupes: true,
                deliveries: 0.0,
                attachments: 0.0,
            });
            assert!(
                e.usd_per_million <= e.budget_per_million,
                "{} > {}",
                e.usd_per_million,
                e.budget_per_million
            );
            assert!(e.render().contains("(within)"));
        }
        // Every push recorded (the default): one write more per message event, over.
        assert!(all(true).usd_per_million > 3.50);
    }

    #[test]
    fn deliveries_and_attachments_are_priced_on_top_per_item() {
        let with = |deliveries, attachments| {
            let opts = Options {
                per_month: 1_000_000,
                sinks: parse_sinks("all").unwrap(),
                function_url: true,
                platform_logs: false,
                crm_receiver_dedupes: true,
                deliveries,
                attachments,
            };
            opts.check().unwrap();
            estimate(&opts)
        };
        let base = with(0.0, 0.0);
        // Per delivery: two DynamoDB writes ($1.25/M), 0.3 SQS requests, a tenth of an
        // invocation: about $1.41 per million.
        let per_delivery = (with(2.0, 0.0).usd_per_million - base.usd_per_million) / 2.0;
        assert!((1.35..1.50).contains(&per_delivery), "{per_delivery}");
        // Per attachment: the S3 PUT ($5/M) and HEAD, two writes, an invocation, 1.6 SQS
        // requests: about $7.5 per million.
        let per_attachment = (with(0.0, 0.5).usd_per_million - base.usd_per_million) / 0.5;
        assert!((7.0..8.0).contains(&per_attachment), "{per_attachment}");
        let both = with(1.0, 0.1);
        assert!(both.functions.contains(&"deliver"));
        assert_eq!(both.functions.iter().filter(|f| **f == "media").count(), 1);
        let heads = both.lines.iter().find(|l| l.item == "S3 HEADs").unwrap();
        assert!((heads.quantity - 0.1).abs() < 1e-9);
        let text = both.render();
        assert!(text.contains("deliveries to destinations 1, attachments archived 0.1"));
        assert!(text.contains("each delivery and attachment once"));
        assert!(text.contains("not compared: deliveries or attachments"));
        assert!(!base.render().contains("HEADs"));
        // Destinations without any sink still go through the router.
        let alone = estimate(&Options {
            per_month: 1_000_000,
            sinks: Vec::new(),
            function_url: true,
            platform_logs: false,
            crm_receiver_dedupes: false,
            deliveries: 1.0,
            attachments: 0.0,
        });
        assert_eq!(alone.functions, vec!["ingress", "router", "deliver"]);
    }

    #[test]
    fn counts_are_checked_and_attachments_need_the_media_sink() {
        let opts = |sinks: &str, deliveries, attachments| Options {
            per_month: 1_000_000,
            sinks: parse_sinks(sinks).unwrap(),
            function_url: false,
            platform_logs: false,
            crm_receiver_dedupes: false,
            deliveries,
            attachments,
        };
        assert!(opts("all", 3.0, 0.2).check().is_ok());
        assert!(opts("crm", 0.0, 0.2)
            .check()
            .unwrap_err()
            .contains("media sink"));
        assert!(opts("all", -1.0, 0.0)
            .check()
            .unwrap_err()
            .contains("--deliveries"));
        assert!(opts("all", 0.0, f64::NAN)
            .check()
            .unwrap_err()
            .contains("--attachments"));
    }

    #[test]
    fn sinks_are_checked() {
        assert_eq!(
            parse_sinks("crm, sms-fallback,crm").unwrap(),
            vec!["crm", "sms_fallback"]
        );
        assert!(parse_sinks("hubspot").unwrap_err().contains("unknown sink"));
        assert!(parse_sinks("none").unwrap().is_empty());
    }

    #[test]
    fn the_table_names_every_line_and_the_budget() {
        let text = all(true).render();
        assert!(text.contains("DynamoDB write request units"));
        assert!(text.contains("budget with every sink on, Lambda function URL: $3.50"));
        assert!(text.contains("3,000,000 webhooks a month"));
    }
}
