//! Entry points for the `cargo fuzz` targets in `nfs-server/fuzz`, shared
//! with the corpus replay test so that every input a fuzzer ever kept (and
//! every crash it found) is checked again by the ordinary test suite on a
//! stable toolchain.
//!
//! Each entry point takes untrusted bytes exactly as a client would send
//! them, runs them through the same code the server runs, and panics only
//! when an invariant that no input may break is broken.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::dispatch::{Context, route};
use crate::fs::export_path::{ExportPath, MAX_EXPORT_PATH};
use crate::fs::{Filesystem, Owner};
use crate::metrics::Metrics;
use crate::rpc::record::read_record;
use crate::rpc::{CallError, Reply, parse_call};
use crate::server::AccessList;
use crate::store::{Spill, Store};

/// Record limit for [`record_stream`]: small, so the fuzzer reaches it.
const FUZZ_MAX_RECORD: usize = 4096;

/// Splits a byte stream into RPC records the way a connection does, until
/// the stream ends or a record is refused.
pub fn record_stream(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut reader = data;
            let mut record = Vec::new();
            loop {
                let before = reader.len();
                match read_record(&mut reader, &mut record, FUZZ_MAX_RECORD).await {
                    Ok(true) => {
                        assert!(record.len() <= FUZZ_MAX_RECORD, "record over the limit");
                        // Every fragment costs a 4-byte mark on top of its bytes.
                        assert!(before - reader.len() >= record.len() + 4);
                    }
                    Ok(false) => {
                        assert!(reader.is_empty(), "clean end with bytes left");
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
    });
}

/// Checks the invariants of a MOUNT path that parsed: nothing in it can
/// name a parent folder, and it stays within MNTPATHLEN.
pub fn export_path(data: &[u8]) {
    let Ok(path) = ExportPath::parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_EXPORT_PATH);
    if !path.repo.is_empty() {
        for component in path.repo.split('/') {
            assert!(
                !matches!(component, "" | "." | ".."),
                "{component:?} accepted"
            );
            assert!(!component.contains('\\'));
        }
    }
    if let Some(rev) = path.rev {
        assert!(!path.repo.is_empty(), "a revision without a repository");
        assert!(!rev.is_empty() && !rev.starts_with('-') && !rev.contains(".."));
        assert!(!rev.contains("@{") && !rev.contains(':'));
    }
}

/// A server's call path over a small fixture store: one record in, one
/// reply out, through the same parser, program table and handlers.
pub struct CallHarness {
    ctx: Context,
    _store_dir: tempfile::TempDir,
}

/// Name of the fixture repository; its main branch is `main`.
pub const FIXTURE_REPO: &str = "repo";

impl CallHarness {
    /// Builds the fixture store with `git` (files, a folder, an executable,
    /// a symlink, a 64 KiB file, two commits) and a filesystem over it.
    /// Commit dates are fixed, so handles are the same on every run and
    /// a saved input keeps meaning the same call.
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        build_fixture(
            &dir.path().join("work"),
            &store.join(format!("{FIXTURE_REPO}.git")),
        )?;
        let store = Store::open_dir(&store).map_err(std::io::Error::other)?;
        let metrics = Arc::new(Metrics::new());
        let spill = Spill::in_dir(dir.path(), 64 << 20)?;
        let fs = Filesystem::new(
            Arc::new(store),
            Owner::default(),
            32 << 20,
            spill,
            Arc::clone(&metrics),
        );
        let ctx = Context {
            fs: Arc::new(fs),
            metrics,
            port: 2049,
            access: Arc::new(AccessList::new(Vec::new())),
        };
        Ok(Self {
            ctx,
            _store_dir: dir,
        })
    }

    /// Answers one record (without its record mark) as a connection would,
    /// and returns the reply message, or `None` when the connection would
    /// close or ignore the record.
    pub fn call(&self, record: &[u8]) -> Option<Vec<u8>> {
        let (header, args) = match parse_call(record) {
            Ok(call) => call,
            Err(CallError::Unreadable(_) | CallError::NotACall { .. }) => return None,
            Err(CallError::RpcMismatch { xid, .. }) => {
                return Some(encode(xid, Reply::RpcMismatch));
            }
            Err(CallError::BadCredential { xid, .. }) => {
                let reply = Reply::AuthError(nfs3_types::rpc::auth_stat::AUTH_BADCRED);
                return Some(encode(xid, reply));
            }
        };
        let xid = header.xid;
        let reply = match route(&header) {
            Ok(procedure) => (procedure.handler)(&self.ctx, &header, args),
            Err(reply) => reply,
        };
        // READ's data is bounded by MAX_READ; nothing else comes near.
        assert!(reply.result_len() <= crate::nfs3::MAX_READ as usize + 4096);
        Some(encode(xid, reply))
    }
}

