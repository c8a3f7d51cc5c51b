//! Memory per live export: git-nfsd's RSS with 1, 10, 100 and 300 exports of a
//! 100,000-file tree and of the Linux kernel tree mounted and in use, with
//! the default cache (256 MiB) and a larger one, printed as a table
//! (BENCH_REPOS=r100000,linux picks the trees):
//! `cargo build --release --bins && cargo bench -p integration --bench exports`.
//!
//! Each export is a different commit (same tree, its own node table and
//! index), mounted, listed at its root and its index read, as a fresh
//! `git status` would. The cache bounds what stays: exports past it are
//! evicted and rebuilt from their handles on next use, so RSS should level
//! off at the cache size plus a small fixed cost.

use std::path::{Path, PathBuf};
use std::time::Instant;

use integration::client::RpcClient;
use integration::fixture;
use integration::report::{Plot, Table};
use integration::server::GitNfsd;

const COUNTS: [usize; 4] = [1, 10, 100, 300];
/// Extra commits made for the exports: as many as the largest count.
const COMMITS: usize = 300;

/// A git command's output as trimmed text.
fn git(repo: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&fixture::git(repo, args))
        .trim()
        .to_owned()
}

/// `store/<name>.git`, a benchmark repository ([`fixture::bench_repo`],
/// objects shared by hard links) with 300 extra commits of main's tree,
/// `refs/heads/e000` to `e299`. Built once and cached.
fn prepare(name: &str) -> PathBuf {
    let store = integration::target_dir()
        .join("lazy-worktree-fixtures")
        .join("exports");
    let repo = store.join(format!("{name}.git"));
    if repo
        .join(format!("refs/heads/e{:03}", COMMITS - 1))
        .exists()
    {
        return store;
    }
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&store).expect("store");
    let source = fixture::bench_repo(name);
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&source)
        .arg(&repo)
        .status()
        .expect("git clone");
    assert!(status.success(), "git clone --bare {}", source.display());
    let tree = git(&repo, &["rev-parse", "main^{tree}"]);
    for i in 0..COMMITS {
        let commit = git(
            &repo,
            &[
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.invalid",
                "commit-tree",
                &tree,
                "-m",
                &format!("export {i}"),
            ],
        );
        git(
            &repo,
            &["update-ref", &format!("refs/heads/e{i:03}"), &commit],
        );
    }
    store
}

/// Mounts `count` exports and uses each like a fresh `git status` would
/// (root listing, the whole index); returns (RSS, anonymous RSS) after,
/// and seconds.
fn live_exports(server: &GitNfsd, repo: &str, count: usize) -> (u64, u64, f64) {
    let started = Instant::now();
    let mut c = RpcClient::connect(server.addr);
    for i in 0..count {
        let root = c.mount(&format!("/{repo}@e{i:03}")).expect("MOUNT");
        c.readdirplus_all(&root, 8192, 65536).expect("listing");
        let index = c.walk(&root, ".git/index").expect("index");
        c.read_all(&index, 1 << 20).expect("reading the index");
    }
    (
        server.rss_kib(),
        integration::anon_rss_kib(server.pid()),
        started.elapsed().as_secs_f64(),
    )
}

fn main() {
    let names = std::env::var("BENCH_REPOS").unwrap_or_else(|_| "r100000,linux".into());
    let mut table = Table::new(
        "git-nfsd RSS with live exports (each a different commit of the same tree)",
        &[
            "tree",
            "cache",
            "exports",
            "RSS",
            "of it anonymous (heap)",
            "heap per export",
            "time to mount and use them",
        ],
    );
    let mut plot = Plot::new(
        "heap-per-export",
        "git-nfsd heap with live exports",
        "live exports",
        "anonymous RSS (MiB)",
    )
    .log_x();
    for name in names.split(',') {
        let store = prepare(name);
        let files = fixture::file_count(&store.join(format!("{name}.git")), "main");
        let tree = match name {
            "linux" => format!("Linux ({files} files)"),
            _ => format!("{files} files"),
        };
        for (label, flags) in [
            ("256 MiB (default)", vec![]),
            ("1 GiB", vec!["--cache-bytes", "1073741824"]),
        ] {
            let base = {
                let server = GitNfsd::start_with(&store, "127.0.0.1:0", &flags);
                integration::anon_rss_kib(server.pid())
            };
            for count in COUNTS {
                let server = GitNfsd::start_with(&store, "127.0.0.1:0", &flags);
                let (rss, anon, secs) = live_exports(&server, name, count);
                table.markdown_row(&format!(
                    "| {tree} | {label} | {count} | {} MiB | {} MiB | {:.1} MiB | {secs:.1} s |",
                    rss / 1024,
                    anon / 1024,
                    anon.saturating_sub(base) as f64 / 1024.0 / count as f64
                ));
                plot.point(
                    &format!("{tree}, cache {label}"),
                    count as f64,
                    anon as f64 / 1024.0,
                );
            }
        }
    }
    table.print();
    plot.save();
}
