//! The filesystem model: exports, nodes, attributes, contents and listings.
//!
//! API boundary: this module never names an NFS type. It speaks in node ids,
//! [`Attr`] and [`FsError`]; the protocol edge (`nfs3`, `mount`, `acl`,
//! `status`) converts. Every method may call into `gix` and so must run on a
//! blocking thread, never on a connection task.

pub mod dotgit;
pub mod export_path;
pub mod namespace;
pub mod worktree;

use std::sync::{Arc, Mutex};

use gix::ObjectId;
use thiserror::Error;

use crate::metrics::Metrics;
use crate::store::{
    Blob, BlobCache, ObjectError, Repo, RepoId, RepoIndex, ResolveError, Spill, SpillKey, Store,
};
use dotgit::GitFile;
use dotgit::content::ExportView;
pub use export_path::{ExportPath, ExportPathError};
use namespace::{Namespace, NsEntry, namespace_id};
pub use worktree::{BuildError, NodeIndex, NodeKind, Worktree};

/// Stable identity of a node: everything needed to find it again after a
/// restart, on any server with the same store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeId {
    /// A folder of the root export (the namespace of repository names).
    Namespace(u64),
    /// An entry of a pinned commit's tree.
    Worktree {
        repo: RepoId,
        commit: ObjectId,
        /// Which branch `.git/HEAD` names: a hash of its name, 0 when detached.
        head: u64,
        index: NodeIndex,
    },
}

/// The `head` of a [`NodeId`] for a branch name (never 0).
pub fn head_key(branch: Option<&str>) -> u64 {
    branch.map_or(0, |b| xxhash_rust::xxh3::xxh3_64(b.as_bytes()).max(1))
}

/// One mounted export: a repository, a pinned tree, and what its `.git`
/// says (branch, refs as of the mount). Shared by every node of the export.
#[derive(Debug)]
pub struct Export {
    pub repo: Arc<Repo>,
    pub tree: Arc<Worktree>,
    pub head: u64,
    pub view: ExportView,
}

impl Export {
    fn id(&self, index: NodeIndex) -> NodeId {
        NodeId::Worktree {
            repo: self.repo.id,
            commit: self.tree.commit,
            head: self.head,
            index,
        }
    }

    fn fsid(&self) -> u64 {
        let mut bytes = self.repo.id.0.to_be_bytes().to_vec();
        bytes.extend_from_slice(self.tree.commit.as_bytes());
        bytes.extend_from_slice(&self.head.to_be_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}

/// A node id resolved to the structures that describe it.
#[derive(Debug, Clone)]
pub enum Node {
    Namespace {
        ns: Arc<Namespace>,
        id: u64,
    },
    Worktree {
        export: Arc<Export>,
        index: NodeIndex,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Directory,
    Regular,
    Symlink,
}

/// Attributes of a node, as every client sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub file_type: FileType,
    /// Permission bits only (e.g. 0o644).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub fileid: u64,
    pub fsid: u64,
    /// Seconds since the epoch, used for atime, mtime and ctime.
    pub time: i64,
}

/// Bytes answered by [`Filesystem::read`]: a slice of a cached blob (not
/// a copy) or bytes read from disk for this call.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub data: bytes::Bytes,
    /// Whether the data reaches the end of the file.
    pub eof: bool,
}

/// One READDIR entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The cookie that resumes the listing after this entry.
    pub cookie: u64,
    pub name: Vec<u8>,
    pub fileid: u64,
    /// The entry's node, when it is known without resolving a revision.
    pub id: Option<NodeId>,
}

