//! Time to a ready worktree on generated repositories of 1,000, 10,000 and
//! 100,000 files: `cargo build --release --bins && cargo bench -p integration --bench worktree`.
//!
//! Native (host): git-nfsd's part (MOUNT = revision + tree walk, then
//! building `.git/index`), against `git clone --no-hardlinks` and
//! `git worktree add` of the same commit on local disk.
//! Guest (kernel NFS client, software emulation, so every contender is slowed
//! alike): `mount-worktree` + a clean `git status`, against `git clone
//! --no-hardlinks` from the mounted export's `.git` and `git worktree add`,
//! with the bytes git-nfsd sent. Set BENCH_SIZES=1000,10000 to run fewer
//! sizes, BENCH_PARTS=native or BENCH_PARTS=guest to run one half.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::guest::GuestRun;
use integration::server::GitNfsd;

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The store of generated repositories `r<N>.git`, built once and cached.
fn sized_store(sizes: &[usize]) -> PathBuf {
    let dir = integration::target_dir()
        .join("lazy-worktree-fixtures")
        .join("sized");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    for n in sizes {
        let repo = dir.join(format!("r{n}.git"));
        if !repo.join("refs/heads/feature").exists() {
            let _ = std::fs::remove_dir_all(&repo);
            integration::fixture::make_sized_repo(*n, &repo);
        }
    }
    dir
}

fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn native(n: usize, store: &Path) -> Vec<String> {
    let mut mount = Vec::new();
    let mut index = Vec::new();
    let mut index_warm = Vec::new();
    let mut rss = 0;
    for _ in 0..RUNS {
        let server = GitNfsd::start(store);
        let mut c = RpcClient::connect(server.addr);
        let t = Instant::now();
        let root = c.mount(&format!("/r{n}@main")).expect("mount");
        mount.push(t.elapsed());
        // LOOKUP answers the index's attributes, so it builds the index.
        let t = Instant::now();
        let idx = c.walk(&root, ".git/index").expect("index");
        let attrs = c.getattr(&idx).expect("getattr index");
        index.push(t.elapsed());
        let t = Instant::now();
        c.getattr(&idx).expect("getattr index");
        index_warm.push(t.elapsed());
        assert!(attrs.size > 0);
        rss = server.rss_kib();
    }
    let repo = store.join(format!("r{n}.git"));
    let mut clone = Vec::new();
    let mut worktree = Vec::new();
    for i in 0..RUNS {
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("c");
        clone.push(time(
            Command::new("git")
                .args(["clone", "-q", "--no-hardlinks"])
                .arg(&repo)
                .arg(&dest),
        ));
        worktree.push(time(
            Command::new("git")
                .arg("-C")
                .arg(&dest)
                .args(["worktree", "add", "-q", "--detach"])
                .arg(tmp.path().join(format!("wt{i}")))
                .arg("main"),
        ));
    }
    let (m, i) = (median(mount), median(index));
    let c = median(clone);
    vec![format!(
        "| {n} | {} | {} | {} | {} | {} | {} | {:.0}x | {} MiB |",
        ms(m),
        ms(i),
        ms(median(index_warm)),
        ms(m + i),
        ms(c),
        ms(median(worktree)),
        c.as_secs_f64() / (m + i).as_secs_f64(),
        rss / 1024
    )]
}

fn guest(store: &Path, sizes: &[usize]) -> Vec<String> {
    // One guest run for every size.
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    let list = sizes
        .iter()
        .map(|n| format!("r{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let console = GuestRun::new()
        .timeout(3000)
        // /tmp holds a full clone of the largest repository.
        .memory(6144)
        .env("nfsport", server.port())
        .env("metricsport", server.metrics.port())
        .file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-scripts"),
            "opt/overlay-scripts",
        )
        .run(&format!("REPOS='{list}'\n{GUEST_SCRIPT}"));
    console
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix("ROW ")
                .map(str::to_owned)
        })
        .collect()
}

