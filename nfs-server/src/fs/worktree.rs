//! The node table of one pinned commit: every directory, file, symlink and
//! gitlink of its tree, numbered deterministically.
//!
//! Nodes are numbered breadth first with each directory's children sorted by
//! name bytes and numbered consecutively. So a node's number depends only on
//! the commit, which makes it usable as a fileid and inside file handles that
//! survive restarts; a directory's children are a contiguous range (READDIR
//! cookies are positions in it) and LOOKUP is a binary search in that range.
//! Only trees are decoded to build the table; blobs stay untouched until READ.
//! The synthesized `.git` folder ([`super::dotgit`]) is numbered the same
//! way, as a child of the root.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use gix::ObjectId;
use gix::objs::tree::EntryKind;
use thiserror::Error;

use super::dotgit::{self, GitFile};

/// Index of a node in its worktree; the root is 0.
pub type NodeIndex = u32;

/// What a tree entry is, as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Executable,
    Symlink,
    /// A submodule commit: shown as an empty directory.
    Gitlink,
    /// A folder of the synthesized `.git`.
    GitDir,
    /// A synthesized file of `.git` whose bytes depend on the export.
    GitFile(GitFile),
    /// A file of the store's `objects/` folder, served byte for byte.
    StoreFile,
}

impl NodeKind {
    /// Whether the node is part of the synthesized `.git`.
    pub fn in_dotgit(self) -> bool {
        matches!(self, Self::GitDir | Self::GitFile(_) | Self::StoreFile)
    }
}

/// One entry of the tree.
#[derive(Debug)]
pub struct Node {
    pub parent: NodeIndex,
    pub kind: NodeKind,
    /// Tree id for directories, blob id for files and symlinks, commit id
    /// for gitlinks.
    pub oid: ObjectId,
    name: Range<u32>,
    children: Range<NodeIndex>,
    /// Number of children that are directories (for `nlink`).
    pub subdirs: u32,
    /// Blob size once known; `u64::MAX` until then.
    size: AtomicU64,
}

impl Node {
    pub fn children(&self) -> Range<NodeIndex> {
        self.children.clone()
    }

    pub fn is_dir(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::Dir | NodeKind::Gitlink | NodeKind::GitDir
        )
    }

    /// The blob size if it was looked up before.
    pub fn known_size(&self) -> Option<u64> {
        match self.size.load(Ordering::Relaxed) {
            u64::MAX => None,
            size => Some(size),
        }
    }

    pub fn remember_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }
}

/// Why a worktree could not be built; returned by [`Worktree::build`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("cannot read commit {commit}")]
    Commit {
        commit: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("cannot read tree {tree}")]
    Tree {
        tree: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("tree of {0} has more entries than a worktree can number")]
    TooManyNodes(ObjectId),
}

/// The pinned tree of one commit.
#[derive(Debug)]
pub struct Worktree {
    pub commit: ObjectId,
    /// Committer time, in seconds since the epoch: every node's timestamp.
    pub time: i64,
    nodes: Vec<Node>,
    names: Vec<u8>,
    /// The store's pack files, held open for as long as the table lives
    /// (exports keep their table): their bytes stay readable through a
    /// repack that deletes them.
    open_files: std::collections::HashMap<NodeIndex, std::sync::Arc<std::fs::File>>,
}

