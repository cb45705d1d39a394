//! A local HTTP server standing in for a third-party API (Twilio, Sendblue, HubSpot, a CRM
//! endpoint): it records every request and answers with what the test's responder returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// The raw bytes of the body.
    pub bytes: Vec<u8>,
    pub at: std::time::Instant,
}

impl Captured {
    pub fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// An answer with more than a status and a body.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// Waits this long before answering.
    pub delay: std::time::Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::default()
        }
    }
}

type Responder = dyn Fn(&Captured, usize) -> Reply + Send + Sync;

pub struct FakeHttp {
    pub url: String,
    requests: Arc<Mutex<Vec<Captured>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeHttp {
    /// Serves on a free loopback port; `respond` gets each request and how many came before.
    pub async fn start(
        respond: impl Fn(&Captured, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeHttp {
        FakeHttp::start_replies(move |c, n| {
            let (status, body) = respond(c, n);
            Reply {
                status,
                body,
                ..Reply::default()
            }
        })
        .await
    }

    /// Like [`FakeHttp::start`], answering with headers and delays.
    pub async fn start_replies(
        respond: impl Fn(&Captured, usize) -> Reply + Send + Sync + 'static,
    ) -> FakeHttp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let respond: Arc<Responder> = Arc::new(respond);
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (reqs, respond) = (reqs.clone(), respond.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (reqs, respond) = (reqs.clone(), respond.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let captured = Captured {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                                bytes: body.to_vec(),
                                at: std::time::Instant::now(),
                            };
                            let n = {
                                let mut r = reqs.lock().unwrap();
                                r.push(captured.clone());
                                r.len() - 1
                            };
                            let reply = respond(&captured, n);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(reply.body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            for (k, v) in reply.headers {
                                resp.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeHttp {
            url: format!("http://{addr}"),
            requests,
            _task: task,
        }
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.requests.lock().unwrap().clone()
    }

    /// When each request arrived, in order.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.requests.lock().unwrap().iter().map(|c| c.at).collect()
    }
}

/// Twilio's Messages API: 201 with a new sid.
pub fn twilio_ok(_: &Captured, n: usize) -> (u16, String) {
    (
        201,
        serde_json::json!({"sid": format!("SM{n:032}"), "status": "queued"}).to_string(),
    )
}
