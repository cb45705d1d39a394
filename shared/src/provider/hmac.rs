//! The configurable HMAC verifier (`provider = "hmac"`) and its presets: `bluemessaggio`,
//! `stripe-style` (`t=<unix>,v1=<hex>`, signed `{t}.{body}`) and `github-style`
//! (`x-hub-signature-256: sha256=<hex>`). Every part is a setting: header, algorithm (sha1,
//! sha256, sha512), encoding (hex, base64), prefix, what is signed (the body, or timestamp +
//! separator + body with the timestamp from a header or a `t=` field), tolerance, several
//! signatures in one header, several secrets. Bodies are normalised generically.

use super::generic::{self, Profile};
use super::signing::{any_mac_matches, check_timestamp, Algorithm, Encoding};
use super::{
    single_header, AuthError, ParseError, Parsed, Provider, SampleOptions, SampleRequest, Settings,
    WebhookRequest,
};
use crate::config::{ConfigError, Secret};

/// Provider names served by this module: the generic one and its presets.
pub const NAMES: &[&str] = &["hmac", "bluemessaggio", "stripe-style", "github-style"];

/// What the MAC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    Body,
    TimestampBody,
}

/// Where the signatures (and the timestamp) sit in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One or more signatures, separated by `,` or spaces, each with the optional prefix.
    Plain { timestamp_header: Option<String> },
    /// `t=<unix>,v1=<sig>[,v1=<sig>]`.
    KeyValue {
        timestamp_key: String,
        signature_key: String,
    },
}

#[derive(Debug, Clone)]
pub struct Scheme {
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub prefix: Option<String>,
    pub signed: Signed,
    pub separator: String,
    pub format: Format,
    pub tolerance_secs: u64,
}