/// Guest half: per repository, time mount-worktree + clean status, clone
/// from the export and worktree add, in centiseconds from /proc/uptime.
const GUEST_SCRIPT: &str = r#"
export PATH=/opt/overlay-scripts:$PATH
now() { cut -d' ' -f1 /proc/uptime | tr -d .; }
metrics() { wget -q -O - "http://10.0.2.2:$GUEST_METRICSPORT/metrics"; }
bytes() { metrics | awk -v k="$1" '$1 == "gitnfsd_read_bytes_total{name=\"" k "\"}" { print $2 + 0 }'; }
calls() { metrics | awk '/^gitnfsd_rpc_calls_total/ && /procedure="(GETATTR|LOOKUP|ACCESS|READDIR|READDIRPLUS)"/ { n += $2 } END { print n + 0 }'; }
for r in $REPOS; do
    g0=$(bytes git); w0=$(bytes worktree)
    t0=$(now)
    mount-worktree 10.0.2.2:$GUEST_NFSPORT $r@main /w/$r > /dev/null || exit 1
    c0=$(calls)
    [ -z "$(git -C /w/$r status --porcelain)" ] || exit 2
    t1=$(now)
    first=$(( $(calls) - c0 ))
    g1=$(bytes git); w1=$(bytes worktree)
    # Three edits, then status: what fsmonitor saves.
    for f in $(git -C /w/$r ls-files | sed -n '1p;500p;900p'); do echo edit >> "/w/$r/$f"; done
    c0=$(calls)
    [ "$(git -C /w/$r status --porcelain | wc -l)" -eq 3 ] || exit 5
    edited=$(( $(calls) - c0 ))
    # The same commit by id (another export, so a cold client cache), no fsmonitor.
    id=$(git -C /w/$r rev-parse HEAD)
    mount-worktree 10.0.2.2:$GUEST_NFSPORT $r@$id /w/$r-full --no-fsmonitor > /dev/null || exit 6
    c0=$(calls)
    [ -z "$(git -C /w/$r-full status --porcelain)" ] || exit 7
    full=$(( $(calls) - c0 ))
    t2=$(now)
    git clone -q --no-hardlinks /w/$r/.git /tmp/c-$r || exit 3
    t3=$(now)
    git -C /tmp/c-$r worktree add -q --detach /tmp/wt-$r main || exit 4
    t4=$(now)
    du -sk /tmp/c-$r | cut -f1 > /tmp/size
    echo "ROW | ${r#r} | $(( (t1 - t0) * 10 )) ms | $(( (t3 - t2) * 10 )) ms | $(( (t4 - t3) * 10 )) ms | $(( (g1 - g0) / 1024 )) KiB of .git + $(( (w1 - w0) / 1024 )) KiB of files | $(cat /tmp/size) KiB | $first / $full | $edited |"
    rm -rf /tmp/c-$r /tmp/wt-$r
done
"#;

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "native,guest".into());
    let store = sized_store(&sizes);
    if parts.contains("native") {
        print_native(&store, &sizes);
    }
    if parts.contains("guest") {
        print_guest(&store, &sizes);
    }
}

fn print_native(store: &Path, sizes: &[usize]) {
    println!("Native, medians of {RUNS} (git-nfsd release build, fresh server each run):\n");
    println!(
        "| files | MOUNT (tree walk) | index build | index, cached | git-nfsd total | git clone --no-hardlinks | git worktree add | clone / git-nfsd | server RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        for row in native(n, store) {
            println!("{row}");
        }
    }
}

fn print_guest(store: &Path, sizes: &[usize]) {
    println!("\nIn the QEMU guest (kernel NFS client, software emulation), one run each:\n");
    println!(
        "| files | mount-worktree + clean git status | git clone --no-hardlinks (from the export) | git worktree add | bytes git-nfsd sent for mount + status | clone on disk | client calls of the first status: fsmonitor / none | calls of status after 3 edits |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in guest(store, sizes) {
        println!("{row}");
    }
}
