//! git-nfsd against nfs-ganesha, the mature userspace NFS server, on the
//! same data and through the same client (libnfs's `nfs-cat` / `nfs-ls`):
//! `cargo build --release --bins && cargo bench -p integration --bench peers`.
//!
//! - sequential read of a 256 MiB file (one reader, and 4 at once);
//! - a full recursive listing with attributes (READDIRPLUS) of 100,000
//!   files;
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

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::server::GitNfsd;
use nfs3_types::nfs3::nfs_fh3;

const ROUNDS: usize = 5;
const BIG_MIB: usize = 256;
const FILES: usize = 100_000;
const RANDOM_FILES: usize = 2_000;
const RANDOM_READS: usize = 20_000;
const RANDOM_ROUNDS: usize = 3;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn fixtures() -> PathBuf {
    integration::target_dir()
        .join("lazy-worktree-fixtures")
        .join("peers")
}

/// `store/big.git` (one 256 MiB random file) and `store/files.git`
/// (100,000 files from `make-sized-repo`), and `data/`, their checkouts
/// for ganesha. Built once and cached.
fn prepare() -> (PathBuf, PathBuf) {
    let root = fixtures();
    let store = root.join("store");
    let data = root.join("data");
    if !data.join("files/.git").exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&store).expect("store");
        std::fs::create_dir_all(data.join("big")).expect("data");
        let big = data.join("big");
        run(Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .arg(&big));
        run(Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {} /dev/urandom > big.bin", BIG_MIB << 20))
            .current_dir(&big));
        run(Command::new("git")
            .arg("-C")
            .arg(&big)
            .args(["add", "big.bin"]));
        run(Command::new("git").arg("-C").arg(&big).args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "-q",
            "-m",
            "big",
        ]));
        run(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&big)
            .arg(store.join("big.git")));
        integration::fixture::make_sized_repo(FILES, &store.join("files.git"));
        run(Command::new("git")
            .args(["clone", "-q", "--no-hardlinks"])
            .arg(store.join("files.git"))
            .arg(data.join("files")));
    }
    (store, data)
}

/// nfs-ganesha exporting `data` read-only at `/data`, with its rpcbind.
struct Ganesha {
    ganesha: Child,
    rpcbind: Child,
    port: u16,
    mount_port: u16,
    /// Config, log, pid file; removed with the server.
    _dir: tempfile::TempDir,
}

impl Ganesha {
    fn start(data: &Path) -> Self {
        let dir = tempfile::tempdir().expect("ganesha dir");
        let (port, mount_port) = (free_port(), free_port());
        std::fs::create_dir_all(dir.path().join("recov")).expect("recov");
        let config = format!(
            r#"NFS_CORE_PARAM {{
    Bind_addr = 127.0.0.1; NFS_Port = {port}; MNT_Port = {mount_port}; Protocols = 3;
    Enable_UDP = false; Enable_NLM = false; Enable_RQUOTA = false; mount_path_pseudo = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSv4 {{ Graceless = true; RecoveryRoot = {recov}; }}
MDCACHE {{ Entries_HWMark = 200000; FD_HWMark_Percent = 90; }}
EXPORT {{
    Export_Id = 1; Path = {data}; Pseudo = /data; Access_Type = RO; Squash = No_Root_Squash;
    Protocols = 3; Transports = TCP; SecType = sys; FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; Components {{ TIRPC = MAJ; }} }}
"#,
            recov = dir.path().join("recov").display(),
            data = data.display(),
        );
        let conf = dir.path().join("ganesha.conf");
        std::fs::write(&conf, config).expect("ganesha.conf");
        let rpcbind = Command::new("unshare")
            .args(["--net", "/usr/sbin/rpcbind", "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rpcbind (Debian package rpcbind)");
        std::thread::sleep(Duration::from_millis(300));
        let ganesha = Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(dir.path().join("ganesha.log"))
            .arg("-p")
            .arg(dir.path().join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ganesha.nfsd (Debian packages nfs-ganesha nfs-ganesha-vfs)");
        let server = Self {
            ganesha,
            rpcbind,
            port,
            mount_port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ganesha never listened");
            std::thread::sleep(Duration::from_millis(200));
        }
        // It listens before its export is ready.
        let probe = server.url("/data");
        while !Command::new("nfs-ls")
            .arg(&probe)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "ganesha never exported /data");
            std::thread::sleep(Duration::from_millis(500));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!(
            "nfs://127.0.0.1{path}?nfsport={}&mountport={}&version=3",
            self.port, self.mount_port
        )
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        let _ = self.ganesha.kill();
        let _ = self.ganesha.wait();
        let _ = self.rpcbind.kill();
        let _ = self.rpcbind.wait();
        for leftover in [
            "/run/ganesha",
            "/var/lib/nfs/ganesha",
            "/run/rpcbind.sock",
            "/run/rpcbind.lock",
        ] {
            let _ = std::fs::remove_dir_all(leftover).or_else(|_| std::fs::remove_file(leftover));
        }
    }
}

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

/// A small deterministic generator (xorshift64*), so both servers get
/// the same sequence of reads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Files for the random reads: (path, size), the same ones on both servers.
fn random_read_files(store: &Path, count: usize) -> Vec<(String, u64)> {
    let out = Command::new("git")
        .arg("-C")
        .arg(store.join("files.git"))
        .args(["ls-tree", "-r", "--long", "main"])
        .output()
        .expect("git ls-tree");
    let all: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (meta, path) = l.split_once('\t')?;
            let size = meta.split_whitespace().nth(3)?.parse().ok()?;
            Some((path.to_owned(), size))
        })
        .filter(|(_, size)| *size > 0)
        .collect();
    let mut rng = Rng(0x5eed);
    (0..count)
        .map(|_| all[(rng.next() % all.len() as u64) as usize].clone())
        .collect()
}

