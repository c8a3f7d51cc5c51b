//! Time to a ready worktree on generated repositories of 1,000, 10,000 and
//! 100,000 files and on the Linux kernel tree:
//! `cargo build --release --bins && cargo bench -p integration --bench worktree`.
//!
//! Native (host): git-nfsd's part (MOUNT = revision + tree walk, then
//! building `.git/index`), against `git clone --no-hardlinks`, a blobless
//! clone (`--filter=blob:none`, whose checkout fetches the blobs) and
//! `git worktree add` of the same commit on local disk.
//! Guest (kernel NFS client, software emulation, so every contender is slowed
//! alike): `mount-worktree` + a clean `git status`, against the same three
//! from the mounted export's `.git`; then a typical agent session (read 1%
//! of the files, edit 10, commit) with the bytes git-nfsd sent and the
//! upper folder's size. BENCH_REPOS=1000,10000,100000,linux picks the
//! repositories, BENCH_PARTS=native or BENCH_PARTS=guest one half.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::guest::GuestRun;
use integration::report::{Plot, Table, median};
use integration::server::GitNfsd;

/// One repository of the bench: its export name (`r1000`, `linux`) and the
/// number of files at `main`.
struct Repo {
    name: String,
    files: usize,
}

impl Repo {
    /// Runs per native figure: fewer for the kernel, whose clones take
    /// a minute each.
    fn runs(&self) -> usize {
        if self.files > 50_000 { 3 } else { 5 }
    }

