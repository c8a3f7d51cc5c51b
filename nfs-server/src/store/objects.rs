//! Blob access: decoded contents in a byte-bounded `moka` cache, sizes from
//! object headers without decoding.

use std::sync::Arc;

use gix::ObjectId;
use thiserror::Error;

use super::Repo;
use crate::metrics::Metrics;

/// Why an object could not be read; returned by [`BlobCache::get`] and
/// [`BlobCache::size`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ObjectError {
    #[error("cannot read object {oid} from {repo}")]
    Read {
        repo: String,
        oid: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("object {oid} in {repo} is a {kind}, not a blob")]
    NotABlob {
        repo: String,
        oid: ObjectId,
        kind: gix::objs::Kind,
    },
}

/// Decoded blobs shared by all exports (objects are content addressed, so a
/// blob is the same in every repository that has it).
#[derive(Clone)]
pub struct BlobCache {
    cache: moka::sync::Cache<ObjectId, Arc<[u8]>>,
    metrics: Arc<Metrics>,
}

impl BlobCache {
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, blob: &Arc<[u8]>| u32::try_from(blob.len()).unwrap_or(u32::MAX))
            .build();
        Self { cache, metrics }
    }

    /// The contents of blob `oid`, decoded on first use.
    pub fn get(&self, repo: &Repo, oid: ObjectId) -> Result<Arc<[u8]>, ObjectError> {
        if let Some(blob) = self.cache.get(&oid) {
            self.metrics.cache_hit("blob");
            return Ok(blob);
        }
        self.metrics.cache_miss("blob");
        let read_err = |source| ObjectError::Read {
            repo: repo.name.clone(),
            oid,
            source,
        };
        let git = repo.local();
        let object = git.find_object(oid).map_err(read_err)?;
        if object.kind != gix::objs::Kind::Blob {
            return Err(ObjectError::NotABlob {
                repo: repo.name.clone(),
                oid,
                kind: object.kind,
            });
        }
        let blob: Arc<[u8]> = Arc::from(object.detach().data);
        self.metrics.blob_bytes_decoded.inc_by(blob.len() as u64);
        self.cache.insert(oid, Arc::clone(&blob));
        Ok(blob)
    }

    /// The size of blob `oid`, from the cache or the object's header.
    pub fn size(&self, repo: &Repo, oid: ObjectId) -> Result<u64, ObjectError> {
        if let Some(blob) = self.cache.get(&oid) {
            return Ok(blob.len() as u64);
        }
        let header = repo
            .local()
            .find_header(oid)
            .map_err(|source| ObjectError::Read {
                repo: repo.name.clone(),
                oid,
                source,
            })?;
        Ok(header.size())
    }
}
