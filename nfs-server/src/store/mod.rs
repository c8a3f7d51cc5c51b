//! The store of git repositories: discovery on disk, opening with `gix`, and
//! object access through bounded caches.
//!
//! Architecture invariant: nothing here writes to the store. Repositories are
//! opened isolated from the environment and global git configuration.

mod objects;
mod scan;
mod whole;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use crate::fs::dotgit::content::RefEntry;
pub use objects::{Blob, BlobCache, ObjectError, Spill, SpillKey};
pub use scan::ScanError;

/// Stable identity of a repository: a hash of its export name, the same on
/// every server that has the repository under that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId(pub u64);

impl RepoId {
    pub fn of_name(name: &str) -> Self {
        Self(xxhash_rust::xxh3::xxh3_64(name.as_bytes()))
    }
}

/// One repository of the store.
pub struct Repo {
    pub name: String,
    pub id: RepoId,
    pub path: PathBuf,
    git: gix::ThreadSafeRepository,
    /// The size each pack file had when first seen. Packs never change
    /// size; one that shrank was truncated, and reading it through gix's
    /// memory map would kill the process (SIGBUS).
    pack_sizes: Mutex<HashMap<PathBuf, PackSeen>>,
}

#[derive(Clone)]
struct PackSeen {
    size: u64,
    reported: bool,
    /// The pack's index, opened once the pack is found truncated, to tell
    /// which objects are lost with it.
    index: Option<Arc<gix::odb::pack::index::File>>,
}

/// The truncated packs of one repository at the time of a
/// [`Repo::check_packs`].
#[derive(Default)]
pub struct PackCheck {
    truncated: Vec<TruncatedPack>,
}

struct TruncatedPack {
    path: PathBuf,
    was: u64,
    now: u64,
    /// Without a readable index, every object is assumed lost with it.
    index: Option<Arc<gix::odb::pack::index::File>>,
}

impl PackCheck {
    /// Whether `oid` can be read: it is in none of the truncated packs.
    pub fn intact(&self, oid: &gix::oid) -> Result<(), PackTruncated> {
        match self.truncated.iter().find(|pack| {
            pack.index
                .as_ref()
                .is_none_or(|index| index.lookup(oid).is_some())
        }) {
            Some(pack) => Err(PackTruncated {
                path: pack.path.clone(),
                was: pack.was,
                now: pack.now,
            }),
            None => Ok(()),
        }
    }
}

/// A pack file of the store that is shorter than when it was first seen.
#[derive(Debug, Error)]
#[error("pack {path} was truncated from {was} to {now} bytes; its objects cannot be read")]
pub struct PackTruncated {
    pub path: PathBuf,
    pub was: u64,
    pub now: u64,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Repo {
    fn open(name: String, path: PathBuf) -> Result<Self, gix::Error> {
        let git = gix::open_opts(&path, gix::open::Options::isolated())?.into_sync();
        let repo = Self {
            id: RepoId::of_name(&name),
            name,
            path,
            git,
            pack_sizes: Mutex::new(HashMap::new()),
        };
        // Sizes seen from the start, so a pack truncated before its first
        // object is read is still caught.
        repo.check_packs();
        Ok(repo)
    }

    /// Looks at the size of every pack file now: the packs that shrank
    /// since they were first seen, against which objects are then checked
    /// ([`PackCheck::intact`]) before gix reads them. An object of a
    /// truncated pack cannot be read (gix would fault on the missing part
    /// of its memory map), the others can: packs are self-contained. The
    /// check holds for as long as the caller reads nothing else, so a batch
    /// looks again every few hundred objects. Logs each truncated pack once.
    pub fn check_packs(&self) -> PackCheck {
        let mut check = PackCheck::default();
        let dir = self.objects_dir().join("pack");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return check;
        };
        let Ok(mut seen) = self.pack_sizes.lock() else {
            return check;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "pack") {
                continue;
            }
            let Ok(now) = entry.metadata().map(|m| m.len()) else {
                continue;
            };
            let pack = seen.entry(path.clone()).or_insert(PackSeen {
                size: now,
                reported: false,
                index: None,
            });
            if now >= pack.size {
                continue;
            }
            if !pack.reported {
                pack.reported = true;
                tracing::error!(repo = %self.name, path = %path.display(), was = pack.size, now, "a pack file was truncated; the objects in it cannot be read until it is restored");
            }
            if pack.index.is_none() {
                pack.index = gix::odb::pack::index::File::at(
                    path.with_extension("idx"),
                    gix::hash::Kind::Sha1,
                )
                .ok()
                .map(Arc::new);
            }
            check.truncated.push(TruncatedPack {
                path,
                was: pack.size,
                now,
                index: pack.index.clone(),
            });
        }
        check
    }

    /// A handle on this thread. Cheap; call it on a blocking thread.
    pub fn local(&self) -> gix::Repository {
        self.git.to_thread_local()
    }
}

