//! git-nfsd against nfs-ganesha, the mature userspace NFS server, on the
//! same data and through the same client (libnfs's `nfs-cat` / `nfs-ls`):
//! `cargo build --release --bins && cargo bench -p integration --bench peers`.
//!
//! - sequential read of a 256 MiB file (one reader, and 4 at once);
//! - a full recursive listing with attributes (READDIRPLUS) of 100,000
//!   files and of the Linux kernel tree;
//! - LOOKUP + GETATTR from one client: 2,000 files found from the root one
//!   component at a time;
//! - random 4 KiB READs across 2,000 of those files from 1, 4, 16 and 64
//!   concurrent clients (this project's own blocking RPC client, one
//!   connection each): throughput and p50/p99 latency.
//!
//! git-nfsd serves the files from packed objects; ganesha (VFS FSAL)
//! exports a checkout of the same commits from local disk. Needs root and
//! Debian's `nfs-ganesha nfs-ganesha-vfs rpcbind` (ganesha registers with
//! an rpcbind, started here in a private network namespace; see
//! `../shared/notes` for why). Runs alternate between the two servers;
//! figures are medians.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::peers::{
    BIG_MIB, FILES, Ganesha, Rng, prepare, prepare_kernel, random_read_files,
};
use integration::report::{Plot, Table, median, percentile};
use integration::server::GitNfsd;
use nfs3_types::nfs3::nfs_fh3;

const ROUNDS: usize = 5;
const RANDOM_FILES: usize = 2_000;
const RANDOM_READS: usize = 20_000;
const RANDOM_ROUNDS: usize = 3;

