//! The filesystem model: exports, nodes, attributes, contents and listings.
//!
//! API boundary: this module never names an NFS type. It speaks in node ids,
//! [`Attr`] and [`FsError`]; the protocol edge (`nfs3`, `mount`, `acl`,
//! `status`) converts. Every method may call into `gix` and so must run on a
//! blocking thread, never on a connection task.

pub mod export_path;
pub mod namespace;
pub mod worktree;

use std::sync::{Arc, Mutex};

use gix::ObjectId;
use thiserror::Error;

use crate::metrics::Metrics;
use crate::store::{BlobCache, ObjectError, Repo, RepoId, RepoIndex, ResolveError, Store};
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
        index: NodeIndex,
    },
}

/// A node id resolved to the structures that describe it.
#[derive(Debug, Clone)]
pub enum Node {
    Namespace {
        ns: Arc<Namespace>,
        id: u64,
    },
    Worktree {
        repo: Arc<Repo>,
        tree: Arc<Worktree>,
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

/// Bytes answered by [`Filesystem::read`]: a range of a cached blob.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub blob: Arc<[u8]>,
    pub range: std::ops::Range<usize>,
    /// Whether the range reaches the end of the file.
    pub eof: bool,
}

impl ReadChunk {
    pub fn bytes(&self) -> &[u8] {
        &self.blob[self.range.clone()]
    }
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

/// The exported filesystem over a store.
pub struct Filesystem {
    store: Arc<Store>,
    worktrees: moka::sync::Cache<WorktreeKey, Arc<Worktree>>,
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

impl Filesystem {
    /// `cache_bytes` bounds decoded blobs (three quarters) and worktree
    /// tables (one quarter).
    pub fn new(store: Arc<Store>, owner: Owner, cache_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let live = metrics.exports_live.clone();
        let worktrees = moka::sync::Cache::builder()
            .max_capacity((cache_bytes / 4).max(1 << 20))
            .weigher(|_, t: &Arc<Worktree>| u32::try_from(t.approx_bytes()).unwrap_or(u32::MAX))
            .eviction_listener(move |_, _, _| {
                live.dec();
            })
            .build();
        let blobs = BlobCache::new(cache_bytes - cache_bytes / 4, Arc::clone(&metrics));
        Self {
            store,
            worktrees,
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
        let (repo, commit, inside) = match path.rev {
            None => {
                let ns = self.namespace();
                if let Some((id, _)) = ns.folder_by_path(path.repo) {
                    return Ok(NodeId::Namespace(id));
                }
                let (repo, taken) = (1..=components.len())
                    .rev()
                    .find_map(|k| Some((self.store.repo_by_name(&components[..k].join("/"))?, k)))
                    .ok_or_else(|| MountError::UnknownRepo(path.repo.to_owned()))?;
                let commit = repo.resolve(None)?;
                (repo, commit, components[taken..].to_vec())
            }
            Some(rev) => {
                let repo = self
                    .store
                    .repo_by_name(path.repo)
                    .ok_or_else(|| MountError::UnknownRepo(path.repo.to_owned()))?;
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
                            found = Some((commit, parts[k..].to_vec()));
                            break;
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match (found, first_error) {
                    (Some((commit, inside)), _) => (repo, commit, inside),
                    (None, Some(e)) => return Err(e.into()),
                    (None, None) => return Err(MountError::UnknownRepo(path.repo.to_owned())),
                }
            }
        };
        // Load the tree now, so a broken tree fails the MOUNT, not a later call.
        let tree = self.worktree(&repo, commit)?;
        let mut node = Node::Worktree {
            repo,
            tree,
            index: 0,
        };
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
        self.worktrees
            .try_get_with(key, || {
                let started = std::time::Instant::now();
                let tree = Worktree::build(&repo.local(), commit)?;
                tracing::info!(repo = %repo.name, %commit, nodes = tree.len(), took = ?started.elapsed(), "loaded worktree");
                self.metrics.exports_live.inc();
                Ok(Arc::new(tree))
            })
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
                index,
            } => {
                let repo = self
                    .store
                    .repo_by_id(repo)
                    .ok_or(FsError::Stale("repository is gone from the store"))?;
                let tree = match self.worktree(&repo, commit) {
                    Ok(tree) => tree,
                    Err(e) if matches!(*e, BuildError::Commit { .. }) => {
                        return Err(FsError::Stale("commit is gone from the repository"));
                    }
                    Err(e) => return Err(e.into()),
                };
                if tree.node(index).is_none() {
                    return Err(FsError::Stale("node number is past the tree"));
                }
                Ok(Node::Worktree { repo, tree, index })
            }
        }
    }

