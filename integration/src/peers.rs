//! The peer the benchmarks measure git-nfsd against, nfs-ganesha, and the
//! data both serve: the same commits as bare repositories for git-nfsd and
//! as checkouts on local disk for ganesha.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Size of the big file both servers serve, in MiB.
pub const BIG_MIB: usize = 256;
/// Files of the generated tree both servers serve.
pub const FILES: usize = 100_000;

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn fixtures() -> PathBuf {
    crate::target_dir()
        .join("lazy-worktree-fixtures")
        .join("peers")
}

/// `store/big.git` (one 256 MiB random file) and `store/files.git`
/// (100,000 files from `make-sized-repo`), and `data/`, their checkouts
/// for ganesha. Built once and cached.
pub fn prepare() -> (PathBuf, PathBuf) {
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
        crate::fixture::make_sized_repo(FILES, &store.join("files.git"));
        run(Command::new("git")
            .args(["clone", "-q", "--no-hardlinks"])
            .arg(store.join("files.git"))
            .arg(data.join("files")));
    }
    (store, data)
}

/// Adds the Linux kernel tree to `prepare`'s data: `store/linux.git`
/// (sharing the objects of [`crate::fixture::bench_repo`]'s by hard links)
/// and its checkout `data/linux`. Built once and cached.
pub fn prepare_kernel(store: &Path, data: &Path) {
    if data.join("linux/.git").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(store.join("linux.git"));
    let _ = std::fs::remove_dir_all(data.join("linux"));
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(crate::fixture::bench_repo("linux"))
        .arg(store.join("linux.git")));
    run(Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(store.join("linux.git"))
        .arg(data.join("linux")));
}

/// nfs-ganesha exporting `data` read-only at `/data`, with its rpcbind.
pub struct Ganesha {
    pub ganesha: Child,
    rpcbind: Child,
    pub port: u16,
    pub mount_port: u16,
    /// Config, log, pid file; removed with the server.
    _dir: tempfile::TempDir,
}

impl Ganesha {
    pub fn start(data: &Path) -> Self {
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

    pub fn url(&self, path: &str) -> String {
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

/// A small deterministic generator (xorshift64*), so both servers get
/// the same sequence of reads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Files for the random reads: (path, size), the same ones on both servers.
pub fn random_read_files(store: &Path, count: usize) -> Vec<(String, u64)> {
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
        .map(|_| all[(rng.next_u64() % all.len() as u64) as usize].clone())
        .collect()
}
