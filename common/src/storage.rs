//! Where rendered documents are kept: an `object_store` behind one small handle.
//!
//! Two stores: a local directory (the embedded default, `STORAGE_DIR`) or any S3-compatible
//! server (`STORAGE_URL=s3://bucket[/prefix]`, path-style addressing so MinIO, Ceph or
//! s3s-fs work as well as AWS). Object keys derive from the document id
//! (`documents/<id>.<ext>`), so a retried job overwrites its own object instead of leaving
//! a duplicate behind.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::Settings;
use crate::model::OutputFormat;

/// The folder every document object lives under.
pub const DOCUMENTS_PREFIX: &str = "documents";

/// A stored object's bytes as they stream out, with their length.
pub struct ObjectStream {
    pub size: u64,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// One object found by [`Storage::list_documents`].
pub struct StoredObject {
    pub key: String,
    pub last_modified: DateTime<Utc>,
}

/// The object store handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Kept apart for presigned URLs (S3 only).
    s3: Option<Arc<AmazonS3>>,
    /// A key prefix inside the bucket (`s3://bucket/prefix`).
    prefix: Option<String>,
}

/// Whether an error means the object is not there.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<object_store::Error>(),
        Some(object_store::Error::NotFound { .. })
    )
}

impl Storage {
    /// Opens the configured store: S3 when `STORAGE_URL` is set, else the local directory
    /// (created when needed).
    pub fn open(settings: &Settings) -> anyhow::Result<Storage> {
        match &settings.storage.url {
            Some(url) => Self::open_s3(settings, url),
            None => {
                std::fs::create_dir_all(&settings.storage.dir).with_context(|| {
                    format!(
                        "cannot create STORAGE_DIR {}",
                        settings.storage.dir.display()
                    )
                })?;
                let local = LocalFileSystem::new_with_prefix(&settings.storage.dir)
                    .context("cannot open STORAGE_DIR")?
                    .with_automatic_cleanup(true);
                Ok(Storage {
                    store: Arc::new(local),
                    s3: None,
                    prefix: None,
                })
            }
        }
    }

    fn open_s3(settings: &Settings, url: &str) -> anyhow::Result<Storage> {
        let rest = url
            .strip_prefix("s3://")
            .context("STORAGE_URL must start with s3://")?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, Some(prefix.trim_matches('/').to_owned())),
            None => (rest, None),
        };
        anyhow::ensure!(!bucket.is_empty(), "STORAGE_URL names no bucket");
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&settings.storage.s3_region)
            .with_virtual_hosted_style_request(false);
        if let Some(endpoint) = &settings.storage.s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(id) = &settings.storage.s3_access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &settings.storage.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let s3 = Arc::new(builder.build().context("invalid S3 storage settings")?);
        Ok(Storage {
            store: s3.clone(),
            s3: Some(s3),
            prefix: prefix.filter(|p| !p.is_empty()),
        })
    }

    /// The key a document's bytes are stored under.
    pub fn document_key(id: Uuid, format: OutputFormat) -> String {
        format!("{DOCUMENTS_PREFIX}/{id}.{}", format.extension())
    }

    /// The document id a key was derived from, if it is one of ours.
    pub fn document_id(key: &str) -> Option<Uuid> {
        let name = key.strip_prefix(DOCUMENTS_PREFIX)?.strip_prefix('/')?;
        let (id, _ext) = name.split_once('.')?;
        id.parse().ok()
    }

    fn path(&self, key: &str) -> Path {
        match &self.prefix {
            Some(prefix) => Path::from(format!("{prefix}/{key}")),
            None => Path::from(key),
        }
    }

    /// Writes (or overwrites) an object.
    pub async fn put(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .with_context(|| format!("cannot store object {key}"))?;
        Ok(())
    }

    /// Opens an object for streaming.
    pub async fn get(&self, key: &str) -> anyhow::Result<ObjectStream> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .with_context(|| format!("cannot read object {key}"))?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::other).boxed();
        Ok(ObjectStream { size, stream })
    }

    /// Removes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete object {key}")),
        }
    }

    /// Every document object, with its keys relative to the store's prefix.
    pub async fn list_documents(&self) -> anyhow::Result<Vec<StoredObject>> {
        let base = self.path(DOCUMENTS_PREFIX);
        let strip = self.prefix.as_ref().map(|p| format!("{p}/"));
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .context("cannot list stored documents")?;
        Ok(metas
            .into_iter()
            .map(|meta| {
                let full = meta.location.to_string();
                let key = match &strip {
                    Some(prefix) => full
                        .strip_prefix(prefix.as_str())
                        .unwrap_or(&full)
                        .to_owned(),
                    None => full,
                };
                StoredObject {
                    key,
                    last_modified: meta.last_modified,
                }
            })
            .collect())
    }

    /// Whether presigned URLs are possible (S3 storage).
    pub fn can_presign(&self) -> bool {
        self.s3.is_some()
    }

    /// A presigned GET for an object, valid `ttl`.
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> anyhow::Result<String> {
        let s3 = self.s3.as_ref().context("presigned URLs need S3 storage")?;
        let url = s3
            .signed_url(http::Method::GET, &self.path(key), ttl)
            .await
            .with_context(|| format!("cannot presign object {key}"))?;
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_keys_round_trip_to_ids() {
        let id = Uuid::now_v7();
        let key = Storage::document_key(id, OutputFormat::Pdf);
        assert_eq!(key, format!("documents/{id}.pdf"));
        assert_eq!(Storage::document_id(&key), Some(id));
        assert_eq!(Storage::document_id("documents/not-an-id.pdf"), None);
        assert_eq!(Storage::document_id("other/x.pdf"), None);
    }
}
