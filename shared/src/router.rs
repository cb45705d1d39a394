//! The router: reads events off the events queue and sends each to the queue of every
//! destination its routes name (batched sends, destinations in parallel). A destination whose
//! sink is not configured is counted as `skipped.<destination>`, never dropped silently. A
//! record that is not an event is named for retry, so it ends in the dead-letter queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::delivery::DeliveryMessage;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::processing::{send_all, Processor, Record};
use crate::queue::{OutgoingMessage, Queue};
use crate::routing::{Destination, Routes};

pub struct Router {
    routes: Routes,
    queues: BTreeMap<Destination, Arc<dyn Queue>>,
    /// The deliveries queue of each named destination (locally one each, on AWS one shared).
    endpoints: BTreeMap<String, Arc<dyn Queue>>,
    metrics: Arc<dyn Metrics>,
    /// What must be kept of every event before it is routed (follow-up timers on AWS).
    observer: Option<Arc<dyn Observe>>,
}

/// Keeps something of each routed event; an error leaves the event's record to be retried.
#[async_trait]
pub trait Observe: Send + Sync {
    async fn observe(&self, event: &Event) -> Result<(), String>;
}

impl Router {
    /// `queues` holds the destinations whose sinks are on.
    pub fn new(
        routes: Routes,
        queues: BTreeMap<Destination, Arc<dyn Queue>>,
        metrics: Arc<dyn Metrics>,
    ) -> Router {
        Router {
            routes,
            queues,
            endpoints: BTreeMap::new(),
            metrics,
            observer: None,
        }
    }

    /// Delivers to named destinations through `endpoints` (name to its deliveries queue); an
    /// event routed to a name without a queue is counted as skipped.
    pub fn with_endpoints(mut self, endpoints: BTreeMap<String, Arc<dyn Queue>>) -> Router {
        self.endpoints = endpoints;
        self
    }

    /// Has `observer` see each event before it is routed.
    pub fn with_observer(mut self, observer: Option<Arc<dyn Observe>>) -> Router {
        self.observer = observer;
        self
    }

    /// The sinks and destinations `e` goes to: those its routes name that this router has a
    /// queue for.
    pub fn targets(&self, e: &Event) -> Vec<String> {
        let mut out: Vec<String> = self
            .routes
            .destinations(e)
            .into_iter()
            .filter(|d| self.queues.contains_key(d))
            .map(|d| d.as_str().to_owned())
            .collect();
        out.extend(
            self.routes
                .endpoints(e)
                .into_iter()
                .filter(|n| self.endpoints.contains_key(n)),
        );
        out
    }

    /// Parses a batch: the events (a record may hold several: a pack), and the ids of records
    /// that are not events.
    pub fn parse_batch(batch: &[Record]) -> (Vec<(&Record, Event)>, Vec<String>) {
        let mut events = Vec::with_capacity(batch.len());
        let mut poisoned = Vec::new();
        for r in batch {
            match Event::all_from_json(&r.body) {
                Ok(all) => events.extend(all.into_iter().map(|ev| (r, ev))),
                Err(e) => {
                    tracing::error!(record = %r.id, receive_count = r.receive_count, error = %e, "not an event; retried, then dead-lettered");
                    poisoned.push(r.id.clone());
                }
            }
        }
        (events, poisoned)
    }
}

/// `event`'s JSON as `record` carries it: the body itself when it holds this one event (not
/// serialised again), the event's own JSON when it is one of a pack.
fn json_of<'a>(record: &'a Record, event: &Event) -> std::borrow::Cow<'a, str> {
    if crate::queue::is_pack(&record.body) {
        std::borrow::Cow::Owned(event.to_json())
    } else {
        std::borrow::Cow::Borrowed(&record.body)
    }
}