impl Scheme {
    fn preset(name: &str) -> Option<Scheme> {
        let base = Scheme {
            header: String::new(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: None,
            signed: Signed::Body,
            separator: ".".into(),
            format: Format::Plain {
                timestamp_header: None,
            },
            tolerance_secs: 300,
        };
        match name {
            "hmac" | "bluemessaggio" => Some(base),
            "github-style" => Some(Scheme {
                header: "x-hub-signature-256".into(),
                prefix: Some("sha256=".into()),
                ..base
            }),
            "stripe-style" => Some(Scheme {
                header: "stripe-signature".into(),
                signed: Signed::TimestampBody,
                format: Format::KeyValue {
                    timestamp_key: "t".into(),
                    signature_key: "v1".into(),
                },
                ..base
            }),
            _ => None,
        }
    }

    /// Signs `body` at `timestamp` under `key`: the header value a sender would send.
    pub fn sign(&self, key: &[u8], timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mac = match self.signed {
            Signed::Body => self.algorithm.mac(key, &[body]),
            Signed::TimestampBody => self
                .algorithm
                .mac(key, &[ts.as_bytes(), self.separator.as_bytes(), body]),
        };
        let sig = format!(
            "{}{}",
            self.prefix.as_deref().unwrap_or(""),
            self.encoding.encode(&mac)
        );
        match &self.format {
            Format::Plain { .. } => sig,
            Format::KeyValue {
                timestamp_key,
                signature_key,
            } => format!("{timestamp_key}={ts},{signature_key}={sig}"),
        }
    }
}

/// Decoded signatures of a request, and its timestamp when the header or scheme carries one.
type Presented = (Vec<Vec<u8>>, Option<Vec<u8>>);

#[derive(Debug)]
pub struct HmacProvider {
    name: &'static str,
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
}

impl HmacProvider {
    pub fn new(name: &'static str, scheme: Scheme, secrets: &[Secret]) -> HmacProvider {
        HmacProvider {
            name,
            scheme,
            keys: secrets
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .collect(),
        }
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    pub fn from_settings(
        settings: Settings<'_>,
        secrets: Vec<Secret>,
    ) -> Result<HmacProvider, ConfigError> {
        let preset_name = match settings.provider {
            "hmac" => settings.str("preset")?.unwrap_or("hmac"),
            p => p,
        };
        let name = NAMES
            .iter()
            .find(|n| **n == preset_name)
            .copied()
            .ok_or_else(|| settings.invalid(format!("unknown preset `{preset_name}` (known: bluemessaggio, stripe-style, github-style)")))?;
        let mut s = Scheme::preset(name).expect("every name has a preset");
        if let Some(h) = settings.str("header")? {
            s.header = h.to_ascii_lowercase();
        }
        if s.header.is_empty() {
            return Err(settings.invalid(if name == "bluemessaggio" {
                "set `header` to the signature header name shown in your Bluemessaggio console (it is not published)"
            } else {
                "set `header` to the name of the signature header"
            }));
        }
        if let Some(a) = settings.str("algorithm")? {
            s.algorithm = Algorithm::parse(a)
                .ok_or_else(|| settings.invalid("`algorithm` must be sha1, sha256 or sha512"))?;
        }
        if let Some(e) = settings.str("encoding")? {
            s.encoding = Encoding::parse(e)
                .ok_or_else(|| settings.invalid("`encoding` must be hex or base64"))?;
        }
        if let Some(p) = settings.str("prefix")? {
            s.prefix = Some(p.to_owned()).filter(|p| !p.is_empty());
        }
        if let Some(sep) = settings.str("separator")? {
            s.separator = sep.to_owned();
        }
        if let Some(t) = settings.u64("tolerance_secs")? {
            s.tolerance_secs = t;
        }
        if let Some(signed) = settings.str("signed")? {
            s.signed = match signed {
                "body" => Signed::Body,
                "timestamp.body" | "timestamp_body" => Signed::TimestampBody,
                _ => {
                    return Err(settings.invalid("`signed` must be \"body\" or \"timestamp.body\""))
                }
            };
        }
        let timestamp_header = settings.str("timestamp_header")?;
        let format = settings.str("format")?;
        let timestamp_key = settings.str("timestamp_key")?;
        let signature_key = settings.str("signature_key")?;
        match format {
            Some("plain") => {
                s.format = Format::Plain {
                    timestamp_header: None,
                }
            }
            Some("kv") => {
                s.format = Format::KeyValue {
                    timestamp_key: "t".into(),
                    signature_key: "v1".into(),
                }
            }
            Some(_) => {
                return Err(settings.invalid("`format` must be \"plain\" or \"kv\" (t=...,v1=...)"))
            }
            None => {}
        }
        match &mut s.format {
            Format::Plain {
                timestamp_header: th,
            } => {
                *th = timestamp_header.map(str::to_ascii_lowercase);
                if s.signed == Signed::TimestampBody && th.is_none() {
                    return Err(settings.invalid(
                        "a signed timestamp needs `timestamp_header` (or `format = \"kv\"`)",
                    ));
                }
            }
            Format::KeyValue {
                timestamp_key: tk,
                signature_key: sk,
            } => {
                if let Some(k) = timestamp_key {
                    *tk = k.to_owned();
                }
                if let Some(k) = signature_key {
                    *sk = k.to_owned();
                }
            }
        }
        settings.finish()?;
        Ok(HmacProvider::new(name, s, &secrets))
    }

    /// The presented signatures and timestamp of a request.
    fn presented(&self, req: &WebhookRequest<'_>) -> Result<Presented, AuthError> {
        let raw = single_header(req.headers, &self.scheme.header)?;
        let raw = std::str::from_utf8(raw).map_err(|_| AuthError::MalformedSignature)?;
        let decode = |s: &str| -> Option<Vec<u8>> {
            let s = s.trim();
            let s = match &self.scheme.prefix {
                Some(p) => s.strip_prefix(p.as_str())?,
                None => s,
            };
            self.scheme.encoding.decode(s)
        };
        let (sigs, ts): (Vec<Vec<u8>>, Option<Vec<u8>>) = match &self.scheme.format {
            Format::Plain { timestamp_header } => {
                let sigs = raw
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .filter_map(decode)
                    .collect();
                let ts = match timestamp_header {
                    Some(h) => Some(
                        match single_header(req.headers, h) {
                            Err(AuthError::MissingSignature) => Err(AuthError::MissingTimestamp),
                            other => other,
                        }?
                        .to_vec(),
                    ),
                    None => None,
                };
                (sigs, ts)
            }
            Format::KeyValue {
                timestamp_key,
                signature_key,
            } => {
                let mut sigs = Vec::new();
                let mut ts = None;
                for pair in raw.split(',') {
                    let Some((k, v)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    if k == timestamp_key {
                        if ts.is_some() {
                            return Err(AuthError::MalformedSignature);
                        }
                        ts = Some(v.as_bytes().to_vec());
                    } else if k == signature_key {
                        sigs.extend(decode(v));
                    }
                }
                (sigs, ts)
            }
        };
        if sigs.is_empty() {
            return Err(AuthError::MalformedSignature);
        }
        Ok((sigs, ts))
    }
}

impl Provider for HmacProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError> {
        let (sigs, ts) = self.presented(req)?;
        if self.keys.is_empty() {
            return Err(AuthError::NoSecrets);
        }
        let matched = match self.scheme.signed {
            Signed::Body => any_mac_matches(self.scheme.algorithm, &self.keys, &[req.body], &sigs),
            Signed::TimestampBody => {
                let ts = ts.ok_or(AuthError::MissingTimestamp)?;
                check_timestamp(&ts, req.received_at.timestamp(), self.scheme.tolerance_secs)?;
                let parts: [&[u8]; 3] = [&ts, self.scheme.separator.as_bytes(), req.body];
                any_mac_matches(self.scheme.algorithm, &self.keys, &parts, &sigs)
            }
        };
        if matched {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError> {
        let ev = generic::parse_event(
            req,
            &Profile {
                provider: self.name,
                delivery_id: None,
                default_service: None,
            },
        )?;
        Ok(Parsed::Events(vec![ev]))
    }

    fn sample(
        &self,
        event: &str,
        opts: &SampleOptions,
        url: &str,
    ) -> Result<SampleRequest, String> {
        let key = self
            .keys
            .first()
            .ok_or("the source has no secret to sign with")?;
        let channel = if self.name == "bluemessaggio" {
            "WhatsApp"
        } else {
            "SMS"
        };
        let body =
            serde_json::to_vec(&generic::sample_body(event, opts, channel)?).expect("serialises");
        let now = chrono::Utc::now().timestamp();
        let mut headers = vec![(
            self.scheme.header.clone(),
            self.scheme.sign(key, now, &body),
        )];
        if let Format::Plain {
            timestamp_header: Some(h),
        } = &self.scheme.format
        {
            headers.push((h.clone(), now.to_string()));
        }
        Ok(SampleRequest {
            url: url.to_owned(),
            content_type: "application/json",
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceConfig;
    use chrono::{DateTime, Utc};
    use http::HeaderMap;

    fn build(toml_text: &str, secrets: &[&str]) -> Result<HmacProvider, ConfigError> {
        let c: SourceConfig = toml::from_str(toml_text).unwrap();
        let secrets = secrets.iter().map(|s| Secret::new(*s)).collect();
        HmacProvider::from_settings(Settings::new("src", &c.provider, &c.settings), secrets)
    }

    fn req<'a>(h: &'a HeaderMap, body: &'a [u8], now: i64) -> WebhookRequest<'a> {
        WebhookRequest {
            source: "src",
            type_hint: None,
            headers: h,
            query: None,
            body,
            received_at: DateTime::<Utc>::from_timestamp(now, 0).unwrap(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn github_style() {
        let p = build(
            "provider = \"github-style\"",
            &["It's a Secret to Everybody"],
        )
        .unwrap();
        // GitHub's documented example.
        let body = b"Hello, World!";
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(p.verify(&req(&h, body, 0)), Ok(()));
        let h = headers(&[(
            "x-hub-signature-256",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(
            p.verify(&req(&h, body, 0)),
            Err(AuthError::MalformedSignature),
            "prefix required"
        );
        assert_eq!(
            p.verify(&req(&HeaderMap::new(), body, 0)),
            Err(AuthError::MissingSignature)
        );
    }

    #[test]
    fn stripe_style_with_rotation_and_tolerance() {
        let p = build("provider = \"stripe-style\"", &["whsec_old", "whsec_new"]).unwrap();
        let body = br#"{"id":"evt_1","type":"message.delivered"}"#;
        let now = 1_700_000_000;
        let new_sig = p.scheme().sign(b"whsec_new", now, body);
        assert!(new_sig.starts_with(&format!("t={now},v1=")));
        let h = headers(&[("stripe-signature", &new_sig)]);
        assert_eq!(p.verify(&req(&h, body, now + 299)), Ok(()));
        assert_eq!(
            p.verify(&req(&h, body, now + 301)),
            Err(AuthError::TimestampOutOfTolerance)
        );
        assert_eq!(
            p.verify(&req(&h, body, now - 301)),
            Err(AuthError::TimestampOutOfTolerance)
        );
        // Several v1 signatures: any may match.
        let old_mac = p.scheme().sign(b"whsec_old", now, body);
        let both = format!(
            "{},v1=00ff,{}",
            new_sig.split(',').next().unwrap(),
            old_mac.split(',').nth(1).unwrap()
        );
        let h = headers(&[("stripe-signature", &both)]);
        assert_eq!(p.verify(&req(&h, body, now)), Ok(()));
        // The timestamp is signed: moving it breaks the signature.
        let moved = new_sig.replace(&format!("t={now}"), &format!("t={}", now + 1));
        let h = headers(&[("stripe-signature", &moved)]);
        assert_eq!(p.verify(&req(&h, body, now)), Err(AuthError::BadSignature));
        let h = headers(&[("stripe-signature", "v1=abcd")]);
        assert_eq!(
            p.verify(&req(&h, body, now)),
            Err(AuthError::MissingTimestamp)
        );
    }

    #[test]
    fn bluemessaggio_needs_its_header_and_takes_every_option() {
        let err = build("provider = \"bluemessaggio\"", &["s"]).unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
        let p = build(
            "provider = \"hmac\"\npreset = \"bluemessaggio\"\nheader = \"X-BM-Signature\"\nalgorithm = \"sha512\"\nencoding = \"base64\"\nsigned = \"timestamp.body\"\ntimestamp_header = \"x-bm-timestamp\"\nseparator = \":\"",
            &["bm-secret"],
        )
        .unwrap();
        assert_eq!(p.name(), "bluemessaggio");
        let body = br#"{"type":"message.read","data":{"message_id":"m1","channel":"whatsapp"}}"#;
        let now = 1_700_000_000;
        let sig = p.scheme().sign(b"bm-secret", now, body);
        let h = headers(&[
            ("x-bm-signature", &sig),
            ("x-bm-timestamp", &now.to_string()),
        ]);
        assert_eq!(p.verify(&req(&h, body, now)), Ok(()));
        let h = headers(&[("x-bm-signature", &sig)]);
        assert_eq!(
            p.verify(&req(&h, body, now)),
            Err(AuthError::MissingTimestamp)
        );
        let Parsed::Events(evs) = p.parse(&req(&h, body, now)).unwrap() else {
            panic!()
        };
        assert_eq!(evs[0].status, Some(crate::event::MessageStatus::Read));
        assert_eq!(evs[0].service, Some(crate::event::Service::WhatsApp));
        assert_eq!(evs[0].provider, "bluemessaggio");
    }

    #[test]
    fn plain_sha1_hex_with_several_signatures() {
        let p = build(
            "provider = \"hmac\"\nheader = \"x-sig\"\nalgorithm = \"sha1\"",
            &["k1", "k2"],
        )
        .unwrap();
        let body = b"{}";
        let good = hex::encode(Algorithm::Sha1.mac(b"k2", &[body]));
        let h = headers(&[("x-sig", &format!("deadbeef, {good}"))]);
        assert_eq!(p.verify(&req(&h, body, 0)), Ok(()));
        let h = headers(&[("x-sig", &good), ("x-sig", &good)]);
        assert_eq!(p.verify(&req(&h, body, 0)), Err(AuthError::DuplicateHeader));
        let empty = build("provider = \"hmac\"\nheader = \"x-sig\"", &[]).unwrap();
        let h = headers(&[("x-sig", &good)]);
        assert_eq!(empty.verify(&req(&h, body, 0)), Err(AuthError::NoSecrets));
    }

    #[test]
    fn bad_settings_are_refused_at_start() {
        for bad in [
            "provider = \"hmac\"\nheader = \"x\"\nalgorithm = \"md5\"",
            "provider = \"hmac\"\nheader = \"x\"\nencoding = \"base32\"",
            "provider = \"hmac\"\nheader = \"x\"\nsigned = \"timestamp.body\"",
            "provider = \"hmac\"\nheader = \"x\"\nheadr = \"y\"",
            "provider = \"hmac\"\npreset = \"nope\"\nheader = \"x\"",
            "provider = \"hmac\"",
        ] {
            assert!(build(bad, &["s"]).is_err(), "{bad}");
        }
    }
}
