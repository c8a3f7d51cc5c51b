//! Fixture stores, built once by the shell script in `integration/fixtures`
//! and cached in the target directory under a hash of the script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The protocol fixture: `app.git` (packed) and `org/lib.git` (loose).
pub fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| build("make-fixture-store"))
}

/// Resource-hostile repositories: `hostile.git` (a delta chain thousands
/// deep, a folder of 1,000,000 entries, a 4,000-byte path, odd names).
pub fn hostile_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| build("make-hostile-store"))
}

fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn build(script: &str) -> PathBuf {
    let path = script_path(script);
    let text = std::fs::read(&path).expect("fixture script");
    let key = format!("{script}-{:016x}", fnv1a(&text));
    let root = crate::target_dir().join("lazy-worktree-fixtures");
    let done = root.join(&key);
    let store = done.join("store");
    if store.exists() {
        return store;
    }
    std::fs::create_dir_all(&root).expect("fixture root");
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{key}.tmp"))
        .tempdir_in(&root)
        .expect("fixture temp dir");
    let status = Command::new(&path)
        .arg(tmp.path().join("store"))
        .status()
        .expect("running the fixture script");
    assert!(status.success(), "{} failed: {status}", path.display());
    // Another test binary may have finished first; either copy is the same.
    let tmp = tmp.keep();
    if std::fs::rename(&tmp, &done).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(store.exists(), "fixture store missing after build");
    store
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds `dest` (a bare repository of `files` files, with history and a
/// branch) with `fixtures/make-sized-repo`, for the benchmarks.
pub fn make_sized_repo(files: usize, dest: &Path) {
    let status = Command::new(script_path("make-sized-repo"))
        .arg(files.to_string())
        .arg(dest)
        .status()
        .expect("running make-sized-repo");
    assert!(status.success(), "make-sized-repo {files} failed: {status}");
}

/// A benchmark repository, built once and cached: `r<N>` (N files, from
/// `make-sized-repo`) or `linux` (the kernel tree, from `make-kernel-repo`).
/// All live in one store folder, the path's parent.
pub fn bench_repo(name: &str) -> PathBuf {
    let store = crate::target_dir()
        .join("lazy-worktree-fixtures")
        .join("sized");
    std::fs::create_dir_all(&store).expect("bench store");
    let repo = store.join(format!("{name}.git"));
    // Both scripts make the branch `feature` last.
    if !repo.join("refs/heads/feature").exists() {
        let _ = std::fs::remove_dir_all(&repo);
        match name.strip_prefix('r').and_then(|n| n.parse().ok()) {
            Some(files) => make_sized_repo(files, &repo),
            None if name == "linux" => make_kernel_repo(&store),
            None => panic!("unknown bench repository {name}: r<N> or linux"),
        }
    }
    repo
}

/// Builds `store/linux.git`, the Linux kernel source from Debian's
/// `linux-source` tarball (about 80,000 files, two commits and a branch),
/// with `fixtures/make-kernel-repo`, for the benchmarks.
pub fn make_kernel_repo(store: &Path) {
    let status = Command::new(script_path("make-kernel-repo"))
        .arg(store)
        .status()
        .expect("running make-kernel-repo");
    assert!(status.success(), "make-kernel-repo failed: {status}");
}

/// What `git verify-pack -v` says of one object of `repo`'s packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub size_in_pack: u64,
    pub offset: u64,
    /// Its depth in a delta chain; 0 when it is stored whole.
    pub depth: u64,
    pub pack: usize,
}

/// The pack files of a bare repository, sorted.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(repo.join("objects/pack"))
        .expect("the pack folder")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    packs.sort();
    packs
}

/// Where object `rev` sits in `repo`'s packs (`pack` indexes [`packs`]),
/// or `None` when no pack holds it.
pub fn pack_entry(repo: &Path, rev: &str) -> Option<PackEntry> {
    let oid = String::from_utf8(git(repo, &["rev-parse", rev])).expect("an object id");
    let oid = oid.trim();
    packs(repo).iter().enumerate().find_map(|(pack, path)| {
        let idx = path.with_extension("idx");
        let listing = git(repo, &["verify-pack", "-v", &idx.to_string_lossy()]);
        let listing = String::from_utf8_lossy(&listing);
        // "<oid> <type> <size> <size-in-pack> <offset> [<depth> <base>]"
        let fields: Vec<&str> = listing
            .lines()
            .find(|l| l.starts_with(oid))?
            .split_whitespace()
            .collect();
        Some(PackEntry {
            size_in_pack: fields.get(3)?.parse().ok()?,
            offset: fields.get(4)?.parse().ok()?,
            depth: fields.get(5).and_then(|d| d.parse().ok()).unwrap_or(0),
            pack,
        })
    })
}

/// How many files (blobs, links and submodules) `repo` has at `rev`.
pub fn file_count(repo: &Path, rev: &str) -> usize {
    git(repo, &["ls-tree", "-r", "--name-only", "-z", rev])
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .count()
}

/// Output of a git command in `repo`, which must succeed.
pub fn git(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One entry of `git ls-tree -r -t --long -z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub mode: String,
    pub kind: String,
    pub oid: String,
    /// Blob size; None for trees and commits.
    pub size: Option<u64>,
    pub path: Vec<u8>,
}

/// Every entry (trees too) of `rev` in `repo`.
pub fn ls_tree(repo: &Path, rev: &str) -> Vec<TreeEntry> {
    let out = git(repo, &["ls-tree", "-r", "-t", "--long", "-z", rev]);
    out.split(|b| *b == 0)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let tab = line
                .iter()
                .position(|b| *b == b'\t')
                .expect("tab in ls-tree");
            let meta = String::from_utf8_lossy(&line[..tab]).into_owned();
            let mut fields = meta.split_whitespace();
            let mode = fields.next().expect("mode").to_owned();
            let kind = fields.next().expect("type").to_owned();
            let oid = fields.next().expect("oid").to_owned();
            let size = fields.next().and_then(|s| s.parse().ok());
            TreeEntry {
                mode,
                kind,
                oid,
                size,
                path: line[tab + 1..].to_vec(),
            }
        })
        .collect()
}
