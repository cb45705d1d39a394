//! The deliver Lambda: attempts each (event, destination) delivery of the deliveries queue,
//! backing off with the queue's visibility and dead-lettering the exhausted. Logic in
//! `bluehook`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: a function instance handles one invocation at a time, and on 128 MB it has a
// fraction of a vCPU; the batch's deliveries still run concurrently on it.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    bluehook::telemetry::init_json();
    let deliveries = Arc::new(match bluehook::lambda::deliver_from_env().await {
        Ok(v) => v,
        Err(e) => return Err(bluehook::lambda::report_init_error(e).await.into()),
    });
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let deliveries = deliveries.clone();
        async move { Ok::<_, Error>(deliveries.handle(event.payload).await) }
    }))
    .await
}
