//! The media archive: every attachment of an event (Sendblue `media_url`, Twilio
//! `MediaUrl0..N`, a generic `media_url` / `media` field) downloaded before the provider's link
//! expires and stored once under `media/<source>/<yyyy>/<mm>/<event id>-<n>.<ext>`, with its
//! content type, size and SHA-256.
//!
//! A download is streamed: each chunk is hashed and handed to the store as it arrives (a file
//! written then renamed locally, an S3 multipart upload on AWS), so memory stays bounded
//! whatever the size. A file over `max_bytes` stops being read and is recorded `too_large`; a
//! 403/404/410 is recorded `expired` and not retried; any other failure is retried by the
//! delivery engine, then dead-lettered. A file already stored (a retry after another file of the
//! same event failed) is not downloaded again; a redelivered event finds its effect key done.
//!
//! The archive key is a function of the event alone (the extension from the content type the
//! webhook declares, else the URL's), so the CRM push and the analytics row can name the
//! archived location without waiting for the download.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{SinkError, SinkSettings};
use crate::config::{ConfigError, Secret};
use crate::delivery::{Outcome, Planned, Policy, RetryPolicy, Target};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::provider::generic::Fields;
use crate::sqlite::Db;

/// The archive's prefix in the bucket (AWS) or the data folder (locally).
pub const PREFIX: &str = "media/";
/// `[sinks.media] max_bytes` when not set: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Twilio sends at most ten attachments per message.
const MAX_MEDIA: usize = 10;

/// One attachment of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaRef {
    /// Its place among the event's attachments, from 0 (`MediaUrl0` is 0).
    pub n: usize,
    pub url: String,
    /// The content type the webhook declares (Twilio's `MediaContentTypeN`), if any.
    pub content_type: Option<String>,
}

/// Every attachment of `event`, in the provider's order, each URL once.
pub fn media_of(event: &Event) -> Vec<MediaRef> {
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    if event.provider == "twilio" {
        let params: BTreeMap<String, String> = form_urlencoded::parse(event.raw_body.as_bytes())
            .into_owned()
            .collect();
        for i in 0..MAX_MEDIA {
            let Some(url) = params.get(&format!("MediaUrl{i}")) else {
                break;
            };
            let declared = params.get(&format!("MediaContentType{i}")).cloned();
            found.push((url.clone(), declared));
        }
    } else if let Ok(Value::Object(root)) = serde_json::from_str::<Value>(&event.raw_body) {
        found = media_of_fields(&Fields::new(&root));
    }
    if found.is_empty() {
        if let Some(url) = &event.media_url {
            found.push((url.clone(), None));
        }
    }
    let mut out: Vec<MediaRef> = Vec::new();
    for (url, content_type) in found {
        let url = url.trim().to_owned();
        if url.is_empty() || out.iter().any(|m| m.url == url) || out.len() == MAX_MEDIA {
            continue;
        }
        out.push(MediaRef {
            n: out.len(),
            url,
            content_type: content_type.filter(|c| !c.is_empty()),
        });
    }
    out
}

/// The attachments a JSON body names: `media_url` / `mediaUrl`, then `media`, `media_urls`,
/// `mediaUrls`, `attachments` (a URL, a list of URLs, or objects with `url` and a type), at the
/// top level or in the usual nested objects.
pub fn media_of_fields(f: &Fields<'_>) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    if let Some(url) = f.string(&["media_url", "mediaUrl"]) {
        found.push((url, None));
    }
    for scope in f.scopes() {
        for name in ["media", "media_urls", "mediaUrls", "attachments"] {
            match scope.get(name) {
                Some(Value::String(url)) => found.push((url.clone(), None)),
                Some(Value::Array(items)) => found.extend(items.iter().filter_map(media_item)),
                Some(item @ Value::Object(_)) => found.extend(media_item(item)),
                _ => {}
            }
        }
    }
    found
}

/// An attachment given as a string, or as an object with its URL and maybe its type.
fn media_item(item: &Value) -> Option<(String, Option<String>)> {
    match item {
        Value::String(url) => Some((url.clone(), None)),
        Value::Object(o) => {
            let f = Fields::new(o);
            let url = f.string(&["url", "media_url", "mediaUrl", "href", "link"])?;
            let ct = f.string(&[
                "content_type",
                "contentType",
                "mime_type",
                "mimeType",
                "type",
            ]);
            Some((url, ct.filter(|c| c.contains('/'))))
        }
        _ => None,
    }
}

