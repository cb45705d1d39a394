//! The crm-sync Lambda: conversation state in DynamoDB, each change pushed to the CRM once. Logic in `bluehook`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: a function instance handles one invocation at a time, and on 128 MB it has a
// fraction of a vCPU; a single-threaded runtime saves the cross-thread wake-ups per request.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    bluehook::telemetry::init_json();
    let sink = Arc::new(match bluehook::lambda::crm_sync_from_env().await {
        Ok(v) => v,
        Err(e) => return Err(bluehook::lambda::report_init_error(e).await.into()),
    });
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let sink = sink.clone();
        async move { Ok::<_, Error>(sink.handle(event.payload).await) }
    }))
    .await
}