    fn label(&self) -> String {
        match self.name.as_str() {
            "linux" => format!("Linux ({} files)", self.files),
            _ => self.files.to_string(),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The bench's repositories (built once and cached) and their store.
fn bench_store(names: &[String]) -> (PathBuf, Vec<Repo>) {
    let repos: Vec<(PathBuf, Repo)> = names
        .iter()
        .map(|name| {
            let repo = integration::fixture::bench_repo(name);
            let files = integration::fixture::file_count(&repo, "main");
            (
                repo,
                Repo {
                    name: name.clone(),
                    files,
                },
            )
        })
        .collect();
    let store = repos
        .first()
        .and_then(|(path, _)| path.parent())
        .expect("BENCH_REPOS names a repository")
        .to_owned();
    (store, repos.into_iter().map(|(_, repo)| repo).collect())
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

/// upload-pack with partial clone allowed, for the blobless peer.
const FILTERING_UPLOAD_PACK: &str = "git -c uploadpack.allowFilter=true upload-pack";

/// Native medians: MOUNT, index build, cached index, git-nfsd's total, the
/// three peers (clone, blobless clone, worktree add), and server RSS (KiB).
struct Native {
    mount: Duration,
    index: Duration,
    index_warm: Duration,
    clone: Duration,
    blobless: Duration,
    worktree: Duration,
    rss_kib: u64,
}

impl Native {
    fn ours(&self) -> Duration {
        self.mount + self.index
    }
}

fn native(repo: &Repo, store: &Path) -> Native {
    let runs = repo.runs();
    let mut mount = Vec::new();
    let mut index = Vec::new();
    let mut index_warm = Vec::new();
    let mut rss_kib = 0;
    for _ in 0..runs {
        let server = GitNfsd::start(store);
        let mut c = RpcClient::connect(server.addr);
        let t = Instant::now();
        let root = c.mount(&format!("/{}@main", repo.name)).expect("mount");
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
        rss_kib = server.rss_kib();
    }
    let bare = store.join(format!("{}.git", repo.name));
    let mut clone = Vec::new();
    let mut blobless = Vec::new();
    let mut worktree = Vec::new();
    for i in 0..runs {
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("c");
        clone.push(time(
            Command::new("git")
                .args(["clone", "-q", "--no-hardlinks"])
                .arg(&bare)
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
        blobless.push(time(
            Command::new("git")
                .args(["clone", "-q", "--filter=blob:none", "--upload-pack"])
                .arg(FILTERING_UPLOAD_PACK)
                .arg(format!("file://{}", bare.display()))
                .arg(tmp.path().join("blobless")),
        ));
    }
    Native {
        mount: median(mount),
        index: median(index),
        index_warm: median(index_warm),
        clone: median(clone),
        blobless: median(blobless),
        worktree: median(worktree),
        rss_kib,
    }
}

/// One guest row: the times (ms) and sizes the guest script printed.
struct GuestRow {
    cells: Vec<String>,
    ready_ms: f64,
    clone_ms: f64,
    blobless_ms: f64,
    worktree_ms: f64,
}

fn guest(store: &Path, repos: &[Repo]) -> Vec<GuestRow> {
    // One guest run for every repository.
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    let list = repos
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let console = GuestRun::new()
        .timeout(5400)
        // /tmp (half the memory) holds a full clone of the kernel and its
        // second worktree.
        .memory(9216)
        .env("nfsport", server.port())
        .env("metricsport", server.metrics.port())
        .file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-scripts"),
            "opt/overlay-scripts",
        )
        .run(&format!("REPOS='{list}'\n{GUEST_SCRIPT}"));
    let rows: Vec<Vec<String>> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("ROW\t"))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), repos.len(), "guest rows:\n{console}");
    repos
        .iter()
        .zip(rows)
        .map(|(repo, f)| {
            // The guest's fields, in the order GUEST_SCRIPT prints them.
            let num = |i: usize| f[i].parse::<f64>().expect("a guest figure");
            let (ready, clone, blobless, worktree) =
                (num(0) * 10.0, num(1) * 10.0, num(2) * 10.0, num(3) * 10.0);
            let of_checkout =
                |kib: usize| format!("{} KiB ({:.2}%)", f[kib], 100.0 * num(kib) / num(8));
            GuestRow {
                cells: vec![
                    repo.label(),
                    format!("{ready:.0} ms"),
                    format!("{clone:.0} ms ({:.1}x)", clone / ready),
                    format!("{blobless:.0} ms ({:.1}x)", blobless / ready),
                    format!("{worktree:.0} ms ({:.1}x)", worktree / ready),
                    format!("{} KiB of .git + {} KiB of files", f[4], f[5]),
                    of_checkout(6),
                    of_checkout(7),
                    format!("{} KiB", f[8]),
                    format!("{} KiB", f[9]),
                    format!("{} KiB", f[10]),
                    format!("{} / {}", f[11], f[12]),
                    f[13].clone(),
                ],
                ready_ms: ready,
                clone_ms: clone,
                blobless_ms: blobless,
                worktree_ms: worktree,
            }
        })
        .collect()
}

/// Guest half: per repository, time mount-worktree + clean status, then a
/// typical agent session, then the peers from the export's `.git`; times
/// in centiseconds from /proc/uptime, caches dropped before each.
const GUEST_SCRIPT: &str = r#"
export PATH=/opt/overlay-scripts:$PATH
now() { cut -d' ' -f1 /proc/uptime | tr -d .; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
metrics() { wget -q -O - "http://10.0.2.2:$GUEST_METRICSPORT/metrics"; }
bytes() { metrics | awk -v k="$1" '$1 == "gitnfsd_read_bytes_total{name=\"" k "\"}" { print $2 + 0 }'; }
calls() { metrics | awk '/^gitnfsd_rpc_calls_total/ && /procedure="(GETATTR|LOOKUP|ACCESS|READDIR|READDIRPLUS)"/ { n += $2 } END { print n + 0 }'; }
kib() { du -sk "$1" | cut -f1; }
for r in $REPOS; do
    g0=$(bytes git); w0=$(bytes worktree)
    cold; t0=$(now)
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
    # The rest of a typical agent session: read 1% of the files, edit seven
    # more (ten in all), commit.
    n=$(git -C /w/$r ls-files | wc -l)
    (cd /w/$r && git ls-files | awk 'NR % 100 == 50' | xargs cat > /dev/null) || exit 8
    for f in $(git -C /w/$r ls-files | awk -v s=$(( n / 7 )) 'NR % s == 7' | head -7); do echo edit >> "/w/$r/$f"; done
    git -C /w/$r commit -q -a -m session || exit 9
    g2=$(bytes git); w2=$(bytes worktree)
    upper=$(kib /w/.$r.upper/upper)
    # The same commit by id (another export, so a cold client cache), no
    # fsmonitor; the peers clone from its untouched .git.
    id=$(git -C /w/$r rev-parse HEAD~1)
    mount-worktree 10.0.2.2:$GUEST_NFSPORT $r@$id /w/$r-full --no-fsmonitor > /dev/null || exit 6
    c0=$(calls)
    [ -z "$(git -C /w/$r-full status --porcelain)" ] || exit 7
    full=$(( $(calls) - c0 ))
    cold; t2=$(now)
    git clone -q --no-hardlinks /w/$r-full/.git /tmp/c-$r || exit 3
    t3=$(now)
    clone=$(kib /tmp/c-$r)
    cold; t4=$(now)
    git -C /tmp/c-$r worktree add -q --detach /tmp/wt-$r HEAD || exit 4
    t5=$(now)
    checkout=$(kib /tmp/wt-$r)
    rm -rf /tmp/c-$r /tmp/wt-$r
    cold; t6=$(now)
    git clone -q --filter=blob:none --upload-pack='git -c uploadpack.allowFilter=true upload-pack' file:///w/$r-full/.git /tmp/b-$r > /tmp/log 2>&1 || { cat /tmp/log; exit 10; }
    t7=$(now)
    blobless=$(kib /tmp/b-$r)
    rm -rf /tmp/b-$r
    printf 'ROW'
    printf '\t%s' $(( t1 - t0 )) $(( t3 - t2 )) $(( t7 - t6 )) $(( t5 - t4 )) \
        $(( (g1 - g0) / 1024 )) $(( (w1 - w0) / 1024 )) $(( (g2 - g0 + w2 - w0) / 1024 )) $upper $checkout $clone $blobless \
        $first $full $edited
    printf '\n'
done
"#;

fn main() {
    let names: Vec<String> = std::env::var("BENCH_REPOS")
        .unwrap_or_else(|_| "1000,10000,100000,linux".into())
        .split(',')
        .map(|s| match s.parse::<usize>() {
            Ok(n) => format!("r{n}"),
            Err(_) => s.to_owned(),
        })
        .collect();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "native,guest".into());
    let (store, repos) = bench_store(&names);
    if parts.contains("native") {
        print_native(&store, &repos);
    }
    if parts.contains("guest") {
        print_guest(&store, &repos);
    }
}

fn print_native(store: &Path, repos: &[Repo]) {
    let mut table = Table::new(
        "Native, medians of 5 runs (3 for the kernel); git-nfsd release build, a fresh server each run; (Nx): the peer's time over git-nfsd's",
        &[
            "files",
            "MOUNT (tree walk)",
            "index build",
            "index, cached",
            "git-nfsd total",
            "git clone --no-hardlinks",
            "blobless clone + checkout",
            "git worktree add",
            "server RSS",
        ],
    );
    let mut plot = Plot::new(
        "ready-native",
        "Time to a ready worktree, native (host); the point at 78,635 files is the Linux tree",
        "files",
        "seconds",
    )
    .log_x()
    .log_y();
    for repo in repos {
        let n = native(repo, store);
        let ours = n.ours();
        let versus = |peer: Duration| {
            format!(
                "{} ({:.0}x)",
                ms(peer),
                peer.as_secs_f64() / ours.as_secs_f64()
            )
        };
        table.row(vec![
            repo.label(),
            ms(n.mount),
            ms(n.index),
            ms(n.index_warm),
            ms(ours),
            versus(n.clone),
            versus(n.blobless),
            versus(n.worktree),
            format!("{} MiB", n.rss_kib / 1024),
        ]);
        let x = repo.files as f64;
        plot.point("git-nfsd (MOUNT + index)", x, ours.as_secs_f64());
        plot.point("git clone --no-hardlinks", x, n.clone.as_secs_f64());
        plot.point("blobless clone + checkout", x, n.blobless.as_secs_f64());
        plot.point("git worktree add", x, n.worktree.as_secs_f64());
    }
    table.print();
    plot.save();
}

fn print_guest(store: &Path, repos: &[Repo]) {
    let mut table = Table::new(
        "In the QEMU guest (kernel NFS client, software emulation), one run each; (Nx): the peer's time over git-nfsd's",
        &[
            "files",
            "mount-worktree + clean git status",
            "git clone --no-hardlinks (from the export)",
            "blobless clone + checkout (from the export)",
            "git worktree add",
            "READ bytes for mount + status",
            "READ bytes for a typical session (% of checkout)",
            "upper after the session (% of checkout)",
            "checkout on disk",
            "clone on disk",
            "blobless clone on disk",
            "calls of the first status: fsmonitor / none",
            "calls of status after 3 edits",
        ],
    );
    let mut plot = Plot::new(
        "ready-guest",
        "Time to a ready worktree in the QEMU guest; the point at 78,635 files is the Linux tree",
        "files",
        "seconds",
    )
    .log_x()
    .log_y();
    for (repo, row) in repos.iter().zip(guest(store, repos)) {
        let x = repo.files as f64;
        plot.point(
            "git-nfsd (mount-worktree + git status)",
            x,
            row.ready_ms / 1e3,
        );
        plot.point("git clone --no-hardlinks", x, row.clone_ms / 1e3);
        plot.point("blobless clone + checkout", x, row.blobless_ms / 1e3);
        plot.point("git worktree add", x, row.worktree_ms / 1e3);
        table.row(row.cells);
    }
    table.print();
    plot.save();
}