/// The file extension of a content type (parameters ignored), for the types messaging
/// providers carry.
pub fn ext_of_content_type(content_type: &str) -> Option<&'static str> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(match essence.as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/heic" => "heic",
        "image/heif" => "heif",
        "image/bmp" => "bmp",
        "image/tiff" => "tiff",
        "image/svg+xml" => "svg",
        "video/mp4" => "mp4",
        "video/quicktime" => "mov",
        "video/3gpp" => "3gp",
        "video/3gpp2" => "3g2",
        "video/mpeg" => "mpeg",
        "video/webm" => "webm",
        "audio/x-caf" | "audio/caf" => "caf",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => "m4a",
        "audio/aac" => "aac",
        "audio/amr" => "amr",
        "audio/ogg" => "ogg",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/webm" => "weba",
        "application/pdf" => "pdf",
        "text/vcard" | "text/x-vcard" | "text/directory" => "vcf",
        "text/calendar" => "ics",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "application/zip" => "zip",
        "application/json" => "json",
        _ => return None,
    })
}

/// The extension of a URL's last path segment, when it looks like one (1-5 letters or digits).
pub fn ext_of_url(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.next_back()?;
    let (_, ext) = last.rsplit_once('.')?;
    let ok = (1..=5).contains(&ext.len()) && ext.chars().all(|c| c.is_ascii_alphanumeric());
    ok.then(|| ext.to_ascii_lowercase())
}

/// Where attachment `m` of `event` is archived, without its extension:
/// `media/<source>/<yyyy>/<mm>/<event id>-<n>.`
pub fn key_stem(event: &Event, m: &MediaRef) -> String {
    format!(
        "{PREFIX}{}/{}/{}-{}.",
        event.source,
        event.received_at.format("%Y/%m"),
        event.id,
        m.n
    )
}

/// The extension the event itself names for `m`: from the declared content type, else the
/// URL's. `None` when only the file's server can tell (its `Content-Type`).
pub fn planned_ext(m: &MediaRef) -> Option<String> {
    m.content_type
        .as_deref()
        .and_then(ext_of_content_type)
        .map(str::to_owned)
        .or_else(|| ext_of_url(&m.url))
}

/// Where attachment `m` of `event` is archived: `media/<source>/<yyyy>/<mm>/<event id>-<n>.<ext>`,
/// when the event names its type (declared, or the URL's extension). Otherwise the extension
/// comes from the type the file is served with (`bin` if none is known) and the key is known
/// once it is downloaded.
pub fn archive_key(event: &Event, m: &MediaRef) -> Option<String> {
    planned_ext(m).map(|ext| format!("{}{ext}", key_stem(event, m)))
}

/// The archived locations of an event's attachments, as the CRM push, the analytics row and
/// `bluehook events show` carry them: `[{n, url, content_type, key, location}]` (`key` and
/// `location` null while they depend on the type the file's server answers with).
pub fn locations(event: &Event, root: &ArchiveRoot) -> Vec<Value> {
    media_of(event)
        .iter()
        .map(|m| {
            let key = archive_key(event, m);
            serde_json::json!({
                "n": m.n,
                "url": m.url,
                "content_type": m.content_type,
                "location": key.as_deref().map(|k| root.location(k)),
                "key": key,
            })
        })
        .collect()
}

/// Where the archive is, to name a key's location: `s3://<bucket>/<key>` or a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveRoot {
    S3 { bucket: String },
    Dir(PathBuf),
}

impl ArchiveRoot {
    pub fn location(&self, key: &str) -> String {
        match self {
            ArchiveRoot::S3 { bucket } => format!("s3://{bucket}/{key}"),
            ArchiveRoot::Dir(dir) => dir.join(key).to_string_lossy().into_owned(),
        }
    }
}

/// What became of one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileResult {
    pub n: usize,
    pub key: String,
    /// `stored`, `too_large`, `expired`, `invalid_url`; or `failed` (retried).
    pub state: &'static str,
    pub content_type: Option<String>,
    /// Bytes stored (or read before giving up, for `too_large`).
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// The HTTP status, when the file's server answered.
    pub status: Option<u16>,
    /// Why, for anything but `stored`: free of credentials, the URL named by its origin.
    pub detail: Option<String>,
    /// `timeout`, `connect`, `reset` for a failure without an answer.
    #[serde(skip)]
    pub class: Option<&'static str>,
}

/// A file already in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub size: u64,
    pub sha256: Option<String>,
    pub content_type: Option<String>,
}

/// Where files go: a folder locally, S3 on AWS.
#[async_trait]
pub trait MediaStore: Send + Sync {
    fn root(&self) -> ArchiveRoot;
    /// The file stored under `key` before (by an earlier attempt), if any.
    async fn stored(&self, key: &str) -> Result<Option<StoredFile>, String>;
    /// The file attachment `n` of `event` was stored as by an earlier attempt, when its key's
    /// extension came from the type served: any key starting with `stem`.
    async fn stored_under(
        &self,
        event: &Event,
        n: usize,
        stem: &str,
    ) -> Result<Option<(String, StoredFile)>, String>;
    /// Starts writing `key`; nothing is visible under it until [`MediaUpload::finish`].
    async fn create(&self, key: &str, content_type: &str) -> Result<Box<dyn MediaUpload>, String>;
    /// Keeps what became of one file (locally a row `bluehook events show` reads; on AWS the
    /// attempt's log line has it).
    async fn record(&self, event: &Event, file: &FileResult) -> Result<(), String>;
}

