//! Conversation state in DynamoDB (the state table, key `pk`): messages as `msg#<source>#<handle>`,
//! conversations as `conv#<line>#<contact>`. A status moves only through a conditional
//! `UpdateItem` on its rank (and a CRM push is recorded done on the message's item,
//! `pushed_event`); each conversation time moves only forward, by condition too: one
//! conditional `UpdateItem` for the whole conversation when the event is in order, one per
//! time when it is not.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use super::sqlite::{from_word, word};
use super::{rank, Applied, Conversation, MessageState, StateStore, Update};
use crate::event::{Event, MessageStatus};
use crate::idempotency::StoreError;

#[derive(Clone, Debug)]
pub struct DynamoState {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn err<E: std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> StoreError {
    StoreError(DisplayErrorContext(e).to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_time(item: &Item, k: &str) -> Option<DateTime<Utc>> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .and_then(DateTime::from_timestamp_millis)
}

fn message_from(item: &Item, source: &str, handle: &str) -> MessageState {
    MessageState {
        source: source.to_owned(),
        handle: handle.to_owned(),
        status: get_s(item, "status")
            .and_then(|s| from_word(&s))
            .unwrap_or(MessageStatus::Unknown),
        content: get_s(item, "content"),
        service: get_s(item, "service").and_then(|s| from_word(&s)),
        line: get_s(item, "line"),
        contact: get_s(item, "contact"),
        sent_at: get_time(item, "sent_at"),
        delivered_at: get_time(item, "delivered_at"),
    }
}

/// A conditional `UpdateItem`'s answer: the item as written (`ReturnValues` permitting), or
/// `None` when its condition did not hold: an expected outcome here, not an error.
async fn conditional(
    req: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
) -> Result<Option<Item>, StoreError> {
    match req.send().await {
        Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
        Err(SdkError::ServiceError(se))
            if matches!(
                se.err(),
                UpdateItemError::ConditionalCheckFailedException(_)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(err(e)),
    }
}

/// A message's item key: `msg#<source>#<handle>`.
fn message_pk(source: &str, handle: &str) -> String {
    format!("msg#{source}#{handle}")
}

impl DynamoState {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoState {
        DynamoState {
            client,
            table: table.into(),
        }
    }

    /// `SET` of the attributes that are kept once known (content, line, contact) or replaced
    /// when given (service).
    fn keep_first<'a>(u: &Update<'a>) -> (Vec<String>, Vec<(String, AttributeValue)>) {
        let mut sets = Vec::new();
        let mut values = Vec::new();
        for (name, value) in [
            ("content", u.content),
            ("line", u.line),
            ("contact", u.contact),
        ] {
            if let Some(v) = value {
                sets.push(format!("{name} = if_not_exists({name}, :{name})"));
                values.push((format!(":{name}"), s(v)));
            }
        }
        let at_field = match u.status {
            Some(MessageStatus::Sent) => Some("sent_at"),
            Some(MessageStatus::Delivered) => Some("delivered_at"),
            _ => None,
        };
        if let Some(f) = at_field {
            sets.push(format!("{f} = if_not_exists({f}, :{f})"));
            values.push((format!(":{f}"), n(u.at.timestamp_millis())));
        }
        if let Some(svc) = u.service {
            sets.push("service = :service".to_owned());
            values.push((":service".to_owned(), s(&word(&svc))));
        }
        (sets, values)
    }

    async fn apply_message(
        &self,
        u: &Update<'_>,
        handle: &str,
        status: MessageStatus,
    ) -> Result<(bool, MessageState, bool), StoreError> {
        let pk = message_pk(u.source, handle);
        let pushed = |item: &Item| get_s(item, "pushed_event").as_deref() == Some(u.event_id);
        let (mut sets, values) = Self::keep_first(u);
        sets.push("#st = :st".into());
        sets.push("#rk = :rk".into());
        sets.push("status_event = :eid".into());
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression("attribute_not_exists(#rk) OR #rk < :rk")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#rk", "rank")
            .expression_attribute_values(":st", s(&word(&status)))
            .expression_attribute_values(":rk", n(i64::from(rank(status))))
            .expression_attribute_values(":eid", s(u.event_id))
            .return_values(ReturnValue::AllNew);
        for (k, v) in &values {
            req = req.expression_attribute_values(k, v.clone());
        }
        match conditional(req).await? {
            Some(item) => Ok((true, message_from(&item, u.source, handle), pushed(&item))),
            None => {
                // Not forward: keep what this event knows that the item lacks, status untouched.
                let (sets, values) = Self::keep_first(u);
                let mut req = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(&pk))
                    .return_values(ReturnValue::AllNew);
                req = if sets.is_empty() {
                    req.update_expression("SET #st = #st")
                        .expression_attribute_names("#st", "status")
                } else {
                    req.update_expression(format!("SET {}", sets.join(", ")))
                };
                for (k, v) in values {
                    req = req.expression_attribute_values(k, v);
                }
                let item = req
                    .send()
                    .await
                    .map_err(err)?
                    .attributes
                    .unwrap_or_default();
                // Current if this same event set the status on an earlier delivery.
                let current = get_s(&item, "status_event").as_deref() == Some(u.event_id);
                Ok((
                    current,
                    message_from(&item, u.source, handle),
                    pushed(&item),
                ))
            }
        }
    }

