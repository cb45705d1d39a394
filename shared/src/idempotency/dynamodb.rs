//! Idempotency keys in DynamoDB. A claim is one conditional `PutItem`; when the condition fails,
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD` tells why, so there is never a second read.
//!
//! Item: `pk` (S, the key), `state` (`in_progress` | `completed`), `token`, `event_id`,
//! `lease_until_ms` (N), `expires_at` (N, Unix seconds: the table's TTL attribute).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::{retry_after, Claim, ClaimTimes, ClaimToken, IdempotencyStore, StoreError};

const CLAIM_CONDITION: &str = "attribute_not_exists(pk) OR expires_at <= :now_s \
     OR (#st = :in_progress AND lease_until_ms <= :now_ms)";
const HOLDER_CONDITION: &str = "#tok = :tok AND #st = :in_progress";

#[derive(Clone, Debug)]
pub struct DynamoIdempotency {
    client: Client,
    table: String,
}

impl DynamoIdempotency {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoIdempotency {
        DynamoIdempotency {
            client,
            table: table.into(),
        }
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn err<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError(DisplayErrorContext(e).to_string())
}

/// Why the claim condition failed, from the item DynamoDB returned.
fn held_claim(item: Option<&HashMap<String, AttributeValue>>, now_ms: i64) -> Claim {
    let Some(item) = item else {
        // The item vanished between the condition and the answer: let the provider retry.
        return Claim::InProgress {
            retry_after: retry_after(now_ms, now_ms),
        };
    };
    let state = item
        .get("state")
        .and_then(|v| v.as_s().ok())
        .map(String::as_str);
    if state == Some("in_progress") {
        let lease = item
            .get("lease_until_ms")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(now_ms);
        Claim::InProgress {
            retry_after: retry_after(lease, now_ms),
        }
    } else {
        Claim::Completed
    }
}

#[async_trait]
impl IdempotencyStore for DynamoIdempotency {
    async fn claim(&self, key: &str, event_id: &str, t: ClaimTimes) -> Result<Claim, StoreError> {
        let token = ClaimToken::random();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key))
            .item("state", s("in_progress"))
            .item("token", s(&token.0))
            .item("event_id", s(event_id))
            .item("lease_until_ms", n(t.lease_until_ms()))
            .item("expires_at", n(t.expires_at_secs()))
            .condition_expression(CLAIM_CONDITION)
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":now_s", n(t.now_secs()))
            .expression_attribute_values(":now_ms", n(t.now_ms))
            .expression_attribute_values(":in_progress", s("in_progress"))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Acquired(token)),
            Err(SdkError::ServiceError(se)) => match se.err() {
                PutItemError::ConditionalCheckFailedException(e) => {
                    Ok(held_claim(e.item.as_ref(), t.now_ms))
                }
                _ => Err(err(SdkError::ServiceError(se))),
            },
            Err(e) => Err(err(e)),
        }
    }

    async fn complete_with_result(
        &self,
        key: &str,
        token: &ClaimToken,
        t: ClaimTimes,
        result: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut update = "SET #st = :completed, expires_at = :exp".to_owned();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression(HOLDER_CONDITION)
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#tok", "token")
            .expression_attribute_values(":completed", s("completed"))
            .expression_attribute_values(":in_progress", s("in_progress"))
            .expression_attribute_values(":tok", s(&token.0))
            .expression_attribute_values(":exp", n(t.expires_at_secs()));
        if let Some(r) = result {
            update.push_str(", #res = :res");
            req = req
                .expression_attribute_names("#res", "result")
                .expression_attribute_values(":res", s(r));
        }
        match req.update_expression(update).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(se))
                if matches!(
                    se.err(),
                    UpdateItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                Err(StoreError("claim lost before completion".into()))
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression(HOLDER_CONDITION)
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#tok", "token")
            .expression_attribute_values(":in_progress", s("in_progress"))
            .expression_attribute_values(":tok", s(&token.0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Someone else holds it now (our lease ran out): nothing of ours to give back.
            Err(SdkError::ServiceError(se))
                if matches!(
                    se.err(),
                    DeleteItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }
}
