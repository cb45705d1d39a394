//! The automations Lambda: sends the bot replies of the replies queue, and on its schedule
//! sweeps the follow-up timers. Logic in `bluehook`.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    bluehook::telemetry::init_json();
    let automations = Arc::new(match bluehook::lambda::automations_from_env().await {
        Ok(v) => v,
        Err(e) => return Err(bluehook::lambda::report_init_error(e).await.into()),
    });
    run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let automations = automations.clone();
        async move { automations.handle(event.payload).await.map_err(Error::from) }
    }))
    .await
}