fn encode(xid: u32, reply: Reply) -> Vec<u8> {
    let mut out = Vec::new();
    reply.encode(xid, &mut out);
    assert_eq!(
        out.get(..4),
        Some(&xid.to_be_bytes()[..]),
        "reply lost its xid"
    );
    out
}

fn build_fixture(work: &Path, bare: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(work.join("src"))?;
    let git = |args: &[&str]| -> std::io::Result<()> {
        let status = Command::new("git")
            .arg("-C")
            .arg(work)
            .args(args)
            .env("GIT_AUTHOR_NAME", "fuzz")
            .env("GIT_AUTHOR_EMAIL", "fuzz@example.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_NAME", "fuzz")
            .env("GIT_COMMITTER_EMAIL", "fuzz@example.invalid")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "git {args:?} failed: {status}"
            )))
        }
    };
    git(&["init", "-q", "-b", "main"])?;
    std::fs::write(work.join("README.md"), "fixture\n")?;
    std::fs::write(work.join("src/lib.rs"), "pub fn f() {}\n")?;
    std::fs::write(work.join("run.sh"), "#!/bin/sh\necho run\n")?;
    std::fs::write(work.join("big.bin"), pattern(64 * 1024))?;
    git(&["add", "."])?;
    git(&["update-index", "--chmod=+x", "run.sh"])?;
    git(&["commit", "-q", "-m", "first"])?;
    std::os::unix::fs::symlink("src/lib.rs", work.join("link"))?;
    std::fs::write(work.join("src/lib.rs"), "pub fn f() -> u32 { 1 }\n")?;
    git(&["add", "."])?;
    git(&["commit", "-q", "-m", "second"])?;
    let bare_arg: PathBuf = bare.to_path_buf();
    let status = Command::new("git")
        .args(["clone", "-q", "--bare", "--no-local"])
        .arg(work)
        .arg(&bare_arg)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "git clone --bare failed: {status}"
        )));
    }
    Ok(())
}

/// Bytes that compress but are not all alike.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