impl Worktree {
    /// Walks the commit's trees and numbers every entry, with `dotgit` (the
    /// synthesized `.git` folder) as a child of the root.
    pub fn build(
        repo: &gix::Repository,
        commit: ObjectId,
        dotgit: Option<dotgit::Entry>,
    ) -> Result<Self, BuildError> {
        let commit_err = |source| BuildError::Commit { commit, source };
        let c = repo.find_commit(commit).map_err(commit_err)?;
        let time = c.time().map_err(commit_err)?.seconds;
        let root_tree = c.tree_id().map_err(commit_err)?.detach();

        let mut nodes = vec![Node {
            parent: 0,
            kind: NodeKind::Dir,
            oid: root_tree,
            name: 0..0,
            children: 0..0,
            subdirs: 0,
            size: AtomicU64::new(u64::MAX),
        }];
        let mut names = Vec::new();
        let mut open_files = std::collections::HashMap::new();
        let mut queue = VecDeque::from([(0 as NodeIndex, Source::Tree(root_tree, dotgit))]);
        let mut entries: Vec<Child> = Vec::new();
        while let Some((dir, source)) = queue.pop_front() {
            entries.clear();
            match source {
                Source::Tree(tree_id, dotgit) => {
                    tree_entries(repo, tree_id, &mut entries)?;
                    if let Some(dotgit) = dotgit {
                        entries.retain(|c| c.name != dotgit.name);
                        entries.push(Child::synthetic(dotgit));
                    }
                }
                Source::Synthetic(children) => {
                    entries.extend(children.into_iter().map(Child::synthetic));
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let first = index_of(nodes.len(), commit)?;
            let mut subdirs = 0;
            for child in entries.drain(..) {
                let index = index_of(nodes.len(), commit)?;
                let start =
                    u32::try_from(names.len()).map_err(|_| BuildError::TooManyNodes(commit))?;
                names.extend_from_slice(&child.name);
                let end =
                    u32::try_from(names.len()).map_err(|_| BuildError::TooManyNodes(commit))?;
                if matches!(
                    child.kind,
                    NodeKind::Dir | NodeKind::Gitlink | NodeKind::GitDir
                ) {
                    subdirs += 1;
                }
                match child.next {
                    Some(Next::Tree) => queue.push_back((index, Source::Tree(child.oid, None))),
                    Some(Next::Synthetic(children)) => {
                        queue.push_back((index, Source::Synthetic(children)))
                    }
                    None => {}
                }
                if let Some(file) = child.open {
                    open_files.insert(index, file);
                }
                nodes.push(Node {
                    parent: dir,
                    kind: child.kind,
                    oid: child.oid,
                    name: start..end,
                    children: 0..0,
                    subdirs: 0,
                    size: AtomicU64::new(child.size.unwrap_or(u64::MAX)),
                });
            }
            let end = index_of(nodes.len(), commit)?;
            let node = &mut nodes[dir as usize];
            node.children = first..end;
            node.subdirs = subdirs;
        }
        nodes.shrink_to_fit();
        names.shrink_to_fit();
        Ok(Self {
            commit,
            time,
            nodes,
            names,
            open_files,
        })
    }

    /// Every file, symlink and gitlink of the commit's tree (not `.git`),
    /// with its full path, in node order.
    pub fn tracked(&self) -> Vec<(Vec<u8>, NodeIndex)> {
        let mut paths: Vec<Vec<u8>> = Vec::with_capacity(self.nodes.len());
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            // Parents come before children in breadth-first order.
            let path = if i == 0 {
                Vec::new()
            } else {
                let parent = &paths[node.parent as usize];
                let mut p = Vec::with_capacity(parent.len() + 1 + self.name(node).len());
                if !parent.is_empty() {
                    p.extend_from_slice(parent);
                    p.push(b'/');
                }
                p.extend_from_slice(self.name(node));
                p
            };
            let tracked = matches!(
                node.kind,
                NodeKind::File | NodeKind::Executable | NodeKind::Symlink | NodeKind::Gitlink
            );
            if tracked {
                out.push((path.clone(), i as NodeIndex));
            }
            paths.push(if node.kind.in_dotgit() {
                Vec::new()
            } else {
                path
            });
        }
        out
    }

    /// The cache tree of the commit (folders of the tree, not `.git`), in
    /// pre-order with subfolders in name order, as the index extension
    /// wants it.
    pub fn cache_tree(&self) -> Vec<dotgit::index::CacheTree> {
        // Entries covered by each node: files, symlinks and gitlinks count
        // one; folders add up their children. Children follow their
        // parents in breadth-first order, so a reverse pass sums bottom-up.
        let mut covered = vec![0usize; self.nodes.len()];
        for i in (1..self.nodes.len()).rev() {
            let node = &self.nodes[i];
            let own = match node.kind {
                NodeKind::File | NodeKind::Executable | NodeKind::Symlink | NodeKind::Gitlink => 1,
                NodeKind::Dir => covered[i],
                NodeKind::GitDir | NodeKind::GitFile(_) | NodeKind::StoreFile => 0,
            };
            covered[node.parent as usize] += own;
        }
        let mut out = Vec::new();
        let mut stack = vec![0 as NodeIndex];
        while let Some(index) = stack.pop() {
            let node = &self.nodes[index as usize];
            let dirs: Vec<NodeIndex> = node
                .children()
                .filter(|c| self.nodes[*c as usize].kind == NodeKind::Dir)
                .collect();
            out.push(dotgit::index::CacheTree {
                name: if index == 0 {
                    Vec::new()
                } else {
                    self.name(node).to_vec()
                },
                oid: node.oid,
                entries: covered[index as usize],
                subtrees: dirs.len(),
            });
            // Pre-order: push in reverse so the first subfolder comes next.
            stack.extend(dirs.into_iter().rev());
        }
        out
    }

    /// The open store file behind `index`, if it was opened with the table.
    pub fn open_file(&self, index: NodeIndex) -> Option<&std::sync::Arc<std::fs::File>> {
        self.open_files.get(&index)
    }

    /// Where a [`NodeKind::StoreFile`] lives, relative to the store's
    /// `objects/` folder (`pack/NAME` or `xx/yyyy...`).
    pub fn store_path(&self, node: &Node) -> Option<std::path::PathBuf> {
        if node.kind != NodeKind::StoreFile {
            return None;
        }
        use std::os::unix::ffi::OsStrExt;
        let parent = self.node(node.parent)?;
        let mut path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(self.name(parent)));
        path.push(std::ffi::OsStr::from_bytes(self.name(node)));
        Some(path)
    }

