//! Router CPU per event: a batch of ten events routed by the default rules to three
//! destinations whose queues accept instantly. Run: `cargo bench -p bluehook --bench router`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluehook::event::{Direction, Event, EventKind, MessageStatus, Service};
use bluehook::metrics::LogMetrics;
use bluehook::processing::{Processor, Record};
use bluehook::queue::{Delivery, OutgoingMessage, Queue, QueueError};
use bluehook::router::Router;
use bluehook::routing::{Destination, Routes};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

struct Sink;

#[async_trait]
impl Queue for Sink {
    async fn send(&self, m: &[OutgoingMessage]) -> Result<(), QueueError> {
        black_box(m);
        Ok(())
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Ok(vec![])
    }
    async fn delete(&self, _: &[String]) -> Result<(), QueueError> {
        Ok(())
    }
}

fn batch() -> Vec<Record> {
    let raw = include_str!("../testdata/sendblue/outbound.json");
    (0..10)
        .map(|i| {
            let mut e = Event::new(
                "sendblue",
                "sendblue",
                EventKind::MessageStatus,
                format!("sendblue:msg:h{i}:FAILED"),
                chrono::Utc::now(),
                raw.into(),
            );
            e.status = Some(if i % 3 == 0 {
                MessageStatus::Failed
            } else {
                MessageStatus::Delivered
            });
            e.service = Some(Service::IMessage);
            e.direction = Some(Direction::Outbound);
            e.content = Some("Hello world!".into());
            Record {
                id: format!("m{i}"),
                body: e.to_json(),
                receive_count: 1,
            }
        })
        .collect()
}

fn router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut queues: BTreeMap<Destination, Arc<dyn Queue>> = BTreeMap::new();
    for d in Destination::ALL {
        queues.insert(d, Arc::new(Sink));
    }
    let router = Router::new(Routes::defaults(), queues, Arc::new(LogMetrics));
    let batch = batch();
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("batch_of_10", |b| {
        b.iter(|| rt.block_on(async { black_box(router.process(black_box(batch.clone())).await) }))
    });
    group.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
