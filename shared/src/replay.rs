//! `bluehook replay`: moves dead-lettered messages back to the queue they came from, so they
//! are processed again (each sink's effect keys keep a replay from repeating an effect).

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};

/// Moves up to `max` messages from the dead-letter queue of the SQS queue `queue` (a name or a
/// URL) back to it. The dead-letter queue is the one the queue's redrive policy names.
pub async fn replay_sqs(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    max: u64,
) -> anyhow::Result<u64> {
    replay_sqs_where(client, queue, max, |_| true).await
}

/// Like [`replay_sqs`], moving only the messages whose body `wanted` accepts; the others stay
/// in the dead-letter queue (visible again at once).
pub async fn replay_sqs_where(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    max: u64,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<u64> {
    let url = if queue.starts_with("https://") || queue.starts_with("http://") {
        queue.to_owned()
    } else {
        client
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("queue `{queue}`: {}", DisplayErrorContext(e)))?
            .queue_url
            .unwrap_or_default()
    };
    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("queue `{queue}`: {}", DisplayErrorContext(e)))?;
    let policy = attrs
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy).cloned())
        .ok_or_else(|| {
            anyhow::anyhow!("queue `{queue}` has no dead-letter queue (no redrive policy)")
        })?;
    let policy: serde_json::Value = serde_json::from_str(&policy)?;
    let dlq_arn = policy["deadLetterTargetArn"].as_str().ok_or_else(|| {
        anyhow::anyhow!("queue `{queue}`: redrive policy without deadLetterTargetArn")
    })?;
    let dlq_name = dlq_arn.rsplit(':').next().unwrap_or_default();
    let dlq_url = client
        .get_queue_url()
        .queue_name(dlq_name)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("dead-letter queue `{dlq_name}`: {}", DisplayErrorContext(e)))?
        .queue_url
        .unwrap_or_default();

    let mut moved = 0u64;
    let mut skipped: Vec<String> = Vec::new();
    while moved < max {
        let want = (max - moved).min(10) as i32;
        let got = client
            .receive_message()
            .queue_url(&dlq_url)
            .max_number_of_messages(want)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("receive from `{dlq_name}`: {}", DisplayErrorContext(e))
            })?;
        let (messages, others): (Vec<_>, Vec<_>) = got
            .messages
            .unwrap_or_default()
            .into_iter()
            .partition(|m| wanted(m.body.as_deref().unwrap_or_default()));
        if messages.is_empty() && others.is_empty() {
            break;
        }
        skipped.extend(others.into_iter().filter_map(|m| m.receipt_handle));
        if messages.is_empty() {
            continue;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(m.body.clone().unwrap_or_default())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = client
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("send to `{queue}`: {}", DisplayErrorContext(e)))?;
        // Delete from the dead-letter queue only what reached the queue.
        for ok in sent.successful {
            let i: usize = ok.id.parse()?;
            if let Some(handle) = messages[i].receipt_handle.as_deref() {
                client
                    .delete_message()
                    .queue_url(&dlq_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("delete from `{dlq_name}`: {}", DisplayErrorContext(e))
                    })?;
                moved += 1;
            }
        }
        if !sent.failed.is_empty() {
            anyhow::bail!(
                "{} messages could not be sent back; they stay in `{dlq_name}`",
                sent.failed.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What was looked at and left: visible again now, not after the receive's 60 s.
    for handle in skipped {
        let _ = client
            .change_message_visibility()
            .queue_url(&dlq_url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await;
    }
    Ok(moved)
}