/// One file being written.
#[async_trait]
pub trait MediaUpload: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), String>;
    /// Makes the file visible under its key, with its digest and size.
    async fn finish(self: Box<Self>, sha256: &str, size: u64) -> Result<(), String>;
    /// Drops what was written.
    async fn abort(self: Box<Self>);
}

/// `[sinks.media]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    pub max_bytes: u64,
    /// The whole download of one file.
    pub timeout: Duration,
    /// Connections to loopback, private and link-local addresses (a redirect to the cloud's
    /// metadata address, a URL naming an internal host): allowed locally, refused on AWS.
    pub allow_private_addresses: bool,
}

impl MediaSettings {
    /// From `[sinks.media]`; `on_aws` sets the default of `allow_private_addresses` (false).
    pub fn from_config(value: &toml::Value, on_aws: bool) -> Result<MediaSettings, ConfigError> {
        let mut s = SinkSettings::new("media", value)?;
        let max_bytes = s.u64("max_bytes")?.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err(s.invalid("`max_bytes` must be at least 1"));
        }
        let timeout = Duration::from_secs(s.u64("timeout_secs")?.unwrap_or(300).max(1));
        let allow_private_addresses = s.bool("allow_private_addresses")?.unwrap_or(!on_aws);
        s.finish()?;
        Ok(MediaSettings {
            max_bytes,
            timeout,
            allow_private_addresses,
        })
    }
}

/// The credentials a source's media URLs are fetched with: Twilio's are behind the account's
/// Basic auth (the `AccountSid` of the webhook, the source's auth token).
#[derive(Clone, Default)]
pub struct MediaAuth {
    twilio_tokens: BTreeMap<String, Secret>,
}

impl MediaAuth {
    /// From the configured sources and their resolved secrets (the first secret of a Twilio
    /// source is its current auth token).
    pub fn new(sources: impl IntoIterator<Item = (String, String, Option<Secret>)>) -> MediaAuth {
        let twilio_tokens = sources
            .into_iter()
            .filter(|(_, provider, _)| provider == "twilio")
            .filter_map(|(name, _, secret)| Some((name, secret?)))
            .collect();
        MediaAuth { twilio_tokens }
    }

    fn basic(&self, event: &Event) -> Option<(String, &Secret)> {
        let token = self.twilio_tokens.get(&event.source)?;
        let sid = form_urlencoded::parse(event.raw_body.as_bytes())
            .find(|(k, _)| k == "AccountSid")
            .map(|(_, v)| v.into_owned())?;
        Some((sid, token))
    }
}

/// The Basic-auth credentials of every Twilio source in `config` (secrets resolved like the
/// ingress's: `env:`, `ssm:`, literal).
pub async fn media_auth_from_config(
    config: &crate::config::Config,
    ssm: Option<&dyn crate::config::SsmReader>,
) -> Result<MediaAuth, ConfigError> {
    let mut sources = Vec::new();
    for (name, source) in &config.sources {
        if source.provider != "twilio" {
            continue;
        }
        let secrets = crate::config::resolve_secrets(name, &source.secrets, ssm).await?;
        sources.push((
            name.clone(),
            source.provider.clone(),
            secrets.into_iter().next(),
        ));
    }
    Ok(MediaAuth::new(sources))
}