    /// Resolves `id`, reusing `near`'s repository and tree when it belongs
    /// to the same commit (the common case in a directory listing).
    pub fn node_near(&self, near: &Node, id: NodeId) -> Result<Node, FsError> {
        if let (
            Node::Worktree { repo, tree, .. },
            NodeId::Worktree {
                repo: r,
                commit,
                index,
            },
        ) = (near, id)
            && repo.id == r
            && tree.commit == commit
        {
            if tree.node(index).is_none() {
                return Err(FsError::Stale("node number is past the tree"));
            }
            return Ok(Node::Worktree {
                repo: Arc::clone(repo),
                tree: Arc::clone(tree),
                index,
            });
        }
        self.node(id)
    }

    /// A READDIR cookie verifier: changes only when the listing could.
    pub fn dir_verifier(&self, dir: &Node) -> [u8; 8] {
        let hash = match dir {
            Node::Worktree { tree, .. } => xxhash_rust::xxh3::xxh3_64(tree.commit.as_bytes()),
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
            Node::Worktree { repo, tree, index } => NodeId::Worktree {
                repo: repo.id,
                commit: tree.commit,
                index: *index,
            },
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
            Node::Worktree { repo, tree, index } => {
                let n = tree
                    .node(*index)
                    .ok_or(FsError::Stale("node number is past the tree"))?;
                let (file_type, mode, size) = match n.kind {
                    NodeKind::Dir | NodeKind::Gitlink => (FileType::Directory, 0o755, DIR_SIZE),
                    NodeKind::File => (FileType::Regular, 0o644, self.blob_size(repo, n)?),
                    NodeKind::Executable => (FileType::Regular, 0o755, self.blob_size(repo, n)?),
                    NodeKind::Symlink => (FileType::Symlink, 0o777, self.blob_size(repo, n)?),
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
                    fsid: worktree_fsid(repo.id, tree.commit),
                    time: tree.time,
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
                        self.node(NodeId::Worktree {
                            repo: repo.id,
                            commit,
                            index: 0,
                        })
                    }
                }
            }
            Node::Worktree { repo, tree, index } => {
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
                    repo: Arc::clone(repo),
                    tree: Arc::clone(tree),
                    index: child,
                })
            }
        }
    }

    /// Up to `count` bytes of a regular file from `offset`, and whether they
    /// reach its end.
    pub fn read(&self, node: &Node, offset: u64, count: u32) -> Result<ReadChunk, FsError> {
        let (repo, n) = self.blob_node(node)?;
        match n.kind {
            NodeKind::File | NodeKind::Executable => {}
            NodeKind::Dir | NodeKind::Gitlink => return Err(FsError::IsDir),
            NodeKind::Symlink => return Err(FsError::NotSymlink),
        }
        let blob = self.blobs.get(repo, n.oid)?;
        n.remember_size(blob.len() as u64);
        let len = blob.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(count as usize).min(len);
        self.metrics.read_bytes.inc_by((end - start) as u64);
        Ok(ReadChunk {
            blob,
            range: start..end,
            eof: end == len,
        })
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, node: &Node) -> Result<Arc<[u8]>, FsError> {
        let (repo, n) = self.blob_node(node)?;
        if n.kind != NodeKind::Symlink {
            return Err(FsError::NotSymlink);
        }
        Ok(self.blobs.get(repo, n.oid)?)
    }

    fn blob_node<'a>(&self, node: &'a Node) -> Result<(&'a Repo, &'a worktree::Node), FsError> {
        match node {
            Node::Namespace { .. } => Err(FsError::IsDir),
            Node::Worktree { repo, tree, index } => {
                let n = tree
                    .node(*index)
                    .ok_or(FsError::Stale("node number is past the tree"))?;
                Ok((repo, n))
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
            Node::Worktree { repo, tree, index } => {
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
                let id = |index| NodeId::Worktree {
                    repo: repo.id,
                    commit: tree.commit,
                    index,
                };
                for pos in cookie..total {
                    let entry = match pos {
                        0 => dot(1, b".", id(*index), u64::from(*index) + 1),
                        1 => dot(2, b"..", id(d.parent), u64::from(d.parent) + 1),
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
                                id: Some(id(child)),
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
            Node::Worktree { tree, .. } => (0, tree.len() as u64),
        }
    }

    pub fn blobs(&self) -> &BlobCache {
        &self.blobs
    }
}

fn namespace_fileid(id: u64) -> u64 {
    // Below 2^32 like worktree fileids, and never 0.
    (id >> 32).max(1)
}

fn worktree_fsid(repo: RepoId, commit: ObjectId) -> u64 {
    let mut bytes = repo.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(commit.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}