    /// Sets `field` (and `handle_field`) to `at` if that is later than what is stored.
    async fn move_forward(
        &self,
        pk: &str,
        field: &str,
        handle_field: Option<(&str, &str)>,
        at: i64,
    ) -> Result<(), StoreError> {
        let mut expr = format!("SET {field} = :at");
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .condition_expression(format!("attribute_not_exists({field}) OR {field} < :at"))
            .expression_attribute_values(":at", n(at));
        if let Some((hf, h)) = handle_field {
            expr.push_str(&format!(", {hf} = :h"));
            req = req.expression_attribute_values(":h", s(h));
        }
        // Not later than what is stored: nothing to move.
        conditional(req.update_expression(expr)).await.map(|_| ())
    }

    /// The conversation times `u` moves, each with the handle field set beside it.
    fn conversation_moves(u: &Update<'_>) -> Vec<(&'static str, Option<&'static str>)> {
        let mut moves = vec![if u.inbound {
            ("last_inbound_at", Some("last_inbound_handle"))
        } else {
            ("last_outbound_at", Some("last_outbound_handle"))
        }];
        if matches!(
            u.status,
            Some(MessageStatus::Delivered | MessageStatus::Read)
        ) {
            moves.push(("last_delivered_at", None));
        }
        if u.status == Some(MessageStatus::Read) {
            moves.push(("last_read_at", None));
        }
        moves
    }

    /// Every field of the conversation in one conditional `UpdateItem`, when each time this
    /// event moves is not earlier than the stored one (events in order: the usual case). `None` when
    /// one of them is not: the caller then moves each time on its own.
    async fn apply_conversation_at_once(
        &self,
        u: &Update<'_>,
        pk: &str,
        line: &str,
        contact: &str,
    ) -> Result<Option<Item>, StoreError> {
        let mut sets = vec!["line = :line".to_owned(), "contact = :contact".to_owned()];
        let mut conditions = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .expression_attribute_values(":line", s(line))
            .expression_attribute_values(":contact", s(contact))
            .expression_attribute_values(":at", n(u.at.timestamp_millis()))
            .return_values(ReturnValue::AllNew);
        for (field, handle_field) in Self::conversation_moves(u) {
            sets.push(format!("{field} = :at"));
            // `<=`: a redelivered event (same times) takes this path too, changing nothing.
            conditions.push(format!("(attribute_not_exists({field}) OR {field} <= :at)"));
            if let Some(hf) = handle_field {
                sets.push(format!("{hf} = :h"));
                req = req.expression_attribute_values(":h", s(u.handle.unwrap_or("")));
            }
        }
        if let Some(o) = u.opted_out {
            sets.push("opted_out = :o".into());
            req = req.expression_attribute_values(":o", AttributeValue::Bool(o));
        }
        if let Some(svc) = u.service {
            sets.push("service = :svc".into());
            req = req.expression_attribute_values(":svc", s(&word(&svc)));
        }
        conditional(
            req.update_expression(format!("SET {}", sets.join(", ")))
                .condition_expression(conditions.join(" AND ")),
        )
        .await
    }