/// Seed inputs: well-formed calls of every procedure of every program,
/// with handles of real nodes in the fixture, so that fuzzing starts deep
/// in the handlers rather than at the header checks.
impl CallHarness {
    pub fn seed_calls(&self) -> std::io::Result<Vec<(String, Vec<u8>)>> {
        let fs = &self.ctx.fs;
        let root_id = fs
            .mount(format!("/{FIXTURE_REPO}@main").as_bytes())
            .map_err(std::io::Error::other)?;
        let handle_of = |path: &[&str]| -> std::io::Result<Vec<u8>> {
            let mut node = fs.node(root_id).map_err(std::io::Error::other)?;
            for name in path {
                node = fs
                    .lookup(&node, name.as_bytes())
                    .map_err(std::io::Error::other)?;
            }
            Ok(crate::handle::encode(&Filesystem::id_of(&node)))
        };
        let root = handle_of(&[])?;
        let src = handle_of(&["src"])?;
        let file = handle_of(&["src", "lib.rs"])?;
        let big = handle_of(&["big.bin"])?;
        let link = handle_of(&["link"])?;
        let dotgit = handle_of(&[".git"])?;
        let index = handle_of(&[".git", "index"])?;
        let namespace = crate::handle::encode(&fs.mount(b"/").map_err(std::io::Error::other)?);

        let nfs = |proc_: u32, args: Xdr| call(crate::nfs3::PROGRAM, 3, proc_, args);
        let no_attrs = || Xdr::new().words(&[0, 0, 0, 0, 0, 0]);
        let mut seeds = vec![
            ("nfs_null", nfs(0, Xdr::new())),
            ("getattr", nfs(1, Xdr::new().opaque(&file))),
            ("getattr_namespace", nfs(1, Xdr::new().opaque(&namespace))),
            (
                "setattr",
                nfs(2, Xdr::new().opaque(&file).append(no_attrs()).words(&[0])),
            ),
            ("lookup", nfs(3, Xdr::new().opaque(&root).opaque(b"src"))),
            (
                "lookup_dotdot",
                nfs(3, Xdr::new().opaque(&src).opaque(b"..")),
            ),
            (
                "lookup_dotgit",
                nfs(3, Xdr::new().opaque(&dotgit).opaque(b"HEAD")),
            ),
            ("access", nfs(4, Xdr::new().opaque(&file).words(&[0x3f]))),
            ("readlink", nfs(5, Xdr::new().opaque(&link))),
            (
                "read",
                nfs(6, Xdr::new().opaque(&big).u64(4096).words(&[8192])),
            ),
            (
                "read_index",
                nfs(6, Xdr::new().opaque(&index).u64(0).words(&[65536])),
            ),
            (
                "write",
                nfs(
                    7,
                    Xdr::new()
                        .opaque(&file)
                        .u64(0)
                        .words(&[3, 2])
                        .opaque(b"abc"),
                ),
            ),
            (
                "create",
                nfs(
                    8,
                    Xdr::new()
                        .opaque(&root)
                        .opaque(b"new")
                        .words(&[0])
                        .append(no_attrs()),
                ),
            ),
            (
                "mkdir",
                nfs(9, Xdr::new().opaque(&root).opaque(b"d").append(no_attrs())),
            ),
            (
                "symlink",
                nfs(
                    10,
                    Xdr::new()
                        .opaque(&root)
                        .opaque(b"s")
                        .append(no_attrs())
                        .opaque(b"t"),
                ),
            ),
            (
                "mknod",
                nfs(11, Xdr::new().opaque(&root).opaque(b"n").words(&[6])),
            ),
            (
                "remove",
                nfs(12, Xdr::new().opaque(&root).opaque(b"README.md")),
            ),
            ("rmdir", nfs(13, Xdr::new().opaque(&root).opaque(b"src"))),
            (
                "rename",
                nfs(
                    14,
                    Xdr::new()
                        .opaque(&root)
                        .opaque(b"a")
                        .opaque(&src)
                        .opaque(b"b"),
                ),
            ),
            (
                "link",
                nfs(15, Xdr::new().opaque(&file).opaque(&root).opaque(b"l")),
            ),
            (
                "readdir",
                nfs(16, Xdr::new().opaque(&root).u64(0).u64(0).words(&[4096])),
            ),
            (
                "readdirplus",
                nfs(
                    17,
                    Xdr::new().opaque(&root).u64(0).u64(0).words(&[1024, 8192]),
                ),
            ),
            (
                "readdirplus_dotgit",
                nfs(
                    17,
                    Xdr::new()
                        .opaque(&dotgit)
                        .u64(0)
                        .u64(0)
                        .words(&[1024, 8192]),
                ),
            ),
            ("fsstat", nfs(18, Xdr::new().opaque(&root))),
            ("fsinfo", nfs(19, Xdr::new().opaque(&root))),
            ("pathconf", nfs(20, Xdr::new().opaque(&root))),
            (
                "commit",
                nfs(21, Xdr::new().opaque(&file).u64(0).words(&[0])),
            ),
        ];
        let mount = |proc_: u32, args: Xdr| call(crate::mount::PROGRAM, 3, proc_, args);
        seeds.extend([
            ("mount_null", mount(0, Xdr::new())),
            (
                "mnt",
                mount(
                    1,
                    Xdr::new().opaque(format!("/{FIXTURE_REPO}@main").as_bytes()),
                ),
            ),
            (
                "mnt_folder",
                mount(
                    1,
                    Xdr::new().opaque(format!("/{FIXTURE_REPO}@HEAD~1/src").as_bytes()),
                ),
            ),
            ("mnt_root", mount(1, Xdr::new().opaque(b"/"))),
            ("dump", mount(2, Xdr::new())),
            ("umnt", mount(3, Xdr::new().opaque(b"/repo"))),
            ("umntall", mount(4, Xdr::new())),
            ("export", mount(5, Xdr::new())),
        ]);
        let acl = |proc_: u32, args: Xdr| call(crate::acl::PROGRAM, 3, proc_, args);
        seeds.extend([
            ("acl_null", acl(0, Xdr::new())),
            ("getacl", acl(1, Xdr::new().opaque(&root).words(&[0xf]))),
            (
                "setacl",
                acl(2, Xdr::new().opaque(&file).words(&[1, 0, 0, 0, 0])),
            ),
        ]);
        let portmap = |proc_: u32, args: Xdr| call(crate::portmap::PROGRAM, 2, proc_, args);
        seeds.extend([
            ("portmap_null", portmap(0, Xdr::new())),
            (
                "portmap_set",
                portmap(1, Xdr::new().words(&[100_003, 3, 6, 2049])),
            ),
            (
                "portmap_unset",
                portmap(2, Xdr::new().words(&[100_003, 3, 6, 2049])),
            ),
            ("getport", portmap(3, Xdr::new().words(&[100_003, 3, 6, 0]))),
            ("dump_portmap", portmap(4, Xdr::new())),
        ]);
        Ok(seeds
            .into_iter()
            .map(|(name, record)| (name.to_owned(), record))
            .collect())
    }
}

