//! A Lambda runtime API server for tests: a function binary started with
//! `AWS_LAMBDA_RUNTIME_API` pointing here polls it for invocations, exactly as on Lambda, and
//! posts back its responses and errors.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, Notify};

type Outcome = Result<serde_json::Value, serde_json::Value>;

#[derive(Default)]
struct State {
    queue: Mutex<VecDeque<(String, String)>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<String>>,
    first_poll: Mutex<Option<Instant>>,
    /// When each invocation was handed out, and how long each took until its answer came in
    /// (what Lambda bills as the duration).
    handed_out: Mutex<HashMap<String, Instant>>,
    durations: Mutex<Vec<Duration>>,
    /// Every body the function posted: responses, invocation and init errors.
    posted: Mutex<String>,
    ready: Notify,
}

pub struct RuntimeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    _task: tokio::task::JoinHandle<()>,
}

fn response(status: u16, body: String, headers: &[(&str, String)]) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

async fn serve(
    state: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let arrived = Instant::now();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    if path != "/2018-06-01/runtime/invocation/next" {
        let mut posted = state.posted.lock().unwrap();
        posted.push_str(&body);
        posted.push('\n');
    }
    if path == "/2018-06-01/runtime/invocation/next" {
        state
            .first_poll
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        loop {
            let notified = state.ready.notified();
            if let Some((id, payload)) = state.queue.lock().unwrap().pop_front() {
                let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
                state
                    .handed_out
                    .lock()
                    .unwrap()
                    .insert(id.clone(), Instant::now());
                return response(
                    200,
                    payload,
                    &[
                        ("lambda-runtime-aws-request-id", id),
                        ("lambda-runtime-deadline-ms", deadline.to_string()),
                        (
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:us-east-1:123456789012:function:test".into(),
                        ),
                        (
                            "lambda-runtime-trace-id",
                            "Root=1-00000000-000000000000000000000000".into(),
                        ),
                        ("content-type", "application/json".into()),
                    ],
                );
            }
            notified.await;
        }
    }
    if path == "/2018-06-01/runtime/init/error" {
        *state.init_error.lock().unwrap() = Some(body);
        return response(202, "{}".into(), &[]);
    }
    if let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") {
        let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(out) = state.handed_out.lock().unwrap().remove(id) {
            state.durations.lock().unwrap().push(arrived - out);
        }
        let outcome = match kind {
            "response" => {
                Ok(serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
            }
            _ => Err(serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))),
        };
        if let Some(tx) = state.waiting.lock().unwrap().remove(id) {
            let _ = tx.send(outcome);
        }
        return response(202, "{}".into(), &[]);
    }
    response(404, "{}".into(), &[])
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<State> = Arc::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(serve(st, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RuntimeApi {
            addr,
            state,
            _task: task,
        }
    }

    /// Invokes the function polling this API with `payload`; its response, or its error.
    pub async fn invoke(&self, payload: &serde_json::Value) -> Outcome {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.state.waiting.lock().unwrap().insert(id.clone(), tx);
        self.state
            .queue
            .lock()
            .unwrap()
            .push_back((id, payload.to_string()));
        self.state.ready.notify_waiters();
        // Generous: on a busy machine a cold start only takes longer.
        tokio::time::timeout(Duration::from_secs(300), rx)
            .await
            .expect("the function answered")
            .expect("an answer")
    }

    /// Each finished invocation's duration, from the event handed out on `/next` to its answer
    /// arriving, in order; taken (the list starts again empty).
    pub fn take_durations(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.state.durations.lock().unwrap())
    }

    /// When the function first asked for an invocation: the end of its initialisation.
    pub fn first_poll(&self) -> Option<Instant> {
        *self.state.first_poll.lock().unwrap()
    }

    pub fn init_error(&self) -> Option<String> {
        self.state.init_error.lock().unwrap().clone()
    }

    /// Every body the function posted back, one per line: what Lambda hands to the caller
    /// (API Gateway answers, error objects).
    pub fn posted(&self) -> String {
        self.state.posted.lock().unwrap().clone()
    }
}

/// Where the function processes this process starts write their stdout and stderr (their
/// logs, as CloudWatch would get them).
fn log_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("function-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything the function processes started by this process have written so far, each file
/// headed by its name.
pub fn function_logs() -> String {
    let mut all = String::new();
    let mut files: Vec<_> = std::fs::read_dir(log_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        all.push_str(&format!("==> {}\n", f.display()));
        all.push_str(&String::from_utf8_lossy(&std::fs::read(&f).unwrap()));
    }
    all
}

/// The built binary of a workspace function (`cargo build --workspace` builds them all; the
/// test command does).
pub fn function_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .unwrap();
    let path = target.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Starts a function binary against `api`, with the Lambda environment and `env`.
pub fn start_function(name: &str, api: &RuntimeApi, env: &[(&str, String)]) -> Child {
    start_binary(&function_binary(name), name, api, env)
}

/// Starts the executable at `path` as the function `name` against `api`, with the Lambda
/// environment and `env` only (nothing inherited); its output goes to a file read back by
/// [`function_logs`].
pub fn start_binary(path: &Path, name: &str, api: &RuntimeApi, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("BLUEHOOK_LOG", "warn");
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = std::fs::File::create(log_dir().join(format!("{n:03}-{name}.log"))).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start the function")
}

/// Function processes, killed and reaped when dropped, however a test or a run ends.
pub struct Kill(pub Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
