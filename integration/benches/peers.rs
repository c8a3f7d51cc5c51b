//! git-nfsd against nfs-ganesha, the mature userspace NFS server, on the
//! same data and through the same client (libnfs's `nfs-cat` / `nfs-ls`):
//! `cargo build --release --bins && cargo bench -p integration --bench peers`.
//!
//! - sequential read of a 256 MiB file (one reader, and 4 at once);
//! - a full recursive listing with attributes (READDIRPLUS) of 100,000
//!   files.
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

use integration::server::GitNfsd;

const ROUNDS: usize = 5;
const BIG_MIB: usize = 256;
const FILES: usize = 100_000;

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
        run(Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/make-sized-repo"
        ))
        .arg(FILES.to_string())
        .arg(store.join("files.git")));
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