    async fn apply_conversation(
        &self,
        u: &Update<'_>,
        line: &str,
        contact: &str,
    ) -> Result<Conversation, StoreError> {
        let pk = format!("conv#{line}#{contact}");
        let item = match self
            .apply_conversation_at_once(u, &pk, line, contact)
            .await?
        {
            Some(item) => item,
            None => {
                self.apply_conversation_by_field(u, &pk, line, contact)
                    .await?
            }
        };
        Ok(Conversation {
            line: line.to_owned(),
            contact: contact.to_owned(),
            last_inbound_at: get_time(&item, "last_inbound_at"),
            last_inbound_handle: get_s(&item, "last_inbound_handle").filter(|h| !h.is_empty()),
            last_outbound_at: get_time(&item, "last_outbound_at"),
            last_outbound_handle: get_s(&item, "last_outbound_handle").filter(|h| !h.is_empty()),
            last_delivered_at: get_time(&item, "last_delivered_at"),
            last_read_at: get_time(&item, "last_read_at"),
            opted_out: item
                .get("opted_out")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            service: get_s(&item, "service").and_then(|s| from_word(&s)),
        })
    }

    /// An event out of order: each time it carries moves forward on its own condition, then
    /// the other fields.
    async fn apply_conversation_by_field(
        &self,
        u: &Update<'_>,
        pk: &str,
        line: &str,
        contact: &str,
    ) -> Result<Item, StoreError> {
        let at = u.at.timestamp_millis();
        let handle = u.handle.unwrap_or("");
        for (field, handle_field) in Self::conversation_moves(u) {
            self.move_forward(pk, field, handle_field.map(|hf| (hf, handle)), at)
                .await?;
        }
        let mut sets = vec!["line = :line".to_owned(), "contact = :contact".to_owned()];
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .expression_attribute_values(":line", s(line))
            .expression_attribute_values(":contact", s(contact))
            .return_values(ReturnValue::AllNew);
        if let Some(o) = u.opted_out {
            sets.push("opted_out = :o".into());
            req = req.expression_attribute_values(":o", AttributeValue::Bool(o));
        }
        if let Some(svc) = u.service {
            sets.push("service = :svc".into());
            req = req.expression_attribute_values(":svc", s(&word(&svc)));
        }
        let item = req
            .update_expression(format!("SET {}", sets.join(", ")))
            .send()
            .await
            .map_err(err)?
            .attributes
            .unwrap_or_default();
        Ok(item)
    }
}

#[async_trait]
impl StateStore for DynamoState {
    async fn apply(&self, e: &Event) -> Result<Applied, StoreError> {
        let Some(u) = Update::of(e) else {
            return Ok(Applied {
                advanced: false,
                message: None,
                conversation: None,
                pushed: false,
            });
        };
        let (advanced, message, pushed) = match (u.handle, u.status) {
            (Some(h), Some(st)) => {
                let (a, m, p) = self.apply_message(&u, h, st).await?;
                (a, Some(m), p)
            }
            _ => (false, None, false),
        };
        let conversation = match (u.line, u.contact) {
            (Some(l), Some(c)) => Some(self.apply_conversation(&u, l, c).await?),
            _ => None,
        };
        Ok(Applied {
            advanced,
            message,
            conversation,
            pushed,
        })
    }

    fn records_pushes(&self) -> bool {
        true
    }

    /// `pushed_event` on the message's item: a redelivery of the event finds it there (the
    /// item's update answers with it) and is not pushed again. Only while the event still holds
    /// the status: a push of an event overtaken meanwhile must not overwrite the record of the
    /// event that overtook it (a redelivery of the overtaken one is stale and pushes nothing).
    async fn record_push(&self, e: &Event) -> Result<(), StoreError> {
        let Some(handle) = e.message_handle.as_deref() else {
            return Ok(());
        };
        // Refused: the event was overtaken meanwhile, and its record is not wanted.
        conditional(
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(&message_pk(&e.source, handle)))
                .update_expression("SET pushed_event = :eid")
                .condition_expression("status_event = :eid")
                .expression_attribute_values(":eid", s(&e.id)),
        )
        .await
        .map(|_| ())
    }

    async fn message(
        &self,
        source: &str,
        handle: &str,
    ) -> Result<Option<MessageState>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&message_pk(source, handle)))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        Ok(out.item.map(|item| message_from(&item, source, handle)))
    }
}