/// Seed MOUNT paths, good and bad.
pub fn seed_export_paths() -> Vec<(String, Vec<u8>)> {
    [
        "/",
        "/repo",
        "/repo@main",
        "/org/app@feature/x/src",
        "/repo@HEAD~2",
        "/a/../b",
        "/r@a..b",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| (format!("path_{i}"), p.as_bytes().to_vec()))
    .collect()
}

/// Seed byte streams: one record, a record in two fragments, two records.
pub fn seed_streams() -> Vec<(String, Vec<u8>)> {
    let body = call(crate::nfs3::PROGRAM, 3, 0, Xdr::new());
    let mark = |len: usize, last: bool| {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        (len | if last { 0x8000_0000 } else { 0 }).to_be_bytes()
    };
    let whole = [&mark(body.len(), true)[..], &body].concat();
    let (a, b) = body.split_at(body.len() / 2);
    let split = [&mark(a.len(), false)[..], a, &mark(b.len(), true), b].concat();
    let two = [whole.clone(), whole.clone()].concat();
    vec![
        ("one_record".to_owned(), whole),
        ("two_fragments".to_owned(), split),
        ("two_records".to_owned(), two),
    ]
}

/// A call record with an AUTH_SYS credential (uid 1000) and no verifier.
fn call(prog: u32, vers: u32, proc_: u32, args: Xdr) -> Vec<u8> {
    let cred = Xdr::new()
        .words(&[0])
        .opaque(b"fuzz")
        .words(&[1000, 1000, 1, 1000]);
    Xdr::new()
        .words(&[0x0102_0304, 0, 2, prog, vers, proc_, 1])
        .opaque(&cred.0)
        .words(&[0, 0])
        .append(args)
        .0
}

/// A tiny XDR writer for seed inputs.
struct Xdr(Vec<u8>);

impl Xdr {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn words(mut self, words: &[u32]) -> Self {
        for w in words {
            self.0.extend_from_slice(&w.to_be_bytes());
        }
        self
    }

    fn u64(self, v: u64) -> Self {
        self.words(&[(v >> 32) as u32, v as u32])
    }

    fn opaque(mut self, bytes: &[u8]) -> Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn append(mut self, other: Xdr) -> Self {
        self.0.extend_from_slice(&other.0);
        self
    }
}