/// The media sink, a delivery [`Target`]: one effect per event (`effect:media:<event id>`).
pub struct MediaArchive {
    client: reqwest::Client,
    store: Arc<dyn MediaStore>,
    settings: MediaSettings,
    auth: MediaAuth,
    metrics: Arc<dyn Metrics>,
    retry: RetryPolicy,
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                // 100.64.0.0/10, shared address space (carrier NAT)
                || (o[0] == 100 && (64..128).contains(&o[1]))
                // 198.18.0.0/15, benchmarking
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link local
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves names to their public addresses only: a name pointing inside the network (by
/// accident or by DNS rebinding) connects nowhere.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a URL may be fetched: http or https, and (unless private addresses are allowed) not
/// naming a non-public address or `localhost` literally.
fn url_allowed(url: &reqwest::Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{}` URLs are not fetched", url.scheme()));
    }
    if allow_private {
        return Ok(());
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Err("a non-public address".into())
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Err("a non-public address".into())
        }
        Some(url::Host::Domain(d))
            if d.eq_ignore_ascii_case("localhost")
                || d.to_ascii_lowercase().ends_with(".localhost") =>
        {
            Err("a non-public address".into())
        }
        None => Err("no host".into()),
        _ => Ok(()),
    }
}

/// The client media is fetched with: a download timeout, up to five redirects (each checked
/// like the first URL), and on AWS only public addresses.
pub fn media_client(settings: &MediaSettings) -> reqwest::Client {
    let allow_private = settings.allow_private_addresses;
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        match url_allowed(attempt.url(), allow_private) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(format!("redirect refused: {why}")),
        }
    });
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .redirect(redirects)
        .user_agent(concat!("bluehook/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        builder = builder.dns_resolver(PublicOnly);
    }
    builder.build().expect("an HTTP client with rustls builds")
}

/// The origin of a URL, the only part of it logs and errors name.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "<invalid URL>".into())
}

impl MediaArchive {
    pub fn new(
        store: Arc<dyn MediaStore>,
        settings: MediaSettings,
        auth: MediaAuth,
        metrics: Arc<dyn Metrics>,
        retry: RetryPolicy,
    ) -> MediaArchive {
        MediaArchive {
            client: media_client(&settings),
            store,
            settings,
            auth,
            metrics,
            retry,
        }
    }

    pub fn root(&self) -> ArchiveRoot {
        self.store.root()
    }

    /// Downloads attachment `m` of `event` into the store (or finds it there).
    pub async fn fetch(&self, event: &Event, m: &MediaRef) -> FileResult {
        let stem = key_stem(event, m);
        let planned = planned_ext(m);
        let mut result = FileResult {
            n: m.n,
            key: format!("{stem}{}", planned.as_deref().unwrap_or("bin")),
            state: "failed",
            content_type: m.content_type.clone(),
            size: None,
            sha256: None,
            status: None,
            detail: None,
            class: None,
        };
        let url = match reqwest::Url::parse(&m.url) {
            Ok(u) => u,
            Err(e) => {
                result.state = "invalid_url";
                result.detail = Some(format!("not a URL: {e}"));
                return result;
            }
        };
        if let Err(why) = url_allowed(&url, self.settings.allow_private_addresses) {
            result.state = "invalid_url";
            result.detail = Some(why);
            return result;
        }
        let found = match &planned {
            Some(ext) => self
                .store
                .stored(&format!("{stem}{ext}"))
                .await
                .map(|f| f.map(|f| (format!("{stem}{ext}"), f))),
            None => self.store.stored_under(event, m.n, &stem).await,
        };
        match found {
            Ok(Some((key, f))) => {
                result.key = key;
                result.state = "stored";
                result.size = Some(f.size);
                result.sha256 = f.sha256;
                result.content_type = f.content_type.or(result.content_type);
                return result;
            }
            Ok(None) => {}
            Err(e) => {
                result.detail = Some(format!("archive: {e}"));
                result.class = Some("internal");
                return result;
            }
        }
        let mut request = self.client.get(url);
        if let Some((user, token)) = self.auth.basic(event) {
            request = request.basic_auth(user, Some(token.expose()));
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let e = SinkError::from_reqwest(e);
                result.detail = Some(e.message);
                result.class = e.class;
                return result;
            }
        };
        let status = response.status();
        result.status = Some(status.as_u16());
        if matches!(status.as_u16(), 403 | 404 | 410) {
            result.state = "expired";
            result.detail = Some(format!("{} answered {status}", origin(&m.url)));
            return result;
        }
        if !status.is_success() {
            result.detail = Some(format!("{} answered {status}", origin(&m.url)));
            return result;
        }
        let max = self.settings.max_bytes;
        if let Some(len) = response.content_length().filter(|l| *l > max) {
            result.state = "too_large";
            result.size = Some(len);
            result.detail = Some(format!("{len} bytes, over max_bytes ({max})"));
            return result;
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty() && v != "application/octet-stream")
            .or_else(|| m.content_type.clone())
            .unwrap_or_else(|| "application/octet-stream".into());
        result.content_type = Some(content_type.clone());
        // Named by the event, else by the type served (a Sendblue link without an extension).
        let ext = planned
            .or_else(|| ext_of_content_type(&content_type).map(str::to_owned))
            .unwrap_or_else(|| "bin".to_owned());
        let key = format!("{stem}{ext}");
        result.key = key.clone();
        let mut upload = match self.store.create(&key, &content_type).await {
            Ok(u) => u,
            Err(e) => {
                result.detail = Some(format!("archive: {e}"));
                result.class = Some("internal");
                return result;
            }
        };
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    if size > max {
                        upload.abort().await;
                        result.state = "too_large";
                        result.size = Some(size);
                        result.detail = Some(format!(
                            "over max_bytes ({max}): stopped reading after {size} bytes"
                        ));
                        return result;
                    }
                    hasher.update(&chunk);
                    if let Err(e) = upload.write(chunk).await {
                        upload.abort().await;
                        result.detail = Some(format!("archive: {e}"));
                        result.class = Some("internal");
                        return result;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    upload.abort().await;
                    let e = SinkError::from_reqwest(e);
                    result.detail = Some(format!("after {size} bytes: {}", e.message));
                    result.class = e.class.or(Some("reset"));
                    return result;
                }
            }
        }
        let sha256 = hex::encode(hasher.finalize());
        if let Err(e) = upload.finish(&sha256, size).await {
            result.detail = Some(format!("archive: {e}"));
            result.class = Some("internal");
            return result;
        }
        result.state = "stored";
        result.size = Some(size);
        result.sha256 = Some(sha256);
        self.metrics.incr("media.stored", 1);
        self.metrics.incr("media.bytes", size);
        result
    }
}

#[async_trait]
impl Target for MediaArchive {
    type Work = Vec<MediaRef>;

    fn name(&self) -> &str {
        "media"
    }

    fn policy(&self) -> Policy {
        Policy {
            retry: self.retry,
            effects: "media",
            // Up to ten downloads, each within the timeout.
            lease: self.settings.timeout * MAX_MEDIA as u32 + Duration::from_secs(60),
            ttl: Duration::from_secs(7 * 24 * 3600),
            // Storing a file again under the same key changes nothing.
            repeat_unknown: true,
            rate_limit_per_sec: None,
        }
    }

    async fn plan(&self, event: &Event) -> Result<Planned<Vec<MediaRef>>, String> {
        let media = media_of(event);
        if media.is_empty() {
            return Ok(Planned::Skip("no_media"));
        }
        Ok(Planned::Effect {
            key: event.id.clone(),
            work: media,
        })
    }

    async fn perform(&self, event: &Event, media: &Vec<MediaRef>) -> Outcome {
        let mut failed: Option<FileResult> = None;
        let mut summary: BTreeMap<&'static str, usize> = BTreeMap::new();
        for m in media {
            let file = self.fetch(event, m).await;
            *summary.entry(file.state).or_default() += 1;
            match file.state {
                "too_large" => self.metrics.incr("media.too_large", 1),
                "expired" => self.metrics.incr("media.expired", 1),
                "invalid_url" => self.metrics.incr("media.invalid_url", 1),
                _ => {}
            }
            tracing::info!(
                sink = "media", event_id = %event.id, n = file.n, key = %file.key,
                state = file.state, size = file.size, sha256 = file.sha256.as_deref(),
                content_type = file.content_type.as_deref(), status = file.status,
                detail = file.detail.as_deref(), origin = %origin(&m.url), "media file"
            );
            if let Err(e) = self.store.record(event, &file).await {
                tracing::warn!(event_id = %event.id, error = %e, "media file result not recorded");
            }
            if file.state == "failed" && failed.is_none() {
                failed = Some(file);
            }
        }
        let summary = summary
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", ");
        match failed {
            // The files stored stay; the next attempt downloads only the others.
            Some(f) => Outcome::Failed {
                status: f.status,
                error: f.class,
                detail: Some(format!(
                    "file {}: {} ({summary})",
                    f.n,
                    f.detail.unwrap_or_default()
                )),
                retry_after: None,
                definite: true,
            },
            None => Outcome::Done {
                status: None,
                result: Some(summary),
            },
        }
    }
}

/// The archive under a data folder (`<data-dir>/media/...`), each file's result in SQLite.
pub struct LocalMediaStore {
    data_dir: PathBuf,
    db: Db,
}

impl LocalMediaStore {
    pub fn new(data_dir: PathBuf, db: Db) -> LocalMediaStore {
        LocalMediaStore { data_dir, db }
    }

    fn path(&self, key: &str) -> Result<PathBuf, String> {
        if !key.starts_with(PREFIX)
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(format!("refusing key `{key}`"));
        }
        Ok(self.data_dir.join(key))
    }
}

struct LocalUpload {
    file: tokio::fs::File,
    partial: PathBuf,
    path: PathBuf,
}

#[async_trait]
impl MediaUpload for LocalUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        self.file.write_all(&chunk).await.map_err(|e| e.to_string())
    }

    async fn finish(self: Box<Self>, _sha256: &str, _size: u64) -> Result<(), String> {
        let LocalUpload {
            file,
            partial,
            path,
        } = *self;
        file.sync_all().await.map_err(|e| e.to_string())?;
        drop(file);
        let dir = path.parent().expect("keys have a folder").to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| e.to_string())?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| e.to_string())?;
        // The rename itself survives a crash once its folder is synced.
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

#[async_trait]
impl MediaStore for LocalMediaStore {
    fn root(&self) -> ArchiveRoot {
        ArchiveRoot::Dir(self.data_dir.clone())
    }

    async fn stored(&self, key: &str) -> Result<Option<StoredFile>, String> {
        let path = self.path(key)?;
        let key = key.to_owned();
        let row = self
            .db
            .read(move |c| {
                use rusqlite::OptionalExtension;
                c.query_row(
                    "SELECT size, sha256, content_type FROM media_files
                     WHERE key = ?1 AND state = 'stored'",
                    [key],
                    |r| {
                        Ok(StoredFile {
                            size: r.get::<_, i64>(0)? as u64,
                            sha256: r.get(1)?,
                            content_type: r.get(2)?,
                        })
                    },
                )
                .optional()
            })
            .await
            .map_err(|e| e.to_string())?;
        // The row and the file both: a file whose row was lost is fetched again (and replaced).
        match row {
            Some(f) if tokio::fs::metadata(&path).await.ok().map(|m| m.len()) == Some(f.size) => {
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }

    async fn stored_under(
        &self,
        event: &Event,
        n: usize,
        stem: &str,
    ) -> Result<Option<(String, StoredFile)>, String> {
        let event_id = event.id.clone();
        let key: Option<String> = self
            .db
            .read(move |c| {
                use rusqlite::OptionalExtension;
                c.query_row(
                    "SELECT key FROM media_files
                     WHERE event_id = ?1 AND n = ?2 AND state = 'stored'",
                    rusqlite::params![event_id, n as i64],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .map_err(|e| e.to_string())?;
        match key.filter(|k| k.starts_with(stem)) {
            Some(key) => Ok(self.stored(&key).await?.map(|f| (key, f))),
            None => Ok(None),
        }
    }

    async fn create(&self, key: &str, _content_type: &str) -> Result<Box<dyn MediaUpload>, String> {
        let path = self.path(key)?;
        let partial_dir = self.data_dir.join(PREFIX).join(".partial");
        tokio::fs::create_dir_all(&partial_dir)
            .await
            .map_err(|e| e.to_string())?;
        let partial = partial_dir.join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(LocalUpload {
            file,
            partial,
            path,
        }))
    }

    async fn record(&self, event: &Event, file: &FileResult) -> Result<(), String> {
        let (event_id, f) = (event.id.clone(), file.clone());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO media_files(event_id, n, key, state, content_type, size, sha256,
                        status, detail, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT(event_id, n) DO UPDATE SET key = ?3, state = ?4,
                        content_type = ?5, size = ?6, sha256 = ?7, status = ?8, detail = ?9,
                        at_ms = ?10",
                )?
                .execute(rusqlite::params![
                    event_id,
                    f.n as i64,
                    f.key,
                    f.state,
                    f.content_type,
                    f.size.map(|s| s as i64),
                    f.sha256,
                    f.status,
                    f.detail,
                    crate::sqlite::now_ms()
                ])
                .map(|_| ())
            })
            .await
            .map_err(|e| e.to_string())
    }
}

/// What the archive holds for an event, as `bluehook events show` prints it: each attachment
/// with its location and what became of it (`pending` before its first attempt).
pub fn local_files(
    c: &rusqlite::Connection,
    event: &Event,
    data_dir: &std::path::Path,
) -> rusqlite::Result<Vec<Value>> {
    let mut st = c.prepare_cached(
        "SELECT n, state, content_type, size, sha256, status, detail, at_ms, key
         FROM media_files WHERE event_id = ?1",
    )?;
    // Each attachment's outcome, and the key it was recorded under.
    let rows: BTreeMap<i64, (Value, String)> = st
        .query_map([&event.id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (
                    serde_json::json!({
                        "state": r.get::<_, String>(1)?,
                        "content_type": r.get::<_, Option<String>>(2)?,
                        "size": r.get::<_, Option<i64>>(3)?,
                        "sha256": r.get::<_, Option<String>>(4)?,
                        "status": r.get::<_, Option<i64>>(5)?,
                        "detail": r.get::<_, Option<String>>(6)?,
                        "at_ms": r.get::<_, i64>(7)?,
                    }),
                    r.get::<_, String>(8)?,
                ),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let root = ArchiveRoot::Dir(data_dir.to_owned());
    Ok(locations(event, &root)
        .into_iter()
        .map(|mut loc| {
            let n = loc["n"].as_i64().unwrap_or(-1);
            let obj = loc.as_object_mut().expect("an object");
            match rows.get(&n) {
                Some((row, key)) => {
                    for (k, v) in row.as_object().into_iter().flatten() {
                        if k == "content_type" && v.is_null() {
                            continue;
                        }
                        obj.insert(k.clone(), v.clone());
                    }
                    // A file named by the type it was served with: its key once stored.
                    if obj["key"].is_null() && row["state"] == "stored" {
                        obj.insert("location".into(), root.location(key).into());
                        obj.insert("key".into(), key.clone().into());
                    }
                }
                None => {
                    obj.insert("state".into(), "pending".into());
                }
            }
            loc
        })
        .collect())
}

#[cfg(feature = "lambda")]
pub use s3::S3MediaStore;

#[cfg(feature = "lambda")]
mod s3 {
    use super::*;
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};

    /// Parts of a multipart upload: S3's minimum is 5 MiB (but for the last).
    pub const PART_BYTES: usize = 8 * 1024 * 1024;

    /// The archive in the template's bucket, under `media/`; the SHA-256 in the object's
    /// metadata (`x-amz-meta-sha256`).
    #[derive(Clone)]
    pub struct S3MediaStore {
        client: aws_sdk_s3::Client,
        bucket: String,
        part_bytes: usize,
    }

    impl S3MediaStore {
        pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> S3MediaStore {
            S3MediaStore {
                client,
                bucket: bucket.into(),
                part_bytes: PART_BYTES,
            }
        }
    }

    fn err<E: std::error::Error + 'static>(e: aws_sdk_s3::error::SdkError<E>) -> String {
        aws_sdk_s3::error::DisplayErrorContext(e).to_string()
    }

    struct S3Upload {
        store: S3MediaStore,
        key: String,
        content_type: String,
        buf: Vec<u8>,
        upload_id: Option<String>,
        parts: Vec<CompletedPart>,
    }

    impl S3Upload {
        async fn flush_part(&mut self) -> Result<(), String> {
            let c = &self.store.client;
            if self.upload_id.is_none() {
                let created = c
                    .create_multipart_upload()
                    .bucket(&self.store.bucket)
                    .key(&self.key)
                    .content_type(&self.content_type)
                    .send()
                    .await
                    .map_err(err)?;
                self.upload_id = created.upload_id;
                if self.upload_id.is_none() {
                    return Err("S3 gave no upload id".into());
                }
            }
            let number = self.parts.len() as i32 + 1;
            let body = std::mem::replace(&mut self.buf, Vec::with_capacity(self.store.part_bytes));
            let part = c
                .upload_part()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .upload_id(self.upload_id.as_deref().unwrap_or_default())
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(err)?;
            self.parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag)
                    .build(),
            );
            Ok(())
        }
    }

    #[async_trait]
    impl MediaUpload for S3Upload {
        async fn write(&mut self, chunk: Bytes) -> Result<(), String> {
            self.buf.extend_from_slice(&chunk);
            if self.buf.len() >= self.store.part_bytes {
                self.flush_part().await?;
            }
            Ok(())
        }

        async fn finish(mut self: Box<Self>, sha256: &str, size: u64) -> Result<(), String> {
            let c = self.store.client.clone();
            let bucket = self.store.bucket.clone();
            if self.upload_id.is_none() {
                // Small enough for one request, metadata and all.
                let body = std::mem::take(&mut self.buf);
                return c
                    .put_object()
                    .bucket(&bucket)
                    .key(&self.key)
                    .content_type(&self.content_type)
                    .metadata("sha256", sha256)
                    .metadata("size", size.to_string())
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(err);
            }
            if !self.buf.is_empty() {
                self.flush_part().await?;
            }
            c.complete_multipart_upload()
                .bucket(&bucket)
                .key(&self.key)
                .upload_id(self.upload_id.as_deref().unwrap_or_default())
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(self.parts.clone()))
                        .build(),
                )
                .send()
                .await
                .map_err(err)?;
            tracing::debug!(key = %self.key, parts = self.parts.len(), size, "multipart upload completed");
            // The digest is known only now: copied onto the object in place (server side).
            c.copy_object()
                .bucket(&bucket)
                .key(&self.key)
                .copy_source(format!("{bucket}/{}", self.key))
                .metadata_directive(MetadataDirective::Replace)
                .content_type(&self.content_type)
                .metadata("sha256", sha256)
                .metadata("size", size.to_string())
                .send()
                .await
                .map(|_| ())
                .map_err(err)
        }

        async fn abort(self: Box<Self>) {
            if let Some(id) = &self.upload_id {
                let aborted = self
                    .store
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.store.bucket)
                    .key(&self.key)
                    .upload_id(id)
                    .send()
                    .await;
                if let Err(e) = aborted {
                    tracing::warn!(key = %self.key, error = %err(e), "multipart upload not aborted (the bucket's lifecycle rule removes it)");
                }
            }
        }
    }

    #[async_trait]
    impl MediaStore for S3MediaStore {
        fn root(&self) -> ArchiveRoot {
            ArchiveRoot::S3 {
                bucket: self.bucket.clone(),
            }
        }

        async fn stored_under(
            &self,
            _event: &Event,
            _n: usize,
            stem: &str,
        ) -> Result<Option<(String, StoredFile)>, String> {
            let listed = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(stem)
                .max_keys(10)
                .send()
                .await
                .map_err(err)?;
            for object in listed.contents() {
                let Some(key) = object.key() else { continue };
                if let Some(f) = self.stored(key).await? {
                    return Ok(Some((key.to_owned(), f)));
                }
            }
            Ok(None)
        }

        async fn stored(&self, key: &str) -> Result<Option<StoredFile>, String> {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(h) => {
                    let meta = h.metadata.unwrap_or_default();
                    // An object without its digest is a multipart upload whose metadata copy
                    // did not happen: stored again.
                    let Some(sha256) = meta.get("sha256").cloned() else {
                        return Ok(None);
                    };
                    Ok(Some(StoredFile {
                        size: h.content_length.unwrap_or_default().max(0) as u64,
                        sha256: Some(sha256),
                        content_type: h.content_type,
                    }))
                }
                Err(e) => {
                    // S3 answers 403 rather than 404 for a missing key to a caller that may
                    // not list the whole bucket: either way, nothing is stored there yet.
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    if e.as_service_error().is_some_and(|s| s.is_not_found()) || status == Some(403)
                    {
                        Ok(None)
                    } else {
                        Err(err(e))
                    }
                }
            }
        }

        async fn create(
            &self,
            key: &str,
            content_type: &str,
        ) -> Result<Box<dyn MediaUpload>, String> {
            Ok(Box::new(S3Upload {
                store: self.clone(),
                key: key.to_owned(),
                content_type: content_type.to_owned(),
                buf: Vec::with_capacity(self.part_bytes),
                upload_id: None,
                parts: Vec::new(),
            }))
        }

        async fn record(&self, _event: &Event, _file: &FileResult) -> Result<(), String> {
            // On AWS the attempt's log line (and the object's metadata) is the record.
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use chrono::TimeZone;

    fn event(provider: &str, body: &str) -> Event {
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 9, 10, 0, 0).unwrap();
        Event::new(
            "src",
            provider,
            EventKind::MessageReceived,
            "k".into(),
            at,
            body.into(),
        )
    }

    #[test]
    fn twilio_lists_every_media_url_with_its_declared_type() {
        let e = event(
            "twilio",
            "AccountSid=AC1&NumMedia=2&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm%2F1&MediaContentType0=image%2Fjpeg&MediaUrl1=https%3A%2F%2Fapi.twilio.com%2Fm%2F2&MediaContentType1=text%2Fvcard",
        );
        let m = media_of(&e);
        assert_eq!(m.len(), 2);
        assert_eq!(
            archive_key(&e, &m[0]),
            Some(format!("media/src/2026/03/{}-0.jpg", e.id))
        );
        assert_eq!(
            archive_key(&e, &m[1]),
            Some(format!("media/src/2026/03/{}-1.vcf", e.id))
        );
    }

    #[test]
    fn json_media_fields_and_url_extensions() {
        let e = event(
            "generic",
            r#"{"media_url":"https://cdn.example/a/voice.CAF?sig=1","media":["https://cdn.example/b.jpg",{"url":"https://cdn.example/c","mime_type":"application/pdf"}, "https://cdn.example/a/voice.CAF?sig=1"]}"#,
        );
        let m = media_of(&e);
        let keys: Vec<String> = m.iter().filter_map(|m| archive_key(&e, m)).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(keys[0].ends_with("-0.caf"), "{keys:?}");
        assert!(keys[1].ends_with("-1.jpg"), "{keys:?}");
        assert!(keys[2].ends_with("-2.pdf"), "{keys:?}");
        // No media: nothing; an extensionless URL: named by the type served.
        assert!(media_of(&event("generic", r#"{"text":"hi"}"#)).is_empty());
        let e = event(
            "generic",
            r#"{"data":{"media_url":"https://cdn.example/x"}}"#,
        );
        let m = &media_of(&e)[0];
        assert_eq!(archive_key(&e, m), None);
        assert_eq!(key_stem(&e, m), format!("media/src/2026/03/{}-0.", e.id));
    }

    #[test]
    fn only_public_http_urls_on_aws() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(url_allowed(&u("ftp://x.example/a"), true).is_err());
        assert!(url_allowed(&u("http://127.0.0.1/a"), true).is_ok());
        for private in [
            "http://127.0.0.1/a",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.2/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://localhost:9000/",
            "http://100.100.1.1/",
        ] {
            assert!(url_allowed(&u(private), false).is_err(), "{private}");
        }
        assert!(url_allowed(&u("https://cdn.example/a.jpg"), false).is_ok());
        assert!(url_allowed(&u("http://93.184.215.14/a"), false).is_ok());
    }
}
