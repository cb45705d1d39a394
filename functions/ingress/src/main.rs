//! The ingress Lambda: verify, claim, enqueue, answer. All logic is in the `bluehook` crate.

use std::sync::Arc;

use lambda_http::{run, service_fn, Error, Request};

// One thread: a function instance handles one invocation at a time, and on 128 MB it has a
// fraction of a vCPU; a single-threaded runtime saves the cross-thread wake-ups per request.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    bluehook::telemetry::init_json();
    // Clients and configuration are built once per process, before the first invocation.
    let ingress = Arc::new(match bluehook::lambda::ingress_from_env().await {
        Ok(v) => v,
        Err(e) => return Err(bluehook::lambda::report_init_error(e).await.into()),
    });
    run(service_fn(move |req: Request| {
        let ingress = ingress.clone();
        async move { Ok::<_, Error>(bluehook::lambda::serve(&ingress, req).await) }
    }))
    .await
}
