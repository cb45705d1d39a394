//! Everything a user or an operator reads (every log line, in-process at trace level and from
//! each function process, every answer and error body) gathered in one place, and the check
//! that no secret is in any of it.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;

static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs of this test process at trace level (the product's own JSON logging, with its caps on
/// wire-level targets), kept for [`assert_no_secret`]. Idempotent.
pub fn capture_logs() {
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        std::env::set_var("BLUEHOOK_LOG", "trace");
        let b = buf.clone();
        bluehook::telemetry::init_json_with(move || Sink(b.clone()));
        buf
    });
}

/// What this process logged since [`capture_logs`].
pub fn logged() -> String {
    LOG.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}

/// Something a user reads (an answer, an error, another process's output), to be checked.
pub fn record(place: &str, text: &str) {
    SEEN.lock()
        .unwrap()
        .push((place.to_owned(), text.to_owned()));
}

/// The forms a secret would show in: itself, and for a `whsec_` key its base64 body and the
/// key's bytes in hex and base64 without padding.
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    if let Some(body) = secret.strip_prefix("whsec_") {
        forms.push(body.to_owned());
        if let Ok(key) = base64::engine::general_purpose::STANDARD.decode(body) {
            forms.push(key.iter().map(|b| format!("{b:02x}")).collect());
            forms.push(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&key));
            if let Ok(text) = String::from_utf8(key) {
                forms.push(text);
            }
        }
    }
    forms
}

/// Panics, naming the place but never the secret, if any form of any of `secrets` is in this
/// process's captured log or anything [`record`]ed. The secrets must be distinctive (12
/// characters or more), and there must be something to look at: the captured log, when
/// capturing, holds at least one line.
pub fn assert_no_secret(secrets: &[&str]) {
    let mut places = SEEN.lock().unwrap().clone();
    if LOG.get().is_some() {
        let log = logged();
        assert!(
            log.lines().count() > 0,
            "logs were captured but nothing was logged"
        );
        places.push(("this process's log".into(), log));
    }
    assert!(!places.is_empty(), "nothing to look at");
    for (i, secret) in secrets.iter().enumerate() {
        assert!(secret.len() >= 12, "secret #{i} is not distinctive enough");
        for form in forms(secret) {
            for (place, text) in &places {
                if let Some(at) = text.find(&form) {
                    panic!(
                        "secret #{i} is in {place} at byte {at} (of {} bytes)",
                        text.len()
                    );
                }
            }
        }
    }
}

/// Every secret in a bluehook configuration: the sources' signing secrets and the sinks' keys
/// and tokens.
pub fn config_secrets(config: &toml::Table) -> Vec<String> {
    let mut secrets = Vec::new();
    for source in config["sources"].as_table().unwrap().values() {
        for s in source["secrets"].as_array().unwrap() {
            secrets.push(s.as_str().unwrap().to_owned());
        }
    }
    for sink in config["sinks"].as_table().unwrap().values() {
        for key in [
            "secret",
            "auth_token",
            "token",
            "api_key_id",
            "api_secret_key",
        ] {
            if let Some(v) = sink.get(key).and_then(|v| v.as_str()) {
                secrets.push(v.to_owned());
            }
        }
    }
    // Destinations: the signing secret and every header value.
    if let Some(destinations) = config.get("destinations").and_then(|d| d.as_table()) {
        for d in destinations.values() {
            if let Some(v) = d.get("secret").and_then(|v| v.as_str()) {
                secrets.push(v.to_owned());
            }
            if let Some(headers) = d.get("headers").and_then(|h| h.as_table()) {
                secrets.extend(
                    headers
                        .values()
                        .filter_map(|v| v.as_str())
                        .map(str::to_owned),
                );
            }
        }
    }
    secrets
}
