//! Blob access: decoded contents in a byte-bounded `moka` cache, sizes from
//! object headers without decoding.
//!
//! A blob too large for the memory cache (more than an eighth of it) is
//! decoded once into a file in the spill directory on local disk, itself a
//! byte-bounded cache, and READs of it are positioned reads of that file.
//! Without it such a blob would be decoded again for every READ: a 256 MiB
//! file read in 1 MiB calls would be decoded 256 times.

use std::io;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::ObjectId;
use thiserror::Error;

use super::{PackCheck, Repo, RepoId};
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
    #[error("cannot read object {oid} from {repo}")]
    Truncated {
        repo: String,
        oid: ObjectId,
        #[source]
        source: super::PackTruncated,
    },
    #[error("cannot spill blob {oid} to {path}")]
    Spill {
        oid: ObjectId,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A decoded blob: in memory, or spilled to a file on local disk.
#[derive(Debug, Clone)]
pub enum Blob {
    Memory(Arc<[u8]>),
    Spilled(Arc<SpillFile>),
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::Spilled(file) => file.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `count` bytes from `offset`: a slice of the cached blob
    /// (shared, not copied), or bytes read from the spilled file.
    pub fn read(&self, offset: u64, count: u32) -> io::Result<bytes::Bytes> {
        match self {
            Self::Memory(bytes) => {
                let len = bytes.len();
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
                let end = start.saturating_add(count as usize).min(len);
                Ok(bytes::Bytes::from_owner(Arc::clone(bytes)).slice(start..end))
            }
            Self::Spilled(file) => {
                let start = offset.min(file.len);
                let want = (u64::from(count)).min(file.len - start) as usize;
                let mut buf = vec![0u8; want];
                file.file.read_exact_at(&mut buf, start)?;
                Ok(bytes::Bytes::from(buf))
            }
        }
    }
}

/// A blob's decoded contents in the spill directory. The file is removed
/// when the spill cache evicts it; readers holding it keep reading the
/// unlinked file until they drop it.
#[derive(Debug)]
pub struct SpillFile {
    file: std::fs::File,
    path: PathBuf,
    len: u64,
}

/// What a spilled file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpillKey {
    /// A decoded blob.
    Blob(ObjectId),
    /// The synthesized index of a repository's commit, when it is too large
    /// for the index cache (a tree of a million files has an 80 MB index,
    /// and rebuilding it for every READ would take minutes).
    Index { repo: RepoId, commit: ObjectId },
}

impl SpillKey {
    fn file_name(&self) -> String {
        match self {
            Self::Blob(oid) => oid.to_string(),
            Self::Index { repo, commit } => format!("index-{:016x}-{commit}", repo.0),
        }
    }
}

/// Where large blobs and indexes go, and how many bytes of them may stay.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    /// Removes the directory with the cache when the spill dir was made for
    /// this process.
    _owned: Option<tempfile::TempDir>,
    files: moka::sync::Cache<SpillKey, Arc<SpillFile>>,
}

impl Spill {
    /// Spills into `dir` (made if missing), keeping at most `max_bytes`.
    pub fn in_dir(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = tempfile::Builder::new()
            .prefix("git-nfsd-spill-")
            .tempdir_in(dir)?;
        Ok(Self::new(dir.path().to_owned(), Some(dir), max_bytes))
    }

    /// Spills into a new folder of the system's temp dir.
    pub fn temporary(max_bytes: u64) -> io::Result<Self> {
        Self::in_dir(&std::env::temp_dir(), max_bytes)
    }

    fn new(dir: PathBuf, owned: Option<tempfile::TempDir>, max_bytes: u64) -> Self {
        let files = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, f: &Arc<SpillFile>| u32::try_from(f.len).unwrap_or(u32::MAX))
            .eviction_listener(|_, f: Arc<SpillFile>, _| {
                let _ = std::fs::remove_file(&f.path);
            })
            .build();
        Self {
            dir,
            _owned: owned,
            files,
        }
    }

    fn write(&self, key: SpillKey, data: &[u8]) -> io::Result<Arc<SpillFile>> {
        let written = self.write_with(key, |out| out.write_all(data).map(|()| true))?;
        written.ok_or_else(|| io::Error::other("spill file not kept"))
    }

    /// Writes the spill file for `key` with `fill`, which says whether it
    /// wrote the file (`false`: nothing to keep, `None` is returned).
    fn write_with(
        &self,
        key: SpillKey,
        fill: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<bool>,
    ) -> io::Result<Option<Arc<SpillFile>>> {
        let name = key.file_name();
        let path = self.dir.join(&name);
        // Written under a temporary name, so a half-written file is never
        // read (two decodes of one blob race only to the rename).
        let partial = self
            .dir
            .join(format!("{name}.{}.partial", std::process::id()));
        let written = std::fs::File::create(&partial).and_then(|file| {
            let mut out = io::BufWriter::with_capacity(1 << 20, file);
            let keep = fill(&mut out)?;
            out.flush()?;
            Ok(keep)
        });
        match written {
            Ok(true) => {}
            Ok(false) => {
                let _ = std::fs::remove_file(&partial);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        }
        std::fs::rename(&partial, &path)?;
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok(Some(Arc::new(SpillFile { file, path, len })))
    }

    /// Writes `data` to the spill folder under `key` (once, however many
    /// callers race) and keeps it within the folder's byte budget.
    pub fn keep(&self, key: SpillKey, data: impl FnOnce() -> Vec<u8>) -> io::Result<Blob> {
        self.files
            .try_get_with(key, || self.write(key, &data()))
            .map(Blob::Spilled)
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))
    }
}

