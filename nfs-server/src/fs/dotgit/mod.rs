//! The synthesized `.git/` of every export, so that the unmodified `git`
//! binary treats a mounted worktree as a fresh clone checked out at the
//! pinned commit.
//!
//! What it holds and why:
//! - `HEAD`: the branch the export was mounted by, or the detached commit.
//! - `config`: non-bare, with `core.checkStat=minimal` and
//!   `core.trustctime=false` so git trusts the server's stat data through an
//!   overlay (whose inode numbers and devices differ from the index), and
//!   `gc.auto=0` so git never repacks the store's packs into a container.
//! - `packed-refs`: the mounted branch at the pinned commit, every branch of
//!   the store as `origin/<branch>` and every tag, as of the mount.
//! - `objects/pack/*` and loose objects: the store's files byte for byte.
//! - `index`: built from the tree with stat data equal to GETATTR's, dated
//!   an hour after the commit so no entry is racily clean.
//!
//! Layout (this module) is part of the node table and so of fileids: it must
//! only change together with the handle version.

pub mod content;
pub mod index;

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Synthesized files whose contents depend on the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitFile {
    Head,
    Config,
    Description,
    PackedRefs,
    Index,
    InfoExclude,
}

/// An entry of the synthesized `.git` tree.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
}

#[derive(Debug, Clone)]
pub enum EntryKind {
    Dir(Vec<Entry>),
    File(GitFile),
    /// A file of the store's `objects/` folder, served byte for byte; the
    /// size is the one seen when the worktree was loaded. Pack files come
    /// open: the export keeps reading them even if a repack deletes them.
    StoreFile {
        size: u64,
        open: Option<std::sync::Arc<std::fs::File>>,
    },
}

fn dir(name: &str, children: Vec<Entry>) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::Dir(children),
    }
}

fn file(name: &str, f: GitFile) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::File(f),
    }
}

/// The `.git` folder for a repository whose objects live in `objects_dir`.
pub fn layout(objects_dir: &Path) -> Entry {
    dir(
        ".git",
        vec![
            file("HEAD", GitFile::Head),
            file("config", GitFile::Config),
            file("description", GitFile::Description),
            file("packed-refs", GitFile::PackedRefs),
            file("index", GitFile::Index),
            dir("info", vec![file("exclude", GitFile::InfoExclude)]),
            dir("hooks", vec![]),
            dir(
                "refs",
                vec![
                    dir("heads", vec![]),
                    dir("tags", vec![]),
                    dir("remotes", vec![]),
                ],
            ),
            dir("objects", objects(objects_dir)),
        ],
    )
}

/// Pack files and loose objects of the store, as they are now.
fn objects(objects_dir: &Path) -> Vec<Entry> {
    let mut out = vec![dir("info", vec![])];
    let mut pack = Vec::new();
    for (name, size) in files_in(&objects_dir.join("pack")) {
        let keep = [".pack", ".idx", ".rev"]
            .iter()
            .any(|ext| name.ends_with(ext.as_bytes()));
        if keep {
            let path = objects_dir
                .join("pack")
                .join(std::ffi::OsStr::from_bytes(&name));
            // Opened now, so a repack that deletes it later cannot take it
            // from exports made before; if it is already gone, leave it out.
            let Some(file) = open_shared(&path) else {
                continue;
            };
            pack.push(Entry {
                name,
                kind: EntryKind::StoreFile {
                    size,
                    open: Some(file),
                },
            });
        }
    }
    out.push(dir("pack", pack));
    // Loose objects: two-hex-digit folders of 38-hex-digit files.
    let Ok(read) = std::fs::read_dir(objects_dir) else {
        return out;
    };
    for entry in read.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let loose: Vec<Entry> = files_in(&entry.path())
            .into_iter()
            .filter(|(n, _)| n.len() == 38 && n.iter().all(u8::is_ascii_hexdigit))
            .map(|(name, size)| Entry {
                name,
                kind: EntryKind::StoreFile { size, open: None },
            })
            .collect();
        if !loose.is_empty() {
            out.push(dir(name, loose));
        }
    }
    out
}

/// Pack files open somewhere in this process, by path: every table of a
/// repository shares one descriptor per pack (a pack's name is the hash of
/// its contents, so one path is one content for good).
static OPEN_PACKS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, std::sync::Weak<std::fs::File>>>,
> = std::sync::LazyLock::new(Default::default);

fn open_shared(path: &Path) -> Option<std::sync::Arc<std::fs::File>> {
    let mut open = OPEN_PACKS.lock().ok()?;
    if let Some(file) = open.get(path).and_then(std::sync::Weak::upgrade) {
        return Some(file);
    }
    let file = std::sync::Arc::new(std::fs::File::open(path).ok()?);
    open.retain(|_, weak| weak.strong_count() > 0);
    open.insert(path.to_owned(), std::sync::Arc::downgrade(&file));
    Some(file)
}

fn files_in(dir: &Path) -> Vec<(Vec<u8>, u64)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.file_name().into_encoded_bytes(), meta.len()))
        })
        .collect()
}
