//! Object storage for the analytics archive: S3 on AWS, a folder locally. Objects are written
//! whole (a local object appears by rename, never half-written).

use std::path::{Path, PathBuf};

use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
#[error("object store: {0}")]
pub struct ObjectError(pub String);

#[async_trait]
pub trait ObjectStore: Send + Sync {
    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), ObjectError>;
}

#[cfg(feature = "lambda")]
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

#[cfg(feature = "lambda")]
impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> S3Store {
        S3Store {
            client,
            bucket: bucket.into(),
        }
    }
}

#[cfg(feature = "lambda")]
#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ObjectError(aws_sdk_s3::error::DisplayErrorContext(e).to_string()))
    }
}

/// Objects as files under a folder, the key as the relative path.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> LocalDir {
        LocalDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl ObjectStore for LocalDir {
    async fn put(&self, key: &str, body: Vec<u8>, _content_type: &str) -> Result<(), ObjectError> {
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(ObjectError(format!("refusing key `{key}`")));
        }
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let dir = path.parent().expect("keys have a folder");
            std::fs::create_dir_all(dir)?;
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })
        .await
        .map_err(|e| ObjectError(e.to_string()))?
        .map_err(|e| ObjectError(e.to_string()))
    }
}
