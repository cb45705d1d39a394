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
};
/// media: only events with an attachment reach its queue (none in this workload; docs/cost.md
/// gives the measured cost per attachment: two writes, one S3 PUT and HEAD, one invocation).
const MEDIA: Share = Share {
    function: "media",
    invocations: 0.0,
    billed_ms: 0.0,
    sqs: 0.0,
    sqs_floor: 0.0,
    ddb_writes: 0.0,
    ddb_writes_floor: 0.0,
    s3_puts: 0.0,
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
    if !opts.sinks.is_empty() {
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
        functions: shares.iter().map(|s| s.function).collect(),
        lines,
        usd_per_million: total,
        floor_usd_per_million: floor,
        usd_per_month: total * months,
        floor_usd_per_month: floor * months,
        budget_per_million: if opts.function_url { 3.50 } else { 4.50 },
        platform_logs: opts.platform_logs,
        crm_receiver_dedupes: opts.crm_receiver_dedupes,
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
        let _ = writeln!(
            out,
            "floor: the fewest AWS requests the same guarantees need (the ingress's claim, enqueue and completion; {once})."
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
