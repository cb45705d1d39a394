//! The media archive's AWS path over moto's S3 and DynamoDB, with a fake CDN: a 20 MB file
//! goes up as an S3 multipart upload (8 MiB parts) and comes back byte for byte with its
//! SHA-256 in the object's metadata; a redelivered event stores nothing twice; an oversized
//! file aborts its upload and leaves nothing; on AWS a non-public address is not fetched.

mod common;

use std::sync::Arc;

use bluehook::delivery::{Deliver, Deliverer, RetryPolicy, Verdict};
use bluehook::event::{Event, EventKind};
use bluehook::idempotency::dynamodb::DynamoIdempotency;
use bluehook::metrics::MemoryMetrics;
use bluehook::sinks::media::{MediaArchive, MediaAuth, MediaSettings, MediaStore, S3MediaStore};
use common::cdn::{sha256_hex, sha256_of, Cdn};

fn event(key: &str, body: serde_json::Value) -> Event {
    let mut e = Event::new(
        "sb",
        "sendblue",
        EventKind::MessageReceived,
        key.into(),
        chrono::Utc::now(),
        body.to_string(),
    );
    e.media_url = body["media_url"].as_str().map(str::to_owned);
    e
}

struct Aws {
    s3: aws_sdk_s3::Client,
    bucket: String,
    store: Arc<S3MediaStore>,
    effects: Arc<DynamoIdempotency>,
}

async fn aws() -> Aws {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let bucket = common::unique("media");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let table = common::unique("effects");
    common::create_idempotency_table(&ddb, &table).await;
    Aws {
        store: Arc::new(S3MediaStore::new(s3.clone(), &bucket)),
        effects: Arc::new(DynamoIdempotency::new(ddb, table)),
        s3,
        bucket,
    }
}

fn archive(a: &Aws, max_bytes: u64, allow_private: bool) -> Deliverer<MediaArchive> {
    let settings = MediaSettings {
        max_bytes,
        timeout: std::time::Duration::from_secs(120),
        allow_private_addresses: allow_private,
    };
    let retry = RetryPolicy {
        max_attempts: 3,
        first_delay: std::time::Duration::from_secs(1),
        max_delay: std::time::Duration::from_secs(1),
    };
    Deliverer::new(
        MediaArchive::new(
            a.store.clone(),
            settings,
            MediaAuth::default(),
            Arc::new(MemoryMetrics::default()),
            retry,
        ),
        a.effects.clone(),
        Arc::new(MemoryMetrics::default()),
    )
}

async fn object(
    a: &Aws,
    key: &str,
) -> (
    Vec<u8>,
    aws_sdk_s3::operation::head_object::HeadObjectOutput,
) {
    let head =
        a.s3.head_object()
            .bucket(&a.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    let body =
        a.s3.get_object()
            .bucket(&a.bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec();
    (body, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_byte_for_byte_once_with_its_digest() {
    common::leaks::capture_logs();
    let cdn = Cdn::start().await;
    let a = aws().await;
    let media = archive(&a, 100 * 1024 * 1024, true);
    const SIZE: u64 = 20_000_000;
    let e = event(
        "sb:media:1",
        serde_json::json!({
            "media_url": format!("{}/v/clip.mp4?size={SIZE}&chunked=1", cdn.url),
            "media": [format!("{}/p/pic?size=1234&ct=image/png", cdn.url)],
        }),
    );
    let done = media.deliver_completed(&e, 1).await;
    assert_eq!(done.verdict, Verdict::Delivered, "{:?}", done.record);

    let month = e.received_at.format("%Y/%m");
    let clip_key = format!("media/sb/{month}/{}-0.mp4", e.id);
    let (clip, head) = object(&a, &clip_key).await;
    assert_eq!(clip.len() as u64, SIZE);
    assert_eq!(sha256_hex(&clip), sha256_of(SIZE));
    let meta = head.metadata.clone().unwrap_or_default();
    assert_eq!(meta.get("sha256"), Some(&sha256_of(SIZE)), "{meta:?}");
    // Multipart: three parts of 8 MiB at most.
    let logged = common::leaks::logged();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("multipart upload completed")
                && l.contains(&clip_key)
                && l.contains("\"parts\":3")),
        "no multipart upload of {clip_key} in the log"
    );
    // A link without an extension: the extension and the type from the CDN's answer.
    let pic_key = format!("media/sb/{month}/{}-1.png", e.id);
    let (pic, head) = object(&a, &pic_key).await;
    assert_eq!(sha256_hex(&pic), sha256_of(1234));
    assert_eq!(head.content_type.as_deref(), Some("image/png"));

    // Redelivered: the effect is done, nothing is fetched again.
    let again = media.deliver_completed(&e, 2).await;
    assert_eq!(again.verdict, Verdict::AlreadyDelivered);
    assert_eq!(cdn.hits("/v/clip.mp4"), 1);
    // A retry after the effect key was lost finds the objects stored: still no download.
    let file = media
        .target
        .fetch(&e, &bluehook::sinks::media::media_of(&e)[0])
        .await;
    assert_eq!(file.state, "stored");
    assert_eq!(file.sha256.as_deref(), Some(sha256_of(SIZE).as_str()));
    assert_eq!(cdn.hits("/v/clip.mp4"), 1);
    assert!(a.store.stored(&clip_key).await.unwrap().is_some());
    // The same for the file named by its served type: found by its key's stem.
    let file = media
        .target
        .fetch(&e, &bluehook::sinks::media::media_of(&e)[1])
        .await;
    assert_eq!(
        (file.state, file.key.as_str()),
        ("stored", pic_key.as_str())
    );
    assert_eq!(cdn.hits("/p/pic"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_are_aborted_and_private_addresses_refused_on_aws() {
    let cdn = Cdn::start().await;
    let a = aws().await;
    let media = archive(&a, 10_000_000, true);
    let e = event(
        "sb:media:big",
        serde_json::json!({"media_url": format!("{}/big.mov?size=20000000&chunked=1", cdn.url)}),
    );
    let done = media.deliver_completed(&e, 1).await;
    assert_eq!(done.verdict, Verdict::Delivered, "recorded, not retried");
    let file = media
        .target
        .fetch(&e, &bluehook::sinks::media::media_of(&e)[0])
        .await;
    assert_eq!(file.state, "too_large");
    let listed =
        a.s3.list_objects_v2()
            .bucket(&a.bucket)
            .send()
            .await
            .unwrap();
    assert_eq!(listed.key_count().unwrap_or(0), 0, "nothing stored");
    let uploads =
        a.s3.list_multipart_uploads()
            .bucket(&a.bucket)
            .send()
            .await
            .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the multipart upload was aborted: {:?}",
        uploads.uploads()
    );

    // AWS's defaults: a loopback URL is not fetched at all.
    let public_only = archive(&a, 10_000_000, false);
    let e = event(
        "sb:media:private",
        serde_json::json!({"media_url": format!("{}/inside.jpg?size=10", cdn.url)}),
    );
    let file = public_only
        .target
        .fetch(&e, &bluehook::sinks::media::media_of(&e)[0])
        .await;
    assert_eq!(file.state, "invalid_url", "{file:?}");
    assert_eq!(cdn.hits("/inside.jpg"), 0);
}
