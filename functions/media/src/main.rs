//! The media Lambda: each attachment of an event downloaded (streamed) before the provider's
//! link expires and stored once in the archive bucket under `media/`. Logic in `bluehook`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: one invocation at a time; the download streams through it chunk by chunk.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    bluehook::telemetry::init_json();
    let sink = Arc::new(match bluehook::lambda::media_from_env().await {
        Ok(v) => v,
        Err(e) => return Err(bluehook::lambda::report_init_error(e).await.into()),
    });
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let sink = sink.clone();
        async move { Ok::<_, Error>(sink.handle(event.payload).await) }
    }))
    .await
}
