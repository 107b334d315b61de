//! Where rendered documents are kept: an `object_store` behind one small handle.
//!
//! The embedded default is a local directory. Object keys derive from the document id
//! (`documents/<id>.<ext>`), so a retried job overwrites its own object instead of leaving
//! a duplicate behind.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use uuid::Uuid;

use crate::Settings;
use crate::model::OutputFormat;

/// A stored object's bytes as they stream out, with their length.
pub struct ObjectStream {
    pub size: u64,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// The object store handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
}

impl Storage {
    /// Opens the configured store, creating the local directory when needed.
    pub fn open(settings: &Settings) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(&settings.storage_dir).with_context(|| {
            format!(
                "cannot create STORAGE_DIR {}",
                settings.storage_dir.display()
            )
        })?;
        let local = LocalFileSystem::new_with_prefix(&settings.storage_dir)
            .context("cannot open STORAGE_DIR")?
            .with_automatic_cleanup(true);
        Ok(Storage {
            store: Arc::new(local),
        })
    }

    /// The key a document's bytes are stored under.
    pub fn document_key(id: Uuid, format: OutputFormat) -> String {
        format!("documents/{id}.{}", format.extension())
    }

    /// Writes (or overwrites) an object.
    pub async fn put(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await
            .with_context(|| format!("cannot store object {key}"))?;
        Ok(())
    }

    /// Opens an object for streaming.
    pub async fn get(&self, key: &str) -> anyhow::Result<ObjectStream> {
        let result = self
            .store
            .get(&Path::from(key))
            .await
            .with_context(|| format!("cannot read object {key}"))?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::other).boxed();
        Ok(ObjectStream { size, stream })
    }

    /// Removes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete object {key}")),
        }
    }
}