/// Decoded blobs shared by all exports (objects are content addressed, so a
/// blob is the same in every repository that has it).
#[derive(Clone)]
pub struct BlobCache {
    cache: moka::sync::Cache<ObjectId, Arc<[u8]>>,
    pub(crate) spill: Arc<Spill>,
    /// Blobs larger than this are spilled rather than kept in memory.
    large: u64,
    metrics: Arc<Metrics>,
}

impl BlobCache {
    pub fn new(max_bytes: u64, spill: Spill, metrics: Arc<Metrics>) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, blob: &Arc<[u8]>| u32::try_from(blob.len()).unwrap_or(u32::MAX))
            .build();
        Self {
            cache,
            spill: Arc::new(spill),
            large: (max_bytes / 8).max(64 << 10),
            metrics,
        }
    }

    /// Blob `oid`, decoded on first use: in memory, or spilled to disk when
    /// it is large. Concurrent first uses decode it once.
    pub fn blob(&self, repo: &Repo, oid: ObjectId) -> Result<Blob, ObjectError> {
        if let Some(bytes) = self.cache.get(&oid) {
            self.metrics.cache_hit("blob");
            return Ok(Blob::Memory(bytes));
        }
        if let Some(file) = self.spill.files.get(&SpillKey::Blob(oid)) {
            self.metrics.cache_hit("blob");
            return Ok(Blob::Spilled(file));
        }
        if self.size(repo, oid)? <= self.large {
            return self.get(repo, oid).map(Blob::Memory);
        }
        self.metrics.cache_miss("blob");
        self.spill
            .files
            .try_get_with(SpillKey::Blob(oid), || self.spill_blob(repo, oid))
            .map(Blob::Spilled)
            .map_err(|e| {
                Arc::try_unwrap(e).unwrap_or_else(|shared| shared_error(&shared, repo, oid))
            })
    }

    /// The contents of blob `oid` in memory, decoded on first use (for
    /// small blobs: symbolic link targets).
    pub fn get(&self, repo: &Repo, oid: ObjectId) -> Result<Arc<[u8]>, ObjectError> {
        if let Some(blob) = self.cache.get(&oid) {
            self.metrics.cache_hit("blob");
            return Ok(blob);
        }
        self.metrics.cache_miss("blob");
        let blob: Arc<[u8]> = Arc::from(self.decode(repo, oid)?);
        self.cache.insert(oid, Arc::clone(&blob));
        Ok(blob)
    }

    /// Writes a large blob to the spill folder: streamed when it is stored
    /// whole (so its size never has to fit in memory), decoded by gix when
    /// it is a delta.
    fn spill_blob(&self, repo: &Repo, oid: ObjectId) -> Result<Arc<SpillFile>, ObjectError> {
        intact(repo, oid)?;
        let spill_err = |source| ObjectError::Spill {
            oid,
            path: self.spill.dir.clone(),
            source,
        };
        let key = SpillKey::Blob(oid);
        let objects = repo.objects_dir();
        let streamed = self
            .spill
            .write_with(key, |out| {
                let size = super::whole::copy_whole_blob(&objects, oid, out)?;
                if let Some(size) = size {
                    self.metrics.blob_bytes_decoded.inc_by(size);
                }
                Ok(size.is_some())
            })
            .map_err(spill_err)?;
        if let Some(file) = streamed {
            return Ok(file);
        }
        let data = self.decode(repo, oid)?;
        self.spill.write(key, &data).map_err(spill_err)
    }

    fn decode(&self, repo: &Repo, oid: ObjectId) -> Result<Vec<u8>, ObjectError> {
        intact(repo, oid)?;
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
        let data = object.detach().data;
        self.metrics.blob_bytes_decoded.inc_by(data.len() as u64);
        Ok(data)
    }

    /// The size of blob `oid`, from the caches or the object's header.
    pub fn size(&self, repo: &Repo, oid: ObjectId) -> Result<u64, ObjectError> {
        match self.cached_size(oid) {
            Some(size) => Ok(size),
            None => header_size(repo, &repo.local(), &repo.check_packs(), oid),
        }
    }

    /// The size of blob `oid` when it is decoded already, in memory or
    /// spilled.
    fn cached_size(&self, oid: ObjectId) -> Option<u64> {
        if let Some(blob) = self.cache.get(&oid) {
            return Some(blob.len() as u64);
        }
        self.spill
            .files
            .get(&SpillKey::Blob(oid))
            .map(|file| file.len)
    }

    /// Reads the sizes of many blobs, for an index, and hands each to
    /// `found` with its item: on every core (up to [`SIZE_THREADS`]), each
    /// thread with one repository handle without caches, and the packs
    /// looked at every [`CHECK_PACKS_EVERY`] objects rather than before each
    /// (a look costs more than a header). Nothing is collected, so a million
    /// files cost no extra memory.
    pub fn sizes<T: Sync>(
        &self,
        repo: &Repo,
        items: &[T],
        oid_of: impl Fn(&T) -> ObjectId + Sync,
        found: impl Fn(&T, u64) + Sync,
    ) -> Result<(), ObjectError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(SIZE_THREADS)
            .min(items.len().div_ceil(PARALLEL_FROM))
            .max(1);
        if threads == 1 {
            return self.sizes_on_this_thread(repo, items, &oid_of, &found);
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(items.len().div_ceil(threads))
                .map(|part| {
                    let (oid_of, found) = (&oid_of, &found);
                    scope.spawn(move || self.sizes_on_this_thread(repo, part, oid_of, found))
                })
                .collect();
            let mut result = Ok(());
            for worker in workers {
                match worker.join() {
                    Ok(part) => result = result.and(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            result
        })
    }

    fn sizes_on_this_thread<T>(
        &self,
        repo: &Repo,
        items: &[T],
        oid_of: &impl Fn(&T) -> ObjectId,
        found: &impl Fn(&T, u64),
    ) -> Result<(), ObjectError> {
        // Headers need no decoded bases, so the handle keeps no caches.
        let mut git = repo.local();
        git.objects.unset_pack_cache();
        git.objects.unset_object_cache();
        let mut packs = repo.check_packs();
        for (i, item) in items.iter().enumerate() {
            let oid = oid_of(item);
            if let Some(size) = self.cached_size(oid) {
                found(item, size);
                continue;
            }
            if i % CHECK_PACKS_EVERY == CHECK_PACKS_EVERY - 1 {
                packs = repo.check_packs();
            }
            found(item, header_size(repo, &git, &packs, oid)?);
        }
        Ok(())
    }
}

