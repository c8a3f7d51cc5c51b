//! `git-nfsd` as a child process listening on an ephemeral 127.0.0.1 port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

pub struct GitNfsd {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

impl GitNfsd {
    /// Starts a server on `store` with ephemeral NFS and metrics ports.
    pub fn start(store: &Path) -> Self {
        Self::start_with(store, "127.0.0.1:0", &[])
    }

    /// Starts a server on `store` listening on `listen`, with extra flags.
    pub fn start_with(store: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::spawn(store, listen, extra, Stdio::inherit())
    }

    /// Like [`GitNfsd::start_with`] on 127.0.0.1, with the server's log
    /// (stderr) written to `log`, for tests that count log lines.
    pub fn start_logging_to(store: &Path, extra: &[&str], log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("creating the server log");
        Self::spawn(store, "127.0.0.1:0", extra, Stdio::from(file))
    }

    fn spawn(store: &Path, listen: &str, extra: &[&str], stderr: Stdio) -> Self {
        let mut child = Command::new(crate::workspace_bin("git-nfsd"))
            .args([
                "serve",
                "--listen",
                listen,
                "--metrics",
                "127.0.0.1:0",
                "--store",
            ])
            .arg(store)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting git-nfsd");
        let (addr, metrics) = addresses(child.stdout.take().expect("stdout piped"));
        Self {
            child,
            addr,
            metrics,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libnfs URL for `path` (an export path, optionally with a file).
    pub fn url(&self, path: &str) -> String {
        let p = self.port();
        format!("nfs://127.0.0.1{path}?nfsport={p}&mountport={p}&version=3")
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).expect("metrics connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("metrics request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("metrics response");
        out
    }

    /// The value of one metric line (`name{labels}` exactly as exported).
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        crate::rss_kib(self.child.id())
    }

    /// Peak resident memory so far in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        crate::peak_rss_kib(self.child.id())
    }
}

impl Drop for GitNfsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NFS and metrics addresses a git-nfsd prints on `stdout` (its own,
/// or a script's that runs it); the rest of the output is drained, as
/// git-nfsd must never block on a full pipe.
pub fn addresses(stdout: ChildStdout) -> (SocketAddr, SocketAddr) {
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut metrics) = (None, None);
    while addr.is_none() || metrics.is_none() {
        let line = lines
            .next()
            .expect("git-nfsd exited before it was listening")
            .expect("reading git-nfsd output");
        if let Some(rest) = line.strip_prefix("git-nfsd listening on ") {
            addr = rest.split(',').next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("metrics at http://") {
            metrics = rest.strip_suffix("/metrics").and_then(|a| a.parse().ok());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (
        addr.expect("listen address"),
        metrics.expect("metrics address"),
    )
}