/// Seconds for `copies` concurrent `nfs-cat URL > /dev/null`.
fn cat(url: &str, copies: usize) -> Duration {
    let start = Instant::now();
    let children: Vec<Child> = (0..copies)
        .map(|_| {
            Command::new("nfs-cat")
                .arg(url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nfs-cat (libnfs-utils)")
        })
        .collect();
    for mut child in children {
        assert!(
            child.wait().expect("nfs-cat").success(),
            "nfs-cat {url} failed"
        );
    }
    start.elapsed()
}

/// Seconds and entries for `nfs-ls -R URL`.
fn list(url: &str) -> (Duration, usize) {
    let start = Instant::now();
    let out = Command::new("nfs-ls")
        .arg("-R")
        .arg(url)
        .output()
        .expect("nfs-ls");
    let elapsed = start.elapsed();
    assert!(out.status.success(), "nfs-ls -R {url} failed");
    (
        elapsed,
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
    )
}

/// One server's side of the random reads: where to connect, and the
/// handles of the files (looked up, and each read once to warm it).
/// Where one server serves the 100,000 files to this project's client.
#[derive(Clone, Copy)]
struct Endpoint {
    mount: SocketAddr,
    nfs: SocketAddr,
    export: &'static str,
}

impl Endpoint {
    /// The export's root handle, and a client connected for NFS calls.
    fn connect(&self) -> (nfs_fh3, RpcClient) {
        let root = RpcClient::connect(self.mount)
            .mount(self.export)
            .expect("MOUNT");
        (root, RpcClient::connect(self.nfs))
    }
}

struct RandomTarget {
    nfs: SocketAddr,
    files: Vec<(nfs_fh3, u64)>,
}

impl RandomTarget {
    fn new(server: Endpoint, files: &[(String, u64)]) -> Self {
        let (root, mut c) = server.connect();
        let files = files
            .iter()
            .map(|(path, size)| {
                let fh = c.walk(&root, path).expect("LOOKUP");
                c.read(&fh, 0, 4096).expect("warming READ");
                (fh, *size)
            })
            .collect();
        Self {
            nfs: server.nfs,
            files,
        }
    }

    /// `total` random 4 KiB READs from `clients` connections at once:
    /// reads per second and every READ's latency.
    fn run(&self, clients: usize, total: usize) -> (f64, Vec<Duration>) {
        let per_client = total / clients;
        let started = Instant::now();
        let latencies: Vec<Duration> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..clients)
                .map(|n| {
                    scope.spawn(move || {
                        let mut c = RpcClient::connect(self.nfs);
                        let mut rng = Rng(0x1234_5678 + n as u64);
                        let mut latencies = Vec::with_capacity(per_client);
                        for _ in 0..per_client {
                            let (fh, size) =
                                &self.files[(rng.next_u64() % self.files.len() as u64) as usize];
                            let blocks = size.div_ceil(4096).max(1);
                            let offset = (rng.next_u64() % blocks) * 4096;
                            let t = Instant::now();
                            c.read(fh, offset, 4096).expect("READ");
                            latencies.push(t.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("reader"))
                .collect()
        });
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        (rate, latencies)
    }
}

/// Time to find every file from the export's root (a LOOKUP per path
/// component) and GETATTR it, over one connection.
fn lookups(server: Endpoint, files: &[(String, u64)]) -> Duration {
    let (root, mut c) = server.connect();
    let start = Instant::now();
    for (path, _) in files {
        let fh = c.walk(&root, path).expect("LOOKUP");
        c.getattr(&fh).expect("GETATTR");
    }
    start.elapsed()
}

fn main() {
    let (store, data) = prepare();
    prepare_kernel(&store, &data);
    // Default flags: the 256 MiB file is larger than the blob cache, so it
    // is decoded once into the spill folder and read from there.
    let nfsd = GitNfsd::start(&store);
    let ganesha = Ganesha::start(&data);
    let ours_big = nfsd.url("/big@main/big.bin");
    let theirs_big = ganesha.url("/data/big/big.bin");
    let ours_tree = nfsd.url("/files@main");
    let theirs_tree = ganesha.url("/data/files");

    let ours_linux = nfsd.url("/linux@main");
    let theirs_linux = ganesha.url("/data/linux");

    // Warm both (first read decodes the pack; first listings, below, walk
    // the trees).
    cat(&ours_big, 1);
    cat(&theirs_big, 1);

    let mut rows = Vec::new();
    let (our_pid, their_pid) = (nfsd.pid(), ganesha.ganesha.id());
    let (mut our_cpu, mut their_cpu, mut gigabytes) = (0.0, 0.0, 0.0);
    for copies in [1, 4] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let cpu = integration::cpu_seconds(our_pid);
            ours.push(cat(&ours_big, copies));
            our_cpu += integration::cpu_seconds(our_pid) - cpu;
            let cpu = integration::cpu_seconds(their_pid);
            theirs.push(cat(&theirs_big, copies));
            their_cpu += integration::cpu_seconds(their_pid) - cpu;
            gigabytes += (copies * (BIG_MIB << 20)) as f64 / 1e9;
        }
        let mb = (copies * (BIG_MIB << 20)) as f64 / 1e6;
        let (a, b) = (median(ours), median(theirs));
        rows.push(format!(
            "| nfs-cat of a {BIG_MIB} MiB file, {copies} at once (aggregate) | {:.0} MB/s | {:.0} MB/s | {:.2} |",
            mb / a.as_secs_f64(),
            mb / b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        ));
    }
    for (what, ours_url, theirs_url) in [
        (format!("{FILES} files"), &ours_tree, &theirs_tree),
        ("the Linux tree".to_owned(), &ours_linux, &theirs_linux),
    ] {
        let (_, our_entries) = list(ours_url);
        let (_, their_entries) = list(theirs_url);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.push(list(ours_url).0);
            theirs.push(list(theirs_url).0);
        }
        let (a, b) = (median(ours), median(theirs));
        rows.push(format!(
            "| nfs-ls -R of {what} ({our_entries} / {their_entries} entries listed) | {:.2} s | {:.2} s | {:.2} |",
            a.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        ));
    }

    // Random 4 KiB reads, same files, same sequence, on both servers.
    let files = random_read_files(&store, RANDOM_FILES);
    let ours = Endpoint {
        mount: nfsd.addr,
        nfs: nfsd.addr,
        export: "/files@main",
    };
    let theirs = Endpoint {
        mount: ([127, 0, 0, 1], ganesha.mount_port).into(),
        nfs: ([127, 0, 0, 1], ganesha.port).into(),
        export: "/data/files",
    };
    let ours_random = RandomTarget::new(ours, &files);
    let theirs_random = RandomTarget::new(theirs, &files);
    let mut rates = Plot::new(
        "random-reads-libnfs",
        "Random 4 KiB READs, this project's RPC client on 127.0.0.1",
        "clients",
        "reads per second",
    )
    .log_x();
    // LOOKUP + GETATTR: each of the same files found from the root, one
    // component at a time, then its attributes; one client, both warm.
    let (mut our_times, mut their_times) = (Vec::new(), Vec::new());
    let calls: usize = files
        .iter()
        .map(|(path, _)| path.split('/').count() + 1)
        .sum();
    for _ in 0..ROUNDS {
        our_times.push(lookups(ours, &files));
        their_times.push(lookups(theirs, &files));
    }
    let (a, b) = (median(our_times), median(their_times));
    rows.push(format!(
        "| LOOKUP + GETATTR, one client: calls/s ({RANDOM_FILES} paths, {calls} calls) | {:.0} | {:.0} | {:.2} |",
        calls as f64 / a.as_secs_f64(),
        calls as f64 / b.as_secs_f64(),
        b.as_secs_f64() / a.as_secs_f64()
    ));
    for clients in [1, 4, 16, 64] {
        let mut rounds = Vec::new();
        for _ in 0..RANDOM_ROUNDS {
            rounds.push((
                ours_random.run(clients, RANDOM_READS),
                theirs_random.run(clients, RANDOM_READS),
            ));
        }
        // The round with the median ratio, so its latencies go together.
        rounds.sort_by(|a, b| (a.0.0 / a.1.0).total_cmp(&(b.0.0 / b.1.0)));
        let ((our_rate, mut ours), (their_rate, mut theirs)) = rounds.swap_remove(rounds.len() / 2);
        ours.sort();
        theirs.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        rows.push(format!(
            "| random 4 KiB READs, {clients} client(s): reads/s; p50 / p99 ms | {:.0}; {:.2} / {:.2} | {:.0}; {:.2} / {:.2} | {:.2} |",
            our_rate,
            ms(percentile(&ours, 0.5)),
            ms(percentile(&ours, 0.99)),
            their_rate,
            ms(percentile(&theirs, 0.5)),
            ms(percentile(&theirs, 0.99)),
            our_rate / their_rate
        ));
        rates.point("git-nfsd", clients as f64, our_rate);
        rates.point("nfs-ganesha", clients as f64, their_rate);
    }
    rows.push(format!(
        "| server CPU seconds per GB sent by the `nfs-cat` runs | {:.2} s | {:.2} s | {:.2} |",
        our_cpu / gigabytes,
        their_cpu / gigabytes,
        their_cpu / our_cpu
    ));
    let hits = |cache: &str| {
        let count = |result: &str| {
            nfsd.metric(&format!(
                "gitnfsd_cache_lookups_total{{cache=\"{cache}\",result=\"{result}\"}}"
            ))
        };
        let (hit, miss) = (count("hit"), count("miss"));
        format!("{cache} {:.1}%", 100.0 * hit / (hit + miss).max(1.0))
    };
    rows.push(format!(
        "| git-nfsd cache hit ratio over the whole run | {}, {}, {} | | |",
        hits("blob"),
        hits("worktree"),
        hits("index")
    ));
    rows.push(format!(
        "| server RSS after the runs | {} MiB | {} MiB | |",
        nfsd.rss_kib() / 1024,
        integration::rss_kib(ganesha.ganesha.id()) / 1024
    ));

    let mut table = Table::new(
        &format!("git-nfsd vs nfs-ganesha, libnfs client, medians of {ROUNDS} alternating runs"),
        &[
            "measure",
            "git-nfsd",
            "nfs-ganesha",
            "ratio (≥ 1: git-nfsd as fast or faster)",
        ],
    );
    for row in rows {
        table.markdown_row(&row);
    }
    table.print();
    rates.save();
}
