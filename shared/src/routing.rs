//! Routing rules: which destinations (sinks) an event goes to. `[[routes]]` in the config; an
//! event goes to the union of the destinations of every rule it matches. With no rule at all,
//! the defaults apply: every event to analytics, message events to the CRM, failed outbound
//! iMessages to the SMS fallback, events with attachments to the media archive. `media` takes
//! only events with attachments, whatever the rule that names it.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::event::{Direction, Event, EventKind, MessageStatus, Service};

/// A sink an event can be routed to; each has its own queue (and dead-letter queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Crm,
    SmsFallback,
    Analytics,
    /// The media archive: an event goes there only when it has attachments.
    Media,
}

impl Destination {
    pub const ALL: [Destination; 4] = [
        Destination::Crm,
        Destination::SmsFallback,
        Destination::Analytics,
        Destination::Media,
    ];

    /// The name used in `to = [...]` and `[sinks.<name>]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Crm => "crm",
            Destination::SmsFallback => "sms_fallback",
            Destination::Analytics => "analytics",
            Destination::Media => "media",
        }
    }

    pub fn parse(s: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The name of its queue (locally; on AWS the template's queue of the same role).
    pub fn queue_name(self) -> &'static str {
        match self {
            Destination::Crm => "crm",
            Destination::SmsFallback => "sms-fallback",
            Destination::Analytics => "analytics",
            Destination::Media => "media",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    source: Option<OneOrMany>,
    provider: Option<OneOrMany>,
    kind: Option<OneOrMany>,
    status: Option<OneOrMany>,
    service: Option<OneOrMany>,
    direction: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    when: RawWhen,
    to: OneOrMany,
}

/// One rule: every non-empty condition must hold (a list matches any of its values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    pub source: Vec<String>,
    pub provider: Vec<String>,
    pub kind: Vec<EventKind>,
    pub status: Vec<MessageStatus>,
    pub service: Vec<Service>,
    pub direction: Vec<Direction>,
    pub to: Vec<Destination>,
    /// Named `[destinations.*]` (the user's endpoints).
    pub endpoints: Vec<String>,
}

fn any_of<T: PartialEq>(wanted: &[T], got: Option<&T>) -> bool {
    wanted.is_empty() || got.is_some_and(|g| wanted.contains(g))
}

impl Rule {
    pub fn matches(&self, e: &Event) -> bool {
        any_of(&self.source, Some(&e.source))
            && any_of(&self.provider, Some(&e.provider))
            && any_of(&self.kind, Some(&e.kind))
            && any_of(&self.status, e.status.as_ref())
            && any_of(&self.service, e.service.as_ref())
            && any_of(&self.direction, e.direction.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    pub rules: Vec<Rule>,
}

fn parse_each<T>(
    i: usize,
    field: &str,
    values: Option<OneOrMany>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, ConfigError> {
    values
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|v| {
            parse(v).ok_or_else(|| {
                ConfigError::Invalid(format!("routes[{i}].when.{field}: unknown value `{v}`"))
            })
        })
        .collect()
}

fn serde_word<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

impl Routes {
    /// The default routes, used when the config has no `[[routes]]`.
    pub fn defaults() -> Routes {
        Routes {
            rules: vec![
                Rule {
                    to: vec![Destination::Analytics],
                    ..Rule::default()
                },
                Rule {
                    kind: vec![EventKind::MessageReceived, EventKind::MessageStatus],
                    to: vec![Destination::Crm],
                    ..Rule::default()
                },
                Rule {
                    kind: vec![EventKind::MessageStatus],
                    status: vec![MessageStatus::Failed],
                    service: vec![Service::IMessage],
                    direction: vec![Direction::Outbound],
                    to: vec![Destination::SmsFallback],
                    ..Rule::default()
                },
                Rule {
                    to: vec![Destination::Media],
                    ..Rule::default()
                },
            ],
        }
    }

    /// Reads `[[routes]]`; none at all means the defaults.
    pub fn from_config(values: &[toml::Value]) -> Result<Routes, ConfigError> {
        Routes::from_config_with(values, &[])
    }

    /// Reads `[[routes]]`, where `to` may also name one of `destinations` (the configured
    /// `[destinations.*]`); a name that is neither a sink nor one of them is an error.
    pub fn from_config_with(
        values: &[toml::Value],
        destinations: &[String],
    ) -> Result<Routes, ConfigError> {
        if values.is_empty() {
            return Ok(Routes::defaults());
        }
        let mut rules = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let raw: RawRule = v
                .clone()
                .try_into()
                .map_err(|e| ConfigError::Invalid(format!("routes[{i}]: {e}")))?;
            let w = raw.when;
            let (mut to, mut endpoints) = (Vec::new(), Vec::new());
            for d in raw.to.into_vec() {
                if let Some(sink) = Destination::parse(&d) {
                    to.push(sink);
                } else if destinations.contains(&d) {
                    endpoints.push(d);
                } else {
                    let mut known = vec!["crm", "sms_fallback", "analytics", "media"];
                    known.extend(destinations.iter().map(String::as_str));
                    return Err(ConfigError::Invalid(format!(
                        "routes[{i}].to: unknown destination `{d}` (known: {}; a destination of your own needs a [destinations.{d}] section)",
                        known.join(", ")
                    )));
                }
            }
            rules.push(Rule {
                source: w.source.map(OneOrMany::into_vec).unwrap_or_default(),
                provider: w.provider.map(OneOrMany::into_vec).unwrap_or_default(),
                kind: parse_each(i, "kind", w.kind, serde_word)?,
                status: parse_each(i, "status", w.status, |s| {
                    serde_word(&s.to_ascii_lowercase())
                })?,
                service: parse_each(i, "service", w.service, |s| {
                    Service::parse(s).filter(|s| *s != Service::Other)
                })?,
                direction: parse_each(i, "direction", w.direction, |s| {
                    serde_word(&s.to_ascii_lowercase())
                })?,
                to,
                endpoints,
            });
        }
        Ok(Routes { rules })
    }

    /// Where `e` goes: the union of the matching rules' destinations, in a fixed order.
    pub fn destinations(&self, e: &Event) -> Vec<Destination> {
        sorted_union(
            self.rules
                .iter()
                .filter(|r| r.matches(e))
                .flat_map(|r| r.to.iter().copied())
                .filter(|d| *d != Destination::Media || e.media_url.is_some()),
        )
    }

    /// The named destinations `e` goes to, sorted.
    pub fn endpoints(&self, e: &Event) -> Vec<String> {
        sorted_union(
            self.rules
                .iter()
                .filter(|r| r.matches(e))
                .flat_map(|r| r.endpoints.iter().cloned()),
        )
    }

    /// Every name `e` is routed to: sinks, then destinations.
    pub fn targets(&self, e: &Event) -> Vec<String> {
        let mut out: Vec<String> = self
            .destinations(e)
            .into_iter()
            .map(|d| d.as_str().to_owned())
            .collect();
        out.extend(self.endpoints(e));
        out
    }

    /// Every named destination some rule routes to.
    pub fn named(&self) -> Vec<String> {
        sorted_union(self.rules.iter().flat_map(|r| r.endpoints.iter().cloned()))
    }
}

/// The distinct items, sorted.
fn sorted_union<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = items.collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn event(
        kind: EventKind,
        status: Option<MessageStatus>,
        service: Option<Service>,
        dir: Option<Direction>,
    ) -> Event {
        let mut e = Event::new(
            "sendblue",
            "sendblue",
            kind,
            "k".into(),
            chrono::Utc::now(),
            "{}".into(),
        );
        e.status = status;
        e.service = service;
        e.direction = dir;
        e
    }

    #[test]
    fn defaults() {
        let r = Routes::defaults();
        let failed = event(
            EventKind::MessageStatus,
            Some(MessageStatus::Failed),
            Some(Service::IMessage),
            Some(Direction::Outbound),
        );
        assert_eq!(
            r.destinations(&failed),
            vec![
                Destination::Crm,
                Destination::SmsFallback,
                Destination::Analytics
            ]
        );
        let failed_sms = event(
            EventKind::MessageStatus,
            Some(MessageStatus::Failed),
            Some(Service::Sms),
            Some(Direction::Outbound),
        );
        assert_eq!(
            r.destinations(&failed_sms),
            vec![Destination::Crm, Destination::Analytics]
        );
        let read = event(
            EventKind::MessageStatus,
            Some(MessageStatus::Read),
            Some(Service::IMessage),
            Some(Direction::Outbound),
        );
        assert_eq!(
            r.destinations(&read),
            vec![Destination::Crm, Destination::Analytics]
        );
        let typing = event(EventKind::Typing, None, None, None);
        assert_eq!(r.destinations(&typing), vec![Destination::Analytics]);
        // Attachments: the media archive too, and only then.
        let mut picture = event(
            EventKind::MessageReceived,
            Some(MessageStatus::Received),
            Some(Service::IMessage),
            Some(Direction::Inbound),
        );
        assert!(!r.destinations(&picture).contains(&Destination::Media));
        picture.media_url = Some("https://cdn.example/p.jpg".into());
        assert_eq!(
            r.destinations(&picture),
            vec![Destination::Crm, Destination::Analytics, Destination::Media]
        );
    }

    #[test]
    fn configured_rules_match_every_field() {
        let c = Config::from_toml(
            r#"
[[routes]]
when = { kind = "message.status", status = ["failed", "DECLINED"], service = "imessage" }
to = ["sms_fallback", "crm"]

[[routes]]
when = { source = "twilio", direction = "inbound" }
to = "crm"

[[routes]]
to = ["analytics"]
"#,
        )
        .unwrap();
        let r = Routes::from_config(&c.routes).unwrap();
        assert_eq!(r.rules.len(), 3);
        let declined = event(
            EventKind::MessageStatus,
            Some(MessageStatus::Declined),
            Some(Service::IMessage),
            None,
        );
        assert_eq!(
            r.destinations(&declined),
            vec![
                Destination::Crm,
                Destination::SmsFallback,
                Destination::Analytics
            ]
        );
        let no_service = event(
            EventKind::MessageStatus,
            Some(MessageStatus::Failed),
            None,
            None,
        );
        assert_eq!(
            r.destinations(&no_service),
            vec![Destination::Analytics],
            "a condition on an absent field fails"
        );
        let mut inbound = event(
            EventKind::MessageReceived,
            Some(MessageStatus::Received),
            Some(Service::Sms),
            Some(Direction::Inbound),
        );
        assert_eq!(r.destinations(&inbound), vec![Destination::Analytics]);
        inbound.source = "twilio".into();
        assert_eq!(
            r.destinations(&inbound),
            vec![Destination::Crm, Destination::Analytics]
        );
    }

    #[test]
    fn routes_address_named_destinations_and_refuse_undefined_ones() {
        let c = Config::from_toml(
            r#"
[[routes]]
when = { kind = "message.received" }
to = ["bot", "crm"]

[[routes]]
to = "analytics"
"#,
        )
        .unwrap();
        let r = Routes::from_config_with(&c.routes, &["bot".into(), "desk".into()]).unwrap();
        let inbound = event(
            EventKind::MessageReceived,
            Some(MessageStatus::Received),
            None,
            Some(Direction::Inbound),
        );
        assert_eq!(r.endpoints(&inbound), vec!["bot".to_owned()]);
        assert_eq!(r.targets(&inbound), vec!["crm", "analytics", "bot"]);
        assert!(r
            .endpoints(&event(EventKind::Typing, None, None, None))
            .is_empty());
        assert_eq!(r.named(), vec!["bot".to_owned()]);
        let e = Routes::from_config(&c.routes).unwrap_err().to_string();
        assert!(
            e.contains("`bot`") && e.contains("[destinations.bot]"),
            "{e}"
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_place() {
        for (text, needle) in [
            ("[[routes]]\nto = [\"crm\", \"fax\"]", "fax"),
            (
                "[[routes]]\nwhen = { kind = \"message.sent\" }\nto = \"crm\"",
                "message.sent",
            ),
            (
                "[[routes]]\nwhen = { colour = \"blue\" }\nto = \"crm\"",
                "colour",
            ),
            (
                "[[routes]]\nwhen = { status = \"lost\" }\nto = \"crm\"",
                "lost",
            ),
        ] {
            let c = Config::from_toml(text).unwrap();
            let e = Routes::from_config(&c.routes).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("routes[0]"), "{e}");
        }
    }
}