/// One server's side of the random reads: where to connect, and the
/// handles of the files (looked up, and each read once to warm it).
struct RandomTarget {
    nfs: std::net::SocketAddr,
    files: Vec<(nfs_fh3, u64)>,
}

impl RandomTarget {
    fn new(
        mount: std::net::SocketAddr,
        nfs: std::net::SocketAddr,
        export: &str,
        files: &[(String, u64)],
    ) -> Self {
        let root = RpcClient::connect(mount).mount(export).expect("MOUNT");
        let mut c = RpcClient::connect(nfs);
        let files = files
            .iter()
            .map(|(path, size)| {
                let fh = c.walk(&root, path).expect("LOOKUP");
                c.read(&fh, 0, 4096).expect("warming READ");
                (fh, *size)
            })
            .collect();
        Self { nfs, files }
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
                                &self.files[(rng.next() % self.files.len() as u64) as usize];
                            let blocks = size.div_ceil(4096).max(1);
                            let offset = (rng.next() % blocks) * 4096;
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let (store, data) = prepare();
    // Default flags: the 256 MiB file is larger than the blob cache, so it
    // is decoded once into the spill folder and read from there.
    let nfsd = GitNfsd::start(&store);
    let ganesha = Ganesha::start(&data);
    let ours_big = nfsd.url("/big@main/big.bin");
    let theirs_big = ganesha.url("/data/big/big.bin");
    let ours_tree = nfsd.url("/files@main");
    let theirs_tree = ganesha.url("/data/files");

    // Warm both (first read decodes the pack; first listing walks the tree).
    cat(&ours_big, 1);
    cat(&theirs_big, 1);
    let (_, our_entries) = list(&ours_tree);
    let (_, their_entries) = list(&theirs_tree);

    let mut rows = Vec::new();
    for copies in [1, 4] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.push(cat(&ours_big, copies));
            theirs.push(cat(&theirs_big, copies));
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
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(list(&ours_tree).0);
        theirs.push(list(&theirs_tree).0);
    }
    let (a, b) = (median(ours), median(theirs));
    rows.push(format!(
        "| nfs-ls -R of {FILES} files ({our_entries} / {their_entries} entries listed) | {:.2} s | {:.2} s | {:.2} |",
        a.as_secs_f64(),
        b.as_secs_f64(),
        b.as_secs_f64() / a.as_secs_f64()
    ));

    // Random 4 KiB reads, same files, same sequence, on both servers.
    let files = random_read_files(&store, RANDOM_FILES);
    let ours_random = RandomTarget::new(nfsd.addr, nfsd.addr, "/files@main", &files);
    let theirs_random = RandomTarget::new(
        ([127, 0, 0, 1], ganesha.mount_port).into(),
        ([127, 0, 0, 1], ganesha.port).into(),
        "/data/files",
        &files,
    );
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
    }
    rows.push(format!(
        "| server RSS after the runs | {} MiB | {} MiB | |",
        nfsd.rss_kib() / 1024,
        integration::rss_kib(ganesha.ganesha.id()) / 1024
    ));

    println!("git-nfsd vs nfs-ganesha, libnfs client, medians of {ROUNDS} alternating runs");
    println!("| measure | git-nfsd | nfs-ganesha | ratio (≥ 1: git-nfsd as fast or faster) |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