/// Why a revision did not resolve to a commit.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("unknown revision {rev:?} in {repo}")]
    UnknownRevision {
        repo: String,
        rev: String,
        #[source]
        source: gix::Error,
    },
    #[error("revision {rev:?} in {repo} is not a commit")]
    NotACommit {
        repo: String,
        rev: String,
        #[source]
        source: gix::Error,
    },
}

impl Repo {
    /// Resolves `rev` (branch, tag, full or short commit id; `HEAD` when
    /// `None`) to a commit id. This is the moment an export is pinned.
    pub fn resolve(&self, rev: Option<&str>) -> Result<gix::ObjectId, ResolveError> {
        let rev = rev.unwrap_or("HEAD");
        let repo = self.local();
        let id = repo
            .rev_parse_single(rev)
            .map_err(|source| ResolveError::UnknownRevision {
                repo: self.name.clone(),
                rev: rev.to_owned(),
                source,
            })?;
        let commit = id
            .object()
            .and_then(|o| o.peel_to_commit())
            .map_err(|source| ResolveError::NotACommit {
                repo: self.name.clone(),
                rev: rev.to_owned(),
                source,
            })?;
        Ok(commit.id)
    }
}

impl Repo {
    /// The branch `rev` names, if it names one (`main`, `feature/x`); for
    /// `None` (HEAD), the branch HEAD points at.
    pub fn branch_named_by(&self, rev: Option<&str>) -> Option<String> {
        let repo = self.local();
        match rev {
            None => {
                let name = repo.head_name().ok()??;
                name.as_bstr()
                    .to_string()
                    .strip_prefix("refs/heads/")
                    .map(str::to_owned)
            }
            Some(rev) => {
                let full = format!("refs/heads/{rev}");
                repo.try_find_reference(full.as_str())
                    .ok()?
                    .map(|_| rev.to_owned())
            }
        }
    }

    /// The local branches' short names.
    pub fn branches(&self) -> Vec<String> {
        self.refs()
            .into_iter()
            .filter_map(|r| r.name.strip_prefix("refs/heads/").map(str::to_owned))
            .collect()
    }

    /// Branches and tags as they are now, tags peeled to what they tag.
    pub fn refs(&self) -> Vec<RefEntry> {
        let repo = self.local();
        let Ok(platform) = repo.references() else {
            return Vec::new();
        };
        let Ok(all) = platform.all() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for r in all.flatten() {
            let mut r = r;
            let name = r.name().as_bstr().to_string();
            if !(name.starts_with("refs/heads/") || name.starts_with("refs/tags/")) {
                continue;
            }
            let gix::refs::TargetRef::Object(id) = r.target() else {
                continue;
            };
            let id = id.to_owned();
            let peeled = r.peel_to_id().ok().map(|p| p.detach()).filter(|p| *p != id);
            out.push(RefEntry { name, id, peeled });
        }
        out
    }

    /// `remote.origin.url` of the store's repository.
    pub fn origin_url(&self) -> Option<String> {
        let repo = self.local();
        let url = repo.config_snapshot().string("remote.origin.url")?;
        Some(url.to_string())
    }