#[async_trait]
impl Processor for Router {
    fn name(&self) -> &'static str {
        "router"
    }

    async fn process(&self, batch: Vec<Record>) -> Vec<String> {
        let (mut events, mut failed) = Router::parse_batch(&batch);
        if let Some(o) = &self.observer {
            let seen =
                futures_util::future::join_all(events.iter().map(|(_, e)| o.observe(e))).await;
            let mut kept = Vec::with_capacity(events.len());
            for ((record, event), r) in events.into_iter().zip(seen) {
                match r {
                    Ok(()) => kept.push((record, event)),
                    Err(e) => {
                        tracing::error!(record = %record.id, event_id = %event.id, error = %e, "event not kept for the automations; retried");
                        failed.push(record.id.clone());
                    }
                }
            }
            events = kept;
        }
        let mut per_destination: BTreeMap<Destination, Vec<(String, OutgoingMessage)>> =
            BTreeMap::new();
        for (record, event) in &events {
            for d in self.routes.destinations(event) {
                if self.queues.contains_key(&d) {
                    per_destination.entry(d).or_default().push((
                        record.id.clone(),
                        OutgoingMessage {
                            id: event.id.clone(),
                            body: json_of(record, event).into_owned(),
                        },
                    ));
                } else {
                    self.metrics.incr(&format!("skipped.{}", d.as_str()), 1);
                }
            }
        }
        let mut per_endpoint: BTreeMap<&str, Vec<(String, OutgoingMessage)>> = BTreeMap::new();
        for (record, event) in &events {
            for name in self.routes.endpoints(event) {
                let Some((name, _)) = self.endpoints.get_key_value(&name) else {
                    self.metrics.incr(&format!("skipped.{name}"), 1);
                    continue;
                };
                per_endpoint.entry(name).or_default().push((
                    record.id.clone(),
                    OutgoingMessage {
                        id: event.id.clone(),
                        body: DeliveryMessage::envelope(name, &json_of(record, event)),
                    },
                ));
            }
        }
        let sends = per_destination
            .iter()
            .map(|(d, items)| (d.as_str(), self.queues[d].as_ref(), items))
            .chain(
                per_endpoint
                    .iter()
                    .map(|(n, items)| (*n, self.endpoints[*n].as_ref(), items)),
            )
            .map(|(name, queue, items)| async move {
                let failed = send_all(queue, items).await;
                (name, items.len(), failed)
            });
        for (name, sent, f) in futures_util::future::join_all(sends).await {
            self.metrics
                .incr(&format!("routed.{name}"), (sent - f.len()) as u64);
            failed.extend(f);
        }
        failed.sort_unstable();
        failed.dedup();
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, EventKind, MessageStatus, Service};
    use crate::metrics::MemoryMetrics;
    use crate::queue::{Delivery, QueueError};
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Default)]
    struct VecQueue(Mutex<Vec<OutgoingMessage>>);

    #[async_trait]
    impl Queue for VecQueue {
        async fn send(&self, m: &[OutgoingMessage]) -> Result<(), QueueError> {
            assert!(m.len() <= 10, "batches of at most ten");
            self.0.lock().unwrap().extend_from_slice(m);
            Ok(())
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
            Ok(vec![])
        }
        async fn delete(&self, _: &[String]) -> Result<(), QueueError> {
            Ok(())
        }
    }

    fn record(i: usize, status: MessageStatus) -> Record {
        let mut e = Event::new(
            "sb",
            "sendblue",
            EventKind::MessageStatus,
            format!("k{i}"),
            chrono::Utc::now(),
            "{}".into(),
        );
        e.status = Some(status);
        e.service = Some(Service::IMessage);
        e.direction = Some(Direction::Outbound);
        Record {
            id: format!("m{i}"),
            body: e.to_json(),
            receive_count: 1,
        }
    }

    #[tokio::test]
    async fn fans_out_and_fails_only_the_poisoned_record() {
        let crm = Arc::new(VecQueue::default());
        let analytics = Arc::new(VecQueue::default());
        let metrics = Arc::new(MemoryMetrics::default());
        let mut queues: BTreeMap<Destination, Arc<dyn Queue>> = BTreeMap::new();
        queues.insert(Destination::Crm, crm.clone());
        queues.insert(Destination::Analytics, analytics.clone());
        let router = Router::new(Routes::defaults(), queues, metrics.clone());
        let mut batch: Vec<Record> = (0..12)
            .map(|i| record(i, MessageStatus::Delivered))
            .collect();
        batch.push(record(12, MessageStatus::Failed));
        batch.insert(
            5,
            Record {
                id: "poison".into(),
                body: "{not an event".into(),
                receive_count: 1,
            },
        );
        let failed = router.process(batch).await;
        assert_eq!(failed, vec!["poison".to_owned()]);
        assert_eq!(crm.0.lock().unwrap().len(), 13);
        assert_eq!(analytics.0.lock().unwrap().len(), 13);
        // The failed iMessage would go to the SMS fallback, which is not configured here.
        assert_eq!(metrics.get("skipped.sms_fallback"), 1);
        assert_eq!(metrics.get("routed.crm"), 13);
    }
}