    pub fn node(&self, index: NodeIndex) -> Option<&Node> {
        self.nodes.get(index as usize)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn name(&self, node: &Node) -> &[u8] {
        &self.names[node.name.start as usize..node.name.end as usize]
    }

    /// The child of `dir` called `name`.
    pub fn lookup(&self, dir: &Node, name: &[u8]) -> Option<NodeIndex> {
        let range = dir.children();
        let slice = &self.nodes[range.start as usize..range.end as usize];
        let pos = slice.binary_search_by(|n| self.name(n).cmp(name)).ok()?;
        Some(range.start + pos as NodeIndex)
    }

    /// Memory held by the table, for the cache's weigher.
    pub fn approx_bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Node>() + self.names.len()
    }
}

fn index_of(len: usize, commit: ObjectId) -> Result<NodeIndex, BuildError> {
    // Keep fileids (index + 1) below 2^32: git stores inode numbers in 32 bits.
    NodeIndex::try_from(len)
        .ok()
        .filter(|i| *i < NodeIndex::MAX - 1)
        .ok_or(BuildError::TooManyNodes(commit))
}

/// Where a directory's children come from.
enum Source {
    /// A git tree; the root also gets the synthesized `.git`.
    Tree(ObjectId, Option<dotgit::Entry>),
    Synthetic(Vec<dotgit::Entry>),
}

enum Next {
    Tree,
    Synthetic(Vec<dotgit::Entry>),
}

/// A child about to be numbered.
struct Child {
    name: Vec<u8>,
    kind: NodeKind,
    oid: ObjectId,
    size: Option<u64>,
    next: Option<Next>,
    open: Option<std::sync::Arc<std::fs::File>>,
}

impl Child {
    fn synthetic(entry: dotgit::Entry) -> Self {
        let null = ObjectId::null(gix::hash::Kind::Sha1);
        let (kind, size, next, open) = match entry.kind {
            dotgit::EntryKind::Dir(children) => (
                NodeKind::GitDir,
                None,
                Some(Next::Synthetic(children)),
                None,
            ),
            dotgit::EntryKind::File(f) => (NodeKind::GitFile(f), None, None, None),
            dotgit::EntryKind::StoreFile { size, open } => {
                (NodeKind::StoreFile, Some(size), None, open)
            }
        };
        Self {
            name: entry.name,
            kind,
            oid: null,
            size,
            next,
            open,
        }
    }
}

fn tree_entries(
    repo: &gix::Repository,
    tree_id: ObjectId,
    out: &mut Vec<Child>,
) -> Result<(), BuildError> {
    let tree = repo.find_tree(tree_id).map_err(|source| BuildError::Tree {
        tree: tree_id,
        source,
    })?;
    let decoded = tree.decode().map_err(|source| BuildError::Tree {
        tree: tree_id,
        source,
    })?;
    for entry in &decoded.entries {
        let name: &[u8] = entry.filename.as_ref();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            tracing::warn!(tree = %tree_id, name = ?entry.filename, "skipping a tree entry with an impossible name");
            continue;
        }
        let (kind, next) = match entry.mode.kind() {
            EntryKind::Tree => (NodeKind::Dir, Some(Next::Tree)),
            EntryKind::Blob => (NodeKind::File, None),
            EntryKind::BlobExecutable => (NodeKind::Executable, None),
            EntryKind::Link => (NodeKind::Symlink, None),
            EntryKind::Commit => (NodeKind::Gitlink, None),
        };
        out.push(Child {
            name: name.to_vec(),
            kind,
            oid: entry.oid.to_owned(),
            size: None,
            next,
            open: None,
        });
    }
    Ok(())
}
