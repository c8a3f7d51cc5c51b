//! git-nfsd killed (SIGKILL) and restarted several times under the Linux
//! kernel's NFS client mounted `hard`, in the QEMU guest, while the guest
//! reads and checksums files and runs `git status` in an overlay: no error
//! reaches the application, every checksum matches, and the overlay's
//! upper keeps every write. Handles carry no server state, so the
//! restarted server answers the old mount's handles.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration::fixture::{self, git, ls_tree};
use integration::guest::{GuestRun, assert_all_checks_passed};
use integration::server::GitNfsd;
use sha2::Digest;

const RESTARTS: usize = 3;

/// The guest's side channel: `GET /state` says `run` or `stop`, and
/// `GET /round/N` reports a finished round.
struct Control {
    port: u16,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
}

impl Control {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("control listener");
        let port = listener.local_addr().expect("control address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&rounds));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 512];
                let n = conn.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                if let Some(round) = path.strip_prefix("/round/").and_then(|r| r.parse().ok()) {
                    r.fetch_max(round, Ordering::SeqCst);
                }
                let body = if s.load(Ordering::SeqCst) {
                    "stop"
                } else {
                    "run"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, stop, rounds }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until the guest has finished round `n`.
    fn wait_for_round(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.rounds() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        true
    }
}

/// `sha256sum -c` lines for about a hundred files of `main`, the 20 MB
/// file among them.
fn manifest() -> String {
    let app = fixture::store().join("app.git");
    let mut out = String::new();
    for entry in ls_tree(&app, "main") {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        let wanted = ["src/", "bin/", "deep/", "big/", "many/f000"]
            .iter()
            .any(|p| path.starts_with(p))
            || path == "README.md";
        if entry.kind == "blob" && entry.mode != "120000" && wanted {
            let bytes = git(&app, &["cat-file", "blob", &entry.oid]);
            let digest = hex::encode(sha2::Sha256::digest(&bytes));
            out.push_str(&format!("{digest}  {path}\n"));
        }
    }
    out
}

#[test]
fn a_hard_mount_rides_through_server_restarts() {
    let store = fixture::store();
    let mut server = GitNfsd::start(store);
    let port = server.port();
    let control = Control::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("manifest.sha256");
    let manifest = manifest();
    assert!(
        manifest.lines().count() > 50 && manifest.contains("big/random.bin"),
        "{manifest}"
    );
    std::fs::write(&manifest_path, &manifest).unwrap();

    let script = include_str!("../guest/scripts/restarts.sh");
    let guest = {
        let manifest_path = manifest_path.to_string_lossy().into_owned();
        let ctl = control.port;
        std::thread::spawn(move || {
            GuestRun::new()
                .timeout(900)
                .env("nfsport", port)
                .env("ctlport", ctl)
                .file(&manifest_path, "manifest.sha256")
                .run(script)
        })
    };

    let mut outcome = Ok(());
    if !control.wait_for_round(1, Duration::from_secs(300)) {
        outcome = Err("the guest never finished its first round".to_owned());
    }
    for restart in 0..RESTARTS {
        if outcome.is_err() {
            break;
        }
        let before = control.rounds();
        // SIGKILL: no drain, connections reset mid-call.
        drop(server);
        std::thread::sleep(Duration::from_secs(2));
        server = GitNfsd::start_with(store, &format!("127.0.0.1:{port}"), &[]);
        // Two more rounds: one may have spanned the outage, the next ran
        // entirely against the new server.
        if !control.wait_for_round(before + 2, Duration::from_secs(300)) {
            outcome = Err(format!("no progress after restart {}", restart + 1));
        }
    }
    control.stop.store(true, Ordering::SeqCst);
    let console = guest.join().expect("the guest thread");
    outcome.unwrap();
    assert_all_checks_passed(script, &console);
    assert!(console.contains("errors: 0"));
    assert!(control.rounds() > 2 * RESTARTS as u64);
    assert!(
        server.metric("gitnfsd_reads_total{name=\"worktree\"}") > 0.0,
        "the last server served reads"
    );
}
