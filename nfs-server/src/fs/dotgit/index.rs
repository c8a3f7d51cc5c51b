//! The synthesized `.git/index` (format version 2): one entry per file,
//! symlink and gitlink of the tree, sorted by path bytes, with the stat data
//! GETATTR reports, so that `git status` finds every entry clean without
//! reading file contents.
//!
//! It carries the cache-tree extension (`TREE`): every folder's tree id and
//! entry count, so `git status` (diff-index) takes unchanged folders from
//! the index instead of reading their tree objects from the packs, and
//! `git commit` reuses them.
//!
//! It carries the fsmonitor extension (`FSMN`, version 2) with an empty
//! dirty bitmap: every entry is valid as of [`FSMONITOR_TOKEN`]. With
//! `core.fsmonitor` set to `overlay-scripts/worktree-fsmonitor`, which
//! reports the overlay's upper layer (the only paths that can differ from
//! this index), even the first `git status` stats only the changed paths.
//! Without `core.fsmonitor`, git drops the extension.

use gix::ObjectId;

/// One index entry's inputs.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub path: Vec<u8>,
    /// Git mode: 0o100644, 0o100755, 0o120000 or 0o160000.
    pub mode: u32,
    pub oid: ObjectId,
    pub size: u64,
    /// The fileid GETATTR reports (git stores 32 bits).
    pub ino: u64,
}

/// Stat data shared by every entry.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// Seconds; GETATTR's mtime and ctime.
    pub time: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The fsmonitor token of a fresh index; the hook ignores it, since the
/// upper layer holds everything that changed since the index was made.
pub const FSMONITOR_TOKEN: &str = "git-nfsd:lower";

/// One folder of the cache tree, in pre-order: its name (empty for the
/// root), its tree id, how many index entries it covers, and how many of
/// the following folders are its direct subfolders.
#[derive(Debug, Clone)]
pub struct CacheTree {
    pub name: Vec<u8>,
    pub oid: ObjectId,
    pub entries: usize,
    pub subtrees: usize,
}

/// Serializes an index of `entries` (sorted here), with the cache-tree
/// (`trees`, in pre-order), the fsmonitor extension and a SHA-1 trailer.
pub fn write(mut entries: Vec<IndexEntry>, trees: &[CacheTree], stat: Stat) -> Vec<u8> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = Vec::with_capacity(12 + entries.len() * 96 + 20);
    out.extend_from_slice(b"DIRC");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for e in &entries {
        let start = out.len();
        // Truncation to 32 bits is what git itself stores.
        let words = [
            stat.time,
            0,
            stat.time,
            0,
            0,
            e.ino as u32,
            e.mode,
            stat.uid,
            stat.gid,
            e.size as u32,
        ];
        for w in words {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(e.oid.as_bytes());
        let flags = e.path.len().min(0xfff) as u16;
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&e.path);
        // 1 to 8 NULs so each entry's length is a multiple of 8.
        let len = out.len() - start;
        let padded = (len + 8) & !7;
        out.resize(start + padded, 0);
    }
    if !trees.is_empty() {
        cache_tree_extension(&mut out, trees);
    }
    fsmonitor_extension(&mut out);
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(&out);
    match hasher.try_finalize() {
        Ok(digest) => out.extend_from_slice(digest.as_bytes()),
        Err(e) => tracing::error!(error = %e, "hashing the index failed"),
    }
    out
}

/// `TREE`: per folder, `name NUL count SP subtrees LF oid`.
fn cache_tree_extension(out: &mut Vec<u8>, trees: &[CacheTree]) {
    let mut data = Vec::new();
    for t in trees {
        data.extend_from_slice(&t.name);
        data.push(0);
        data.extend_from_slice(format!("{} {}\n", t.entries, t.subtrees).as_bytes());
        data.extend_from_slice(t.oid.as_bytes());
    }
    out.extend_from_slice(b"TREE");
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
}

/// `FSMN`: version 2, the token, and an empty EWAH bitmap of dirty entries
/// (32-bit bit count 0, one 64-bit run-length word 0, its position 0).
fn fsmonitor_extension(out: &mut Vec<u8>) {
    let mut data = Vec::new();
    data.extend_from_slice(&2u32.to_be_bytes());
    data.extend_from_slice(FSMONITOR_TOKEN.as_bytes());
    data.push(0);
    let mut ewah = Vec::new();
    ewah.extend_from_slice(&0u32.to_be_bytes()); // bits
    ewah.extend_from_slice(&1u32.to_be_bytes()); // words
    ewah.extend_from_slice(&0u64.to_be_bytes()); // the run-length word
    ewah.extend_from_slice(&0u32.to_be_bytes()); // position of the last run-length word
    data.extend_from_slice(&(ewah.len() as u32).to_be_bytes());
    data.extend_from_slice(&ewah);
    out.extend_from_slice(b"FSMN");
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_padded_and_hashed() {
        let oid = ObjectId::from_bytes_or_panic(&[7; 20]);
        let entry = |path: &str| IndexEntry {
            path: path.as_bytes().to_vec(),
            mode: 0o100644,
            oid,
            size: 3,
            ino: 9,
        };
        let bytes = write(
            vec![entry("b"), entry("a/c"), entry("a.b")],
            &[],
            Stat {
                time: 100,
                uid: 1,
                gid: 2,
            },
        );
        assert_eq!(&bytes[..12], b"DIRC\0\0\0\x02\0\0\0\x03");
        // 62 bytes of fixed fields + "a.b" + NUL padding = 72.
        assert_eq!(&bytes[12 + 62..12 + 65], b"a.b");
        assert_eq!(&bytes[12 + 72 + 62..12 + 72 + 65], b"a/c");
        // "b" is one byte: 62 + 1 + 1 NUL, padded to 64.
        let entries_end = 12 + 72 + 72 + 64;
        assert_eq!(&bytes[entries_end..entries_end + 4], b"FSMN");
        let ext_len =
            u32::from_be_bytes(bytes[entries_end + 4..entries_end + 8].try_into().unwrap())
                as usize;
        assert_eq!(ext_len, 4 + FSMONITOR_TOKEN.len() + 1 + 4 + 20);
        assert_eq!(bytes.len(), entries_end + 8 + ext_len + 20);
        let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
        hasher.update(&bytes[..bytes.len() - 20]);
        assert_eq!(
            hasher.try_finalize().unwrap().as_bytes(),
            &bytes[bytes.len() - 20..]
        );
    }
}