/// Why a filesystem operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symbolic link")]
    NotSymlink,
    #[error("name is longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("cookie {0} is past the end of the directory")]
    BadCookie(u64),
    #[error("stale node: {0}")]
    Stale(&'static str),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Build(#[from] Arc<BuildError>),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("cannot read a spilled file of {repo}")]
    Spilled {
        repo: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the store file {path}")]
    StoreFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The same failure, reported to several waiting callers.
    #[error(transparent)]
    Shared(Arc<FsError>),
}

/// Why a MOUNT was refused; returned by [`Filesystem::mount`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("bad export path: {0}")]
    Path(#[from] ExportPathError),
    #[error("no repository named {0:?} in the store")]
    UnknownRepo(String),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("cannot load the tree: {0}")]
    Build(#[from] Arc<BuildError>),
    #[error("no folder {0:?} in the worktree")]
    NotInTree(String),
    #[error("{0} is not the id of a commit")]
    PinNotACommit(String),
    #[error("{0:?} is not a folder")]
    NotADirectory(String),
}

/// Longest name LOOKUP accepts.
pub const MAX_NAME: usize = 255;
/// Reported size of directories.
const DIR_SIZE: u64 = 4096;

/// Who owns every exported file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

type WorktreeKey = (RepoId, ObjectId);
type ExportKey = (RepoId, ObjectId, u64);

/// The index is dated this long after the commit, so that no entry (all
/// dated at the commit) is racily clean and git never re-reads contents.
const INDEX_LEAD_SECONDS: i64 = 3600;

/// The exported filesystem over a store.
pub struct Filesystem {
    store: Arc<Store>,
    worktrees: moka::sync::Cache<WorktreeKey, Arc<Worktree>>,
    exports: moka::sync::Cache<ExportKey, Arc<Export>>,
    /// Indexes in memory, or spilled when larger than `large_index`.
    indexes: moka::sync::Cache<WorktreeKey, Blob>,
    large_index: u64,
    blobs: BlobCache,
    owner: Owner,
    metrics: Arc<Metrics>,
    namespace: Mutex<Option<(Arc<RepoIndex>, Arc<Namespace>)>>,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// An entry's weight, at most the whole budget: moka refuses an entry that
/// weighs more than its cache, and a tree table refused would be rebuilt (a
/// second per million files) by every call that needs it. One that big
/// instead fills its cache alone.
fn weight_within(bytes: usize, budget: u64) -> u32 {
    let capped = u64::try_from(bytes).unwrap_or(u64::MAX).min(budget);
    u32::try_from(capped).unwrap_or(u32::MAX)
}

impl Filesystem {
    /// `cache_bytes` is split between decoded blobs (1/2), synthesized
    /// indexes (1/4), worktree tables (1/8) and exports (1/8), which keep
    /// their tables alive and so are weighed by them. Blobs too large for
    /// the memory cache go to `spill`.
    pub fn new(
        store: Arc<Store>,
        owner: Owner,
        cache_bytes: u64,
        spill: Spill,
        metrics: Arc<Metrics>,
    ) -> Self {
        let quarter = (cache_bytes / 4).max(1 << 20);
        let eighth = (cache_bytes / 8).max(1 << 20);
        let live = metrics.exports_live.clone();
        let worktrees = moka::sync::Cache::builder()
            .max_capacity(eighth)
            .weigher(move |_, t: &Arc<Worktree>| weight_within(t.approx_bytes(), eighth))
            .eviction_listener(move |_, _, _| {
                live.dec();
            })
            .build();
        // A spilled index weighs little here: the spill folder's own budget
        // counts its bytes.
        let indexes = moka::sync::Cache::builder()
            .max_capacity(quarter)
            .weigher(|_, i: &Blob| match i {
                Blob::Memory(bytes) => u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                Blob::Spilled(_) => 1024,
            })
            .build();
        // An export holds its tree table: weigh it by the table, so tables
        // kept alive by exports stay within a budget too.
        let exports = moka::sync::Cache::builder()
            .max_capacity(eighth)
            .weigher(move |_, e: &Arc<Export>| {
                weight_within(e.tree.approx_bytes() + 64 * e.view.refs.len(), eighth)
            })
            .build();
        let blobs = BlobCache::new(cache_bytes / 2, spill, Arc::clone(&metrics));
        Self {
            store,
            worktrees,
            exports,
            indexes,
            large_index: (quarter / 8).max(1 << 20),
            blobs,
            owner,
            metrics,
            namespace: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Resolves a MOUNT path and pins it: the returned id names one commit.
    ///
    /// A path may continue into the worktree (`/app/src`, `/app@main/src`),
    /// as clients such as libnfs mount the folder of the file they open.
    /// Branch names contain `/` too, so after `@` the longest prefix that
    /// resolves is the revision and the rest is the folder.
    pub fn mount(&self, raw_path: &[u8]) -> Result<NodeId, MountError> {
        let path = ExportPath::parse(raw_path)?;
        let components: Vec<&str> = path.repo.split('/').filter(|c| !c.is_empty()).collect();
        let named_repo = || {
            self.store
                .repo_by_name(path.repo)
                .ok_or_else(|| MountError::UnknownRepo(path.repo.to_owned()))
        };
        // HEAD's branch comes with the commit: a pinned branch is HEAD even
        // if it no longer exists (the pin keeps what the worktree was made
        // on); otherwise HEAD is a branch only if the revision names one.
        let (repo, branch, commit, inside) = match (path.rev, &path.pin) {
            (Some(branch), Some(pin)) => {
                let repo = named_repo()?;
                let commit = repo.resolve(Some(pin.commit))?;
                // A tag's id would peel to its commit: only a commit's own id pins.
                if !commit.to_string().eq_ignore_ascii_case(pin.commit) {
                    return Err(MountError::PinNotACommit(pin.commit.to_owned()));
                }
                let inside = pin.folder.split('/').filter(|c| !c.is_empty()).collect();
                (repo, Some(branch.to_owned()), commit, inside)
            }
            (None, _) => {
                let ns = self.namespace();
                if let Some((id, _)) = ns.folder_by_path(path.repo) {
                    return Ok(NodeId::Namespace(id));
                }
                // The longest prefix naming a repository; the store is rescanned
                // only when no prefix is known (libnfs mounts a folder per file).
                let longest = |find: &dyn Fn(&str) -> Option<Arc<Repo>>| {
                    (1..=components.len())
                        .rev()
                        .find_map(|k| Some((find(&components[..k].join("/"))?, k)))
                };
                let index = self.store.index();
                let (repo, taken) = longest(&|name| index.by_name(name).cloned())
                    .or_else(|| longest(&|name| self.store.repo_by_name(name)))
                    .ok_or_else(|| MountError::UnknownRepo(path.repo.to_owned()))?;
                let commit = repo.resolve(None)?;
                let branch = repo.branch_named_by(None);
                (repo, branch, commit, components[taken..].to_vec())
            }
            (Some(rev), None) => {
                let repo = named_repo()?;
                let parts: Vec<&str> = rev.split('/').collect();
                let mut first_error = None;
                let mut found = None;
                for k in (1..=parts.len()).rev() {
                    let candidate = parts[..k].join("/");
                    if candidate.len() > export_path::MAX_REV {
                        continue;
                    }
                    match repo.resolve(Some(&candidate)) {
                        Ok(commit) => {
                            found = Some((candidate, commit, parts[k..].to_vec()));
                            break;
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match (found, first_error) {
                    (Some((rev, commit, inside)), _) => {
                        let branch = repo.branch_named_by(Some(&rev));
                        (repo, branch, commit, inside)
                    }
                    (None, Some(e)) => return Err(e.into()),
                    (None, None) => return Err(MountError::UnknownRepo(path.repo.to_owned())),
                }
            }
        };
        // Load the tree now, so a broken tree fails the MOUNT, not a later call.
        let export = self.export(&repo, commit, head_key(branch.as_deref()), branch)?;
        let mut node = Node::Worktree { export, index: 0 };
        for component in inside {
            node = self
                .lookup(&node, component.as_bytes())
                .map_err(|_| MountError::NotInTree(component.to_owned()))?;
            if !matches!(
                self.attr(&node),
                Ok(Attr {
                    file_type: FileType::Directory,
                    ..
                })
            ) {
                return Err(MountError::NotADirectory(component.to_owned()));
            }
        }
        Ok(Self::id_of(&node))
    }

    /// Export paths for MOUNT's EXPORT procedure.
    pub fn export_names(&self) -> Vec<String> {
        self.store
            .index()
            .names()
            .map(|n| format!("/{n}"))
            .collect()
    }

    fn namespace(&self) -> Arc<Namespace> {
        let index = self.store.index();
        let mut cached = match self.namespace.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((built_from, ns)) = cached.as_ref()
            && Arc::ptr_eq(built_from, &index)
        {
            return Arc::clone(ns);
        }
        let ns = Arc::new(Namespace::build(&index));
        *cached = Some((index, Arc::clone(&ns)));
        ns
    }

    fn worktree(&self, repo: &Repo, commit: ObjectId) -> Result<Arc<Worktree>, Arc<BuildError>> {
        let key = (repo.id, commit);
        if let Some(tree) = self.worktrees.get(&key) {
            self.metrics.cache_hit("worktree");
            return Ok(tree);
        }
        self.metrics.cache_miss("worktree");
        self.worktrees.try_get_with(key, || {
            let started = std::time::Instant::now();
            let dotgit = dotgit::layout(&repo.objects_dir());
            let tree = Worktree::build(&repo.local(), commit, Some(dotgit))?;
            tracing::info!(repo = %repo.name, %commit, nodes = tree.len(), took = ?started.elapsed(), "loaded worktree");
            self.metrics.exports_live.inc();
            Ok(Arc::new(tree))
        })
    }

    /// The export of `commit` whose HEAD is the branch hashed as `head`.
    /// `branch` is the name when the caller knows it (at MOUNT); after a
    /// restart it is found again among the repository's branches. The view
    /// (refs as of now) is made once and kept while the export is cached.
    fn export(
        &self,
        repo: &Arc<Repo>,
        commit: ObjectId,
        head: u64,
        branch: Option<String>,
    ) -> Result<Arc<Export>, Arc<BuildError>> {
        let key = (repo.id, commit, head);
        if let Some(export) = self.exports.get(&key) {
            return Ok(export);
        }
        let tree = self.worktree(repo, commit)?;
        let export = self.exports.get_with(key, || {
            let branch = branch.or_else(|| {
                (head != 0)
                    .then(|| {
                        repo.branches()
                            .into_iter()
                            .find(|b| head_key(Some(b)) == head)
                    })
                    .flatten()
            });
            Arc::new(Export {
                repo: Arc::clone(repo),
                tree,
                head,
                view: ExportView {
                    commit,
                    branch,
                    refs: repo.refs(),
                    origin_url: repo.origin_url(),
                    name: repo.name.clone(),
                },
            })
        });
        Ok(export)
    }

    /// Finds the node an id names. Ids of deleted repositories, commits the
    /// repository no longer has, or numbers past the tree are stale.
    pub fn node(&self, id: NodeId) -> Result<Node, FsError> {
        match id {
            NodeId::Namespace(id) => {
                let ns = self.namespace();
                if ns.folder(id).is_none() {
                    return Err(FsError::Stale("unknown namespace folder"));
                }
                Ok(Node::Namespace { ns, id })
            }
            NodeId::Worktree {
                repo,
                commit,
                head,
                index,
            } => {
                let repo = self
                    .store
                    .repo_by_id(repo)
                    .ok_or(FsError::Stale("repository is gone from the store"))?;
                // Deleted from the store since the last scan: its exports are
                // gone too, even where they are still cached.
                if !repo.path.is_dir() {
                    return Err(FsError::Stale("repository was deleted from the store"));
                }
                let export = match self.export(&repo, commit, head, None) {
                    Ok(export) => export,
                    Err(e) if matches!(*e, BuildError::Commit { .. }) => {
                        return Err(FsError::Stale("commit is gone from the repository"));
                    }
                    Err(e) => return Err(e.into()),
                };
                if export.tree.node(index).is_none() {
                    return Err(FsError::Stale("node number is past the tree"));
                }
                Ok(Node::Worktree { export, index })
            }
        }
    }

    /// Resolves `id`, reusing `near`'s export when it is the same (the
    /// common case in a directory listing).
    pub fn node_near(&self, near: &Node, id: NodeId) -> Result<Node, FsError> {
        if let Node::Worktree { export, .. } = near
            && let NodeId::Worktree { index, .. } = id
            && export.id(index) == id
        {
            if export.tree.node(index).is_none() {
                return Err(FsError::Stale("node number is past the tree"));
            }
            return Ok(Node::Worktree {
                export: Arc::clone(export),
                index,
            });
        }
        self.node(id)
    }

    /// A READDIR cookie verifier: changes only when the listing could.
    pub fn dir_verifier(&self, dir: &Node) -> [u8; 8] {
        let hash = match dir {
            Node::Worktree { export, .. } => export.fsid(),
            Node::Namespace { ns, id } => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                if let Some(folder) = ns.folder(*id) {
                    for (name, _) in &folder.entries {
                        h.update(name.as_bytes());
                        h.update(b"/");
                    }
                }
                h.digest()
            }
        };
        hash.to_be_bytes()
    }

    /// The id of a resolved node.
    pub fn id_of(node: &Node) -> NodeId {
        match node {
            Node::Namespace { id, .. } => NodeId::Namespace(*id),
            Node::Worktree { export, index } => export.id(*index),
        }
    }

    pub fn attr(&self, node: &Node) -> Result<Attr, FsError> {
        let Owner { uid, gid } = self.owner;
        match node {
            Node::Namespace { ns, id } => {
                let folder = ns
                    .folder(*id)
                    .ok_or(FsError::Stale("unknown namespace folder"))?;
                let subdirs = u32::try_from(folder.entries.len()).unwrap_or(u32::MAX);
                Ok(Attr {
                    file_type: FileType::Directory,
                    mode: 0o755,
                    nlink: subdirs.saturating_add(2),
                    uid,
                    gid,
                    size: DIR_SIZE,
                    fileid: namespace_fileid(*id),
                    fsid: namespace_id(""),
                    time: 0,
                })
            }
            Node::Worktree { export, index } => {
                let n = export
                    .tree
                    .node(*index)
                    .ok_or(FsError::Stale("node number is past the tree"))?;
                let mut time = export.tree.time;
                let (file_type, mode, size) = match n.kind {
                    NodeKind::Dir | NodeKind::Gitlink | NodeKind::GitDir => {
                        (FileType::Directory, 0o755, DIR_SIZE)
                    }
                    NodeKind::File => (FileType::Regular, 0o644, self.blob_size(&export.repo, n)?),
                    NodeKind::Executable => {
                        (FileType::Regular, 0o755, self.blob_size(&export.repo, n)?)
                    }
                    NodeKind::Symlink => {
                        (FileType::Symlink, 0o777, self.blob_size(&export.repo, n)?)
                    }
                    NodeKind::GitFile(file) => {
                        if file == GitFile::Index {
                            time += INDEX_LEAD_SECONDS;
                        }
                        (FileType::Regular, 0o644, self.git_file(export, file)?.len())
                    }
                    // Git keeps its pack files and objects read-only.
                    NodeKind::StoreFile => (FileType::Regular, 0o444, n.known_size().unwrap_or(0)),
                };
                let nlink = if n.is_dir() {
                    n.subdirs.saturating_add(2)
                } else {
                    1
                };
                Ok(Attr {
                    file_type,
                    mode,
                    nlink,
                    uid,
                    gid,
                    size,
                    fileid: u64::from(*index) + 1,
                    fsid: export.fsid(),
                    time,
                })
            }
        }
    }

    fn blob_size(&self, repo: &Repo, node: &worktree::Node) -> Result<u64, FsError> {
        if let Some(size) = node.known_size() {
            return Ok(size);
        }
        let size = self.blobs.size(repo, node.oid)?;
        node.remember_size(size);
        Ok(size)
    }

    /// The bytes of a synthesized `.git` file.
    fn git_file(&self, export: &Export, file: GitFile) -> Result<Blob, FsError> {
        if file == GitFile::Index {
            return self.index(export);
        }
        Ok(Blob::Memory(Arc::from(dotgit::content::render(
            file,
            &export.view,
        ))))
    }

    /// The synthesized index of an export's commit, built on first use.
    fn index(&self, export: &Export) -> Result<Blob, FsError> {
        let key = (export.repo.id, export.tree.commit);
        if let Some(index) = self.indexes.get(&key) {
            self.metrics.cache_hit("index");
            return Ok(index);
        }
        self.metrics.cache_miss("index");
        self.indexes.try_get_with(key, || {
            let started = std::time::Instant::now();
            let tree = &export.tree;
            let tracked: Vec<_> = tree
                .tracked()
                .into_iter()
                .filter_map(|(path, index)| Some((path, index, tree.node(index)?)))
                .collect();
            // The sizes not known yet, read in one batch.
            let unknown: Vec<&worktree::Node> = tracked
                .iter()
                .filter(|(_, _, n)| !matches!(n.kind, NodeKind::Gitlink) && n.known_size().is_none())
                .map(|(_, _, n)| *n)
                .collect();
            self.blobs.sizes(
                &export.repo,
                &unknown,
                |n| n.oid,
                |n, size| n.remember_size(size),
            )?;
            drop(unknown);
            let mut entries = Vec::with_capacity(tracked.len());
            for (path, index, n) in tracked {
                let (mode, size) = match n.kind {
                    NodeKind::File => (0o100_644, self.blob_size(&export.repo, n)?),
                    NodeKind::Executable => (0o100_755, self.blob_size(&export.repo, n)?),
                    NodeKind::Symlink => (0o120_000, self.blob_size(&export.repo, n)?),
                    _ => (0o160_000, 0),
                };
                entries.push(dotgit::index::IndexEntry {
                    path,
                    mode,
                    oid: n.oid,
                    size,
                    ino: u64::from(index) + 1,
                });
            }
            let count = entries.len();
            let bytes = dotgit::index::write(
                entries,
                &tree.cache_tree(),
                dotgit::index::Stat {
                    time: u32::try_from(tree.time.max(0)).unwrap_or(u32::MAX),
                    uid: self.owner.uid,
                    gid: self.owner.gid,
                },
            );
            tracing::info!(repo = %export.repo.name, commit = %tree.commit, entries = count, bytes = bytes.len(), took = ?started.elapsed(), "built index");
            if (bytes.len() as u64) <= self.large_index {
                return Ok(Blob::Memory(Arc::from(bytes)));
            }
            let key = SpillKey::Index {
                repo: export.repo.id,
                commit: tree.commit,
            };
            self.blobs
                .spill
                .keep(key, || bytes)
                .map_err(|source| FsError::Spilled {
                    repo: export.repo.name.clone(),
                    source,
                })
        })
        .map_err(|e: Arc<FsError>| match Arc::try_unwrap(e) {
            Ok(e) => e,
            Err(shared) => FsError::Shared(shared),
        })
    }

    /// The child of `dir` named `name` (also `.` and `..`).
    pub fn lookup(&self, dir: &Node, name: &[u8]) -> Result<Node, FsError> {
        if name.len() > MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        match dir {
            Node::Namespace { ns, id } => {
                let folder = ns
                    .folder(*id)
                    .ok_or(FsError::Stale("unknown namespace folder"))?;
                let child = match name {
                    b"." => return Ok(dir.clone()),
                    b".." => {
                        return Ok(Node::Namespace {
                            ns: Arc::clone(ns),
                            id: folder.parent,
                        });
                    }
                    _ => folder
                        .entries
                        .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
                        .map(|pos| &folder.entries[pos].1)
                        .map_err(|_| FsError::NotFound)?,
                };
                match child {
                    NsEntry::Folder(id) => self.node(NodeId::Namespace(*id)),
                    NsEntry::Repo(repo_name) => {
                        let repo = self
                            .store
                            .repo_by_name(repo_name)
                            .ok_or(FsError::NotFound)?;
                        let commit = repo.resolve(None)?;
                        let branch = repo.branch_named_by(None);
                        let export =
                            self.export(&repo, commit, head_key(branch.as_deref()), branch)?;
                        Ok(Node::Worktree { export, index: 0 })
                    }
                }
            }
            Node::Worktree { export, index } => {
                let tree = &export.tree;
                let d = tree
                    .node(*index)
                    .ok_or(FsError::Stale("node number is past the tree"))?;
                if !d.is_dir() {
                    return Err(FsError::NotDir);
                }
                let child = match name {
                    b"." => *index,
                    b".." => d.parent,
                    _ => tree.lookup(d, name).ok_or(FsError::NotFound)?,
                };
                Ok(Node::Worktree {
                    export: Arc::clone(export),
                    index: child,
                })
            }
        }
    }

    /// Up to `count` bytes of a regular file from `offset`, and whether they
    /// reach its end.
    pub fn read(&self, node: &Node, offset: u64, count: u32) -> Result<ReadChunk, FsError> {
        let (export, n) = self.worktree_node(node)?;
        let blob = match n.kind {
            NodeKind::File | NodeKind::Executable => {
                let blob = self.blobs.blob(&export.repo, n.oid)?;
                n.remember_size(blob.len());
                blob
            }
            NodeKind::GitFile(file) => self.git_file(export, file)?,
            NodeKind::StoreFile => {
                let Node::Worktree { index, .. } = node else {
                    return Err(FsError::IsDir);
                };
                return self.read_store_file(export, n, *index, offset, count);
            }
            NodeKind::Dir | NodeKind::Gitlink | NodeKind::GitDir => return Err(FsError::IsDir),
            NodeKind::Symlink => return Err(FsError::NotSymlink),
        };
        let data = blob
            .read(offset, count)
            .map_err(|source| FsError::Spilled {
                repo: export.repo.name.clone(),
                source,
            })?;
        self.count_read(read_kind(&export.tree, n), data.len());
        let eof = offset.saturating_add(data.len() as u64) >= blob.len();
        Ok(ReadChunk { data, eof })
    }

    fn count_read(&self, kind: &'static str, bytes: usize) {
        let label = crate::metrics::NameLabel { name: kind };
        self.metrics
            .read_bytes
            .get_or_create(&label)
            .inc_by(bytes as u64);
        Metrics::count(&self.metrics.reads, kind);
    }

    /// A store file (pack, index, loose object) read at `offset`: only the
    /// pages asked for are read from disk.
    fn read_store_file(
        &self,
        export: &Export,
        n: &worktree::Node,
        index: worktree::NodeIndex,
        offset: u64,
        count: u32,
    ) -> Result<ReadChunk, FsError> {
        use std::os::unix::fs::FileExt;
        let rel = export
            .tree
            .store_path(n)
            .ok_or(FsError::Stale("not a store file"))?;
        let path = export.repo.objects_dir().join(rel);
        let size = n.known_size().unwrap_or(0);
        let start = offset.min(size);
        let want = (count as u64).min(size - start) as usize;
        let io = |source| FsError::StoreFile {
            path: path.clone(),
            source,
        };
        // Packs were opened with the table and stay readable after a
        // repack; loose objects are opened now.
        let opened;
        let file = match export.tree.open_file(index) {
            Some(file) => &**file,
            None => {
                opened = std::fs::File::open(&path).map_err(io)?;
                &opened
            }
        };
        let mut buf = vec![0u8; want];
        file.read_exact_at(&mut buf, start).map_err(io)?;
        self.count_read("git", want);
        Ok(ReadChunk {
            data: bytes::Bytes::from(buf),
            eof: start + want as u64 >= size,
        })
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, node: &Node) -> Result<Arc<[u8]>, FsError> {
        let (export, n) = self.worktree_node(node)?;
        if n.kind != NodeKind::Symlink {
            return Err(FsError::NotSymlink);
        }
        Ok(self.blobs.get(&export.repo, n.oid)?)
    }

    fn worktree_node<'a>(
        &self,
        node: &'a Node,
    ) -> Result<(&'a Export, &'a worktree::Node), FsError> {
        match node {
            Node::Namespace { .. } => Err(FsError::IsDir),
            Node::Worktree { export, index } => {
                let n = export
                    .tree
                    .node(*index)
                    .ok_or(FsError::Stale("node number is past the tree"))?;
                Ok((export, n))
            }
        }
    }

    /// Lists `dir` from position `cookie` (0 is the start; `.` and `..` come
    /// first), calling `accept` per entry until it returns false. Returns
    /// whether the listing reached the end.
    pub fn read_dir(
        &self,
        dir: &Node,
        cookie: u64,
        mut accept: impl FnMut(DirEntry) -> bool,
    ) -> Result<bool, FsError> {
        let dot = |cookie, name: &[u8], id: NodeId, fileid| DirEntry {
            cookie,
            name: name.to_vec(),
            fileid,
            id: Some(id),
        };
        match dir {
            Node::Namespace { ns, id } => {
                let folder = ns
                    .folder(*id)
                    .ok_or(FsError::Stale("unknown namespace folder"))?;
                let total = folder.entries.len() as u64 + 2;
                if cookie > total {
                    return Err(FsError::BadCookie(cookie));
                }
                for pos in cookie..total {
                    let entry = match pos {
                        0 => dot(1, b".", NodeId::Namespace(*id), namespace_fileid(*id)),
                        1 => dot(
                            2,
                            b"..",
                            NodeId::Namespace(folder.parent),
                            namespace_fileid(folder.parent),
                        ),
                        _ => {
                            let (name, entry) = &folder.entries[(pos - 2) as usize];
                            let (id, fileid) = match entry {
                                NsEntry::Folder(f) => {
                                    (Some(NodeId::Namespace(*f)), namespace_fileid(*f))
                                }
                                NsEntry::Repo(r) => (None, namespace_fileid(namespace_id(r))),
                            };
                            DirEntry {
                                cookie: pos + 1,
                                name: name.as_bytes().to_vec(),
                                fileid,
                                id,
                            }
                        }
                    };
                    if !accept(entry) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Worktree { export, index } => {
                let tree = &export.tree;
                let d = tree
                    .node(*index)
                    .ok_or(FsError::Stale("node number is past the tree"))?;
                if !d.is_dir() {
                    return Err(FsError::NotDir);
                }
                let children = d.children();
                let total = u64::from(children.end - children.start) + 2;
                if cookie > total {
                    return Err(FsError::BadCookie(cookie));
                }
                for pos in cookie..total {
                    let entry = match pos {
                        0 => dot(1, b".", export.id(*index), u64::from(*index) + 1),
                        1 => dot(2, b"..", export.id(d.parent), u64::from(d.parent) + 1),
                        _ => {
                            // pos < total, so the child index fits in u32.
                            let child = children.start + (pos - 2) as NodeIndex;
                            let n = tree
                                .node(child)
                                .ok_or(FsError::Stale("node number is past the tree"))?;
                            DirEntry {
                                cookie: pos + 1,
                                name: tree.name(n).to_vec(),
                                fileid: u64::from(child) + 1,
                                id: Some(export.id(child)),
                            }
                        }
                    };
                    if !accept(entry) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Totals for FSSTAT: (bytes, files) of the export `node` belongs to.
    pub fn totals(&self, node: &Node) -> (u64, u64) {
        match node {
            Node::Namespace { .. } => (0, self.store.index().len() as u64),
            Node::Worktree { export, .. } => (0, export.tree.len() as u64),
        }
    }
}

/// What a READ is counted as: the synthesized `.git` ("git"), the files of
/// the tree that configure git itself ("git_metadata": git reads
/// `.gitmodules`, `.gitignore` and `.gitattributes` by design), or the
/// worktree's contents ("worktree").
fn read_kind(tree: &Worktree, node: &worktree::Node) -> &'static str {
    const GIT_METADATA: [&[u8]; 4] = [
        b".gitmodules",
        b".gitignore",
        b".gitattributes",
        b".mailmap",
    ];
    if node.kind.in_dotgit() {
        "git"
    } else if GIT_METADATA.contains(&tree.name(node)) {
        "git_metadata"
    } else {
        "worktree"
    }
}

fn namespace_fileid(id: u64) -> u64 {
    // Below 2^32 like worktree fileids, and never 0.
    (id >> 32).max(1)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A repository with one folder of `n` files, made with real git.
    fn repo_with_folder(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::create_dir(dir.path().join("big")).unwrap();
        for i in 0..n {
            std::fs::write(dir.path().join(format!("big/f{i:04}")), i.to_string()).unwrap();
        }
        git(&["add", "."]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t.invalid",
            "commit",
            "-qm",
            "init",
        ]);
        dir
    }

    fn filesystem(repo: &std::path::Path) -> Filesystem {
        let store = Store::single("r".into(), repo.to_path_buf()).unwrap();
        Filesystem::new(
            Arc::new(store),
            Owner::default(),
            64 << 20,
            Spill::temporary(1 << 30).unwrap(),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn read_dir_resumes_at_any_cookie_and_lists_each_entry_once() {
        let repo = repo_with_folder(300);
        let fs = filesystem(repo.path());
        let root = fs.node(fs.mount(b"/r@main").unwrap()).unwrap();
        let big = fs.lookup(&root, b"big").unwrap();
        for page in [1, 2, 7, 64, 301, 1000] {
            let mut names = Vec::new();
            let mut cookie = 0;
            loop {
                let mut taken = 0;
                let eof = fs
                    .read_dir(&big, cookie, |e| {
                        if taken == page {
                            return false;
                        }
                        taken += 1;
                        cookie = e.cookie;
                        names.push(e.name);
                        true
                    })
                    .unwrap();
                if eof {
                    break;
                }
            }
            let mut want: Vec<Vec<u8>> =
                (0..300).map(|i| format!("f{i:04}").into_bytes()).collect();
            want.insert(0, b"..".to_vec());
            want.insert(0, b".".to_vec());
            assert_eq!(names, want, "page of {page}");
        }
        // Past the end is a bad cookie, the end itself an empty eof page.
        assert!(matches!(
            fs.read_dir(&big, 303, |_| true),
            Err(FsError::BadCookie(303))
        ));
        assert!(
            fs.read_dir(&big, 302, |_| panic!("no entry past the end"))
                .unwrap()
        );
    }

    #[test]
    fn node_ids_are_the_same_in_a_second_filesystem() {
        let repo = repo_with_folder(3);
        let (a, b) = (filesystem(repo.path()), filesystem(repo.path()));
        let id_a = a.mount(b"/r@main/big").unwrap();
        let id_b = b.mount(b"/r/big").unwrap();
        assert_eq!(
            id_a, id_b,
            "the branch export and the HEAD export of main agree"
        );
        let file = b.lookup(&b.node(id_a).unwrap(), b"f0001").unwrap();
        let chunk = b.read(&file, 0, 100).unwrap();
        assert_eq!(&chunk.data[..], b"1");
        assert!(chunk.eof);
    }
}
