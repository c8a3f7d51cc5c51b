//! Server figures on the protocol fixture, printed as a table:
//! `cargo build --release --bins && cargo bench -p integration --bench server`.
//!
//! Each figure is the median of several runs against a fresh or warm
//! git-nfsd (release build) on 127.0.0.1, driven by the test RPC client and
//! by libnfs's `nfs-ls`. The peer in the same run is the local filesystem:
//! the same tree checked out on disk, listed with `ls -lR`-like stat calls.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::fixture;
use integration::report::{Table, median};
use integration::server::GitNfsd;

const RUNS: usize = 7;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn main() {
    let store = fixture::store();
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // MOUNT on a fresh server: resolves the revision and numbers the tree
    // (20,000+ nodes); then the same MOUNT warm.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut rss = 0;
    for _ in 0..RUNS {
        let server = GitNfsd::start(store);
        let mut c = RpcClient::connect(server.addr);
        cold.push(time(|| c.mount("/app").expect("mount")).0);
        warm.push(time(|| c.mount("/app").expect("mount")).0);
        rss = server.rss_kib();
    }
    let nodes = fixture::ls_tree(&store.join("app.git"), "HEAD").len() + 1;
    rows.push((
        format!("MOUNT /app, fresh server (numbers all {nodes} nodes)"),
        ms(median(cold)),
        String::new(),
    ));
    rows.push(("MOUNT /app, warm".into(), ms(median(warm)), String::new()));
    rows.push((
        "server RSS after a MOUNT".into(),
        format!("{} MiB", rss / 1024),
        String::new(),
    ));

    let server = GitNfsd::start(store);
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let many = c.walk(&root, "many").expect("many");

    let plus: Vec<Duration> = (0..RUNS)
        .map(|_| time(|| c.readdirplus_all(&many, 65_536, 1 << 20).expect("list")).0)
        .collect();
    let plain: Vec<Duration> = (0..RUNS)
        .map(|_| time(|| c.readdir_all(&many, 65_536).expect("list")).0)
        .collect();

    // Peer: the same folder checked out on local disk, read and stat'ed.
    let checkout = tempfile::tempdir().expect("tempdir");
    let status = Command::new("git")
        .args(["clone", "-q"])
        .arg(store.join("app.git"))
        .arg(checkout.path().join("app"))
        .status()
        .expect("git clone");
    assert!(status.success());
    let local = checkout.path().join("app/many");
    let stat_all = |dir: &Path| {
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            std::fs::symlink_metadata(e.path()).expect("stat");
            n += 1;
        }
        n
    };
    let local_times: Vec<Duration> = (0..RUNS).map(|_| time(|| stat_all(&local)).0).collect();
    let local_median = median(local_times);
    let plus_median = median(plus);
    rows.push((
        "READDIRPLUS of 20,000 entries (64 KiB dircount, 1 MiB maxcount)".into(),
        ms(plus_median),
        format!(
            "{:.1}x local readdir+lstat ({})",
            plus_median.as_secs_f64() / local_median.as_secs_f64(),
            ms(local_median)
        ),
    ));
    rows.push((
        "READDIR of 20,000 entries (64 KiB pages)".into(),
        ms(median(plain)),
        String::new(),
    ));

    let nfs_ls: Vec<Duration> = (0..RUNS)
        .map(|_| {
            time(|| {
                let out = Command::new("nfs-ls")
                    .arg(server.url("/app/many"))
                    .output()
                    .expect("nfs-ls");
                assert!(out.status.success());
            })
            .0
        })
        .collect();
    rows.push((
        "nfs-ls of the 20,000-entry folder (process, MOUNT, list)".into(),
        ms(median(nfs_ls)),
        String::new(),
    ));

    // READ of the 20 MB file: first read decodes the blob, later ones hit the cache.
    let big = c.walk(&root, "big/random.bin").expect("big");
    let fresh = GitNfsd::start(store);
    let mut fc = RpcClient::connect(fresh.addr);
    let froot = fc.mount("/app").expect("mount");
    let fbig = fc.walk(&froot, "big/random.bin").expect("big");
    let (cold_read, bytes) = time(|| fc.read_all(&fbig, 1 << 20).expect("read"));
    let warm_reads: Vec<Duration> = (0..RUNS)
        .map(|_| time(|| c.read_all(&big, 1 << 20).expect("read")).0)
        .collect();
    let mb = bytes.len() as f64 / 1e6;
    rows.push((
        "READ 20 MB file, cold (decode from pack)".into(),
        ms(cold_read),
        format!("{:.0} MB/s", mb / cold_read.as_secs_f64()),
    ));
    let wm = median(warm_reads);
    rows.push((
        "READ 20 MB file, cached (1 MiB READs)".into(),
        ms(wm),
        format!("{:.0} MB/s", mb / wm.as_secs_f64()),
    ));

    let getattrs = 20_000;
    let readme = c.walk(&root, "README.md").expect("readme");
    let (took, ()) = time(|| {
        for _ in 0..getattrs {
            c.getattr(&readme).expect("getattr");
        }
    });
    rows.push((
        "GETATTR, one client, sequential".into(),
        format!(
            "{:.1} µs/call",
            took.as_secs_f64() * 1e6 / f64::from(getattrs)
        ),
        format!("{:.0} calls/s", f64::from(getattrs) / took.as_secs_f64()),
    ));
    rows.push((
        "server RSS after the above".into(),
        format!("{} MiB", server.rss_kib() / 1024),
        String::new(),
    ));

    let median_of = format!("median of {RUNS}");
    let mut table = Table::new(
        "git-nfsd on 127.0.0.1, the tests' RPC client, fixture store",
        &["measurement", &median_of, "note"],
    );
    for (what, value, note) in rows {
        table.row(vec![what, value, note]);
    }
    table.print();
}
