//! Verify + parse + normalise + serialise one webhook, per provider and body size, beside the
//! floor: HMAC-SHA256 of the same bytes plus a `serde_json::Value` parse of them (for Twilio's
//! form posts: HMAC-SHA1 plus the form decoded into pairs). `scripts/bench-ratios.py` prints
//! each provider's ratio to its floor.
//! Run: `cargo bench -p bluehook --bench providers`.

use std::hint::black_box;
use std::sync::Arc;

use bluehook::config::{Secret, SourceConfig};
use bluehook::provider::signing::Algorithm;
use bluehook::provider::{self, Parsed, Provider, SampleOptions, WebhookRequest};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::HeaderMap;

/// One configured source per provider, signed as its provider signs.
fn sources() -> Vec<(&'static str, Arc<dyn Provider>)> {
    let configs = [
        ("sendblue", "provider = \"sendblue\""),
        ("bluereplies", "provider = \"bluereplies\""),
        (
            "twilio",
            "provider = \"twilio\"\npublic_url = \"https://hooks.example.com/webhooks/twilio\"",
        ),
        ("standard-webhooks", "provider = \"standard-webhooks\""),
        (
            "bluemessaggio",
            "provider = \"bluemessaggio\"\nheader = \"x-bm-signature\"",
        ),
        ("stripe-style", "provider = \"stripe-style\""),
        ("github-style", "provider = \"github-style\""),
    ];
    configs
        .iter()
        .map(|(name, text)| {
            let c: SourceConfig = toml::from_str(text).unwrap();
            let secret = if *name == "standard-webhooks" {
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            } else {
                "bench-secret-123"
            };
            (
                *name,
                provider::build(name, &c, vec![Secret::new(secret)]).unwrap(),
            )
        })
        .collect()
}

/// A signed sample of about `size` bytes: the sample with its message text padded.
fn signed_sample(
    p: &dyn Provider,
    name: &str,
    size: usize,
) -> (HeaderMap, Vec<u8>, Option<String>) {
    let url = format!("https://hooks.example.com/webhooks/{name}");
    let event = match name {
        "sendblue" => "outbound",
        "twilio" => "received",
        _ => "delivered",
    };
    let probe = p.sample(event, &SampleOptions::default(), &url).unwrap();
    let pad = size.saturating_sub(probe.body.len());
    let opts = SampleOptions {
        content: Some("x".repeat(pad.max(1))),
        ..SampleOptions::default()
    };
    let s = p.sample(event, &opts, &url).unwrap();
    let mut h = HeaderMap::new();
    for (k, v) in &s.headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h.insert(http::header::HOST, "hooks.example.com".parse().unwrap());
    let hint = s
        .url
        .strip_prefix(&url)
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_owned);
    (h, s.body, hint)
}

fn providers(c: &mut Criterion) {
    for (name, p) in sources() {
        let mut group = c.benchmark_group(name);
        for size in [200usize, 1024, 4096, 16384] {
            let (headers, body, hint) = signed_sample(p.as_ref(), name, size);
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(
                BenchmarkId::new("verify_parse_serialise", size),
                &body,
                |b, body| {
                    b.iter(|| {
                        let req = WebhookRequest {
                            source: name,
                            type_hint: hint.as_deref(),
                            headers: &headers,
                            query: None,
                            body: black_box(body),
                            received_at: chrono::Utc::now(),
                        };
                        p.verify(&req).unwrap();
                        let Parsed::Events(events) = p.parse(&req).unwrap() else {
                            unreachable!()
                        };
                        black_box(events[0].to_json())
                    })
                },
            );
            if name == "twilio" {
                // Twilio signs form posts with HMAC-SHA1: its floor is that MAC plus the form
                // decoded into pairs (a JSON parse of a form body would fail at its first byte).
                group.bench_with_input(
                    BenchmarkId::new("floor_hmac_form_pairs", size),
                    &body,
                    |b, body| {
                        b.iter(|| {
                            black_box(Algorithm::Sha1.mac(b"bench-secret-123", &[black_box(body)]));
                            black_box(
                                form_urlencoded::parse(black_box(body))
                                    .into_owned()
                                    .collect::<Vec<(String, String)>>(),
                            )
                        })
                    },
                );
            } else {
                group.bench_with_input(
                    BenchmarkId::new("floor_hmac_json_value", size),
                    &body,
                    |b, body| {
                        b.iter(|| {
                            black_box(
                                Algorithm::Sha256.mac(b"bench-secret-123", &[black_box(body)]),
                            );
                            black_box(
                                serde_json::from_slice::<serde_json::Value>(black_box(body)).ok(),
                            )
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, providers);
criterion_main!(benches);