    /// The store's `objects/` folder.
    pub fn objects_dir(&self) -> PathBuf {
        self.git.objects_dir().to_path_buf()
    }
}

/// The repositories found in the store, by name and by id.
#[derive(Debug, Default)]
pub struct RepoIndex {
    by_name: BTreeMap<String, Arc<Repo>>,
    by_id: HashMap<RepoId, Arc<Repo>>,
}

impl RepoIndex {
    pub fn by_name(&self, name: &str) -> Option<&Arc<Repo>> {
        self.by_name.get(name)
    }
    pub fn by_id(&self, id: RepoId) -> Option<&Arc<Repo>> {
        self.by_id.get(&id)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
    pub fn len(&self) -> usize {
        self.by_name.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Where repositories come from.
#[derive(Debug, Clone)]
enum Source {
    /// A directory scanned for `NAME.git` and `NAME/.git`.
    Directory(PathBuf),
    /// One repository exported under a fixed name (the no-argument mode).
    Single { name: String, path: PathBuf },
}

/// The store: a periodically rescanned index of repositories.
#[derive(Debug)]
pub struct Store {
    source: Source,
    index: RwLock<Arc<RepoIndex>>,
    last_scan: Mutex<Instant>,
}

/// Rescans triggered by unknown names happen at most this often.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

impl Store {
    /// Opens a store directory; fails when it is missing. An empty store
    /// opens: repositories added later are found on their first MOUNT, so a
    /// server on a fresh volume can listen (and pass its health checks)
    /// before anything is in it.
    pub fn open_dir(root: &Path) -> Result<Self, ScanError> {
        let source = Source::Directory(root.to_path_buf());
        let index = scan::scan(root)?;
        Ok(Self::with_index(source, index))
    }

    /// A store that serves exactly one repository under `name`.
    pub fn single(name: String, path: PathBuf) -> Result<Self, ScanError> {
        let source = Source::Single {
            name: name.clone(),
            path: path.clone(),
        };
        let index = scan::single(name, path)?;
        Ok(Self::with_index(source, index))
    }

    fn with_index(source: Source, index: RepoIndex) -> Self {
        Self {
            source,
            index: RwLock::new(Arc::new(index)),
            last_scan: Mutex::new(Instant::now()),
        }
    }

    /// The current index.
    pub fn index(&self) -> Arc<RepoIndex> {
        match self.index.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Looks a repository up by name, rescanning the store (rate limited)
    /// when it is not known yet, so repositories added later are found.
    pub fn repo_by_name(&self, name: &str) -> Option<Arc<Repo>> {
        if let Some(repo) = self.index().by_name(name) {
            return Some(Arc::clone(repo));
        }
        self.rescan().by_name(name).cloned()
    }

    /// Looks a repository up by id, rescanning (rate limited) on a miss.
    pub fn repo_by_id(&self, id: RepoId) -> Option<Arc<Repo>> {
        if let Some(repo) = self.index().by_id(id) {
            return Some(Arc::clone(repo));
        }
        self.rescan().by_id(id).cloned()
    }

    fn rescan(&self) -> Arc<RepoIndex> {
        {
            let mut last = match self.last_scan.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if last.elapsed() < RESCAN_INTERVAL {
                return self.index();
            }
            *last = Instant::now();
        }
        let scanned = match &self.source {
            Source::Directory(root) => scan::scan(root),
            Source::Single { name, path } => scan::single(name.clone(), path.clone()),
        };
        match scanned {
            Ok(index) => {
                let index = Arc::new(index);
                match self.index.write() {
                    Ok(mut g) => *g = Arc::clone(&index),
                    Err(p) => *p.into_inner() = Arc::clone(&index),
                }
                index
            }
            Err(e) => {
                tracing::warn!(error = %e, "rescanning the store failed; keeping the old index");
                self.index()
            }
        }
    }
}