/// At most this many threads read one index's sizes: each costs a malloc
/// arena and a repository handle, and a pack is read no faster by more.
const SIZE_THREADS: usize = 2;

/// Below this many objects per thread, [`BlobCache::sizes`] stays on fewer
/// threads.
const PARALLEL_FROM: usize = 4096;

/// Object headers [`BlobCache::sizes`] reads between two looks at the
/// pack files.
const CHECK_PACKS_EVERY: usize = 256;

/// Refuses to let gix touch a truncated pack of `repo`.
fn intact(repo: &Repo, oid: ObjectId) -> Result<(), ObjectError> {
    intact_as_of(repo, &repo.check_packs(), oid)
}

/// Refuses to let gix touch a pack `packs` found truncated.
fn intact_as_of(repo: &Repo, packs: &PackCheck, oid: ObjectId) -> Result<(), ObjectError> {
    packs.intact(&oid).map_err(|source| ObjectError::Truncated {
        repo: repo.name.clone(),
        oid,
        source,
    })
}

/// The size of blob `oid` from its object header, read through `git` once
/// `packs` says its pack is whole.
fn header_size(
    repo: &Repo,
    git: &gix::Repository,
    packs: &PackCheck,
    oid: ObjectId,
) -> Result<u64, ObjectError> {
    intact_as_of(repo, packs, oid)?;
    let header = git.find_header(oid).map_err(|source| ObjectError::Read {
        repo: repo.name.clone(),
        oid,
        source,
    })?;
    Ok(header.size())
}

/// A decode error shared by concurrent waiters (moka hands each an `Arc`):
/// the first gets it, the others a copy of its message.
fn shared_error(shared: &ObjectError, repo: &Repo, oid: ObjectId) -> ObjectError {
    ObjectError::Spill {
        oid,
        path: PathBuf::from(&repo.name),
        source: io::Error::other(shared.to_string()),
    }
}
