//! The Fly agent-runner image's entrypoint (`fly/agent-runner/entrypoint`)
//! in the QEMU guest, against git-nfsd on the host: it mounts the worktree
//! the environment names with the kernel's NFS client and overlayfs,
//! through `git-nfsd relay` on the guest's 127.0.0.1 (and once directly,
//! `WORKTREE_RELAY=off`), pins its commit and branch, and on later boots
//! re-attaches the same upper (read-write or read-only) at the pinned
//! commit with HEAD on the pinned branch, so an agent's commits survive
//! restarts, mode switches and a moved branch; another agent on the same
//! machine starts clean; bad names, another repository and unknown
//! revisions are refused.
//!
//! Then failover, as on Fly, where `lazy-worktree-nfsd.internal` names
//! every git-nfsd machine: two replicas over the same store, on the host's
//! 127.0.0.1 and ::1 at one port, one name with both addresses in the
//! guest. The guest asks the test (a control server on the host) to stop
//! the replica its relay uses while a read waits on it, then to kill it:
//! the read and then git carry on through the other replica with no error.
//! Then the first replica comes back and the second dies while the mount
//! is idle: git carries on through the first again. Nothing of the
//! agent's work is lost.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use integration::fixture::{self, git, ls_tree};
use integration::guest::{GuestRun, assert_all_checks_passed};
use integration::server::GitNfsd;

/// Two git-nfsd replicas over one store, at one port: `v4` on 127.0.0.1
/// (the guest's 10.0.2.2), `v6` on ::1 (the guest's fec0::2).
struct Replicas {
    store: &'static Path,
    port: u16,
    servers: Mutex<[Option<GitNfsd>; 2]>,
    /// What the guest asked for, in order ("freeze v4", "kill v4", ...).
    log: Mutex<Vec<String>>,
}

const FAMILIES: [&str; 2] = ["v4", "v6"];

impl Replicas {
    fn start(store: &'static Path) -> Arc<Self> {
        for _ in 0..20 {
            let v4 = GitNfsd::start(store);
            let port = v4.port();
            // The same port number must be free on ::1 too; if not, try
            // another (dropping `v4` kills it).
            if TcpListener::bind(("::1", port)).is_err() {
                continue;
            }
            let v6 = GitNfsd::start_with(store, &format!("[::1]:{port}"), &[]);
            return Arc::new(Self {
                store,
                port,
                servers: Mutex::new([Some(v4), Some(v6)]),
                log: Mutex::new(Vec::new()),
            });
        }
        panic!("no port free on both 127.0.0.1 and ::1 after 20 tries");
    }

    fn listen(&self, index: usize) -> String {
        match index {
            0 => format!("127.0.0.1:{}", self.port),
            _ => format!("[::1]:{}", self.port),
        }
    }

    /// `freeze` (SIGSTOP: the replica still holds its connections but
    /// answers nothing), `kill` (SIGKILL) or `start` the replica of `family`.
    fn act(&self, action: &str, family: &str) -> Result<(), String> {
        let index = FAMILIES
            .iter()
            .position(|f| *f == family)
            .ok_or_else(|| format!("no replica {family}"))?;
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut servers[index];
        match (action, slot.as_ref()) {
            ("freeze", Some(server)) => {
                let pid = rustix::process::Pid::from_raw(server.pid() as i32)
                    .ok_or("the replica has no pid")?;
                rustix::process::kill_process(pid, rustix::process::Signal::STOP)
                    .map_err(|e| format!("SIGSTOP: {e}"))?;
            }
            // Dropping it kills it (SIGKILL) and waits for it.
            ("kill", Some(_)) => drop(slot.take()),
            ("start", None) => {
                *slot = Some(GitNfsd::start_with(self.store, &self.listen(index), &[]));
            }
            _ => return Err(format!("cannot {action} replica {family} now")),
        }
        let at = START.get_or_init(Instant::now).elapsed().as_secs_f64();
        println!("control: {action} {family} done at {at:.2} s");
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{action} {family}"));
        Ok(())
    }

    /// The metric of the replica of `family`, if it runs.
    fn metric(&self, family: &str, series: &str) -> Option<f64> {
        let index = FAMILIES.iter().position(|f| *f == family)?;
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers[index].as_ref().map(|s| s.metric(series))
    }

    fn stop_all(&self) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        for slot in servers.iter_mut() {
            drop(slot.take());
        }
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Kills both replicas when the test ends, whether or not it passed (the
/// control thread keeps its own reference to them).
struct StopOnDrop(Arc<Replicas>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

/// The guest's side channel: `GET /ACTION/FAMILY` (`/freeze/v4`,
/// `/kill/v6`, `/start/v4`) acts on a replica and answers `done` once the
/// action is complete (a killed replica has exited), or 500 with why not.
fn serve_control(replicas: Arc<Replicas>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("control listener");
    let port = listener.local_addr().expect("control address").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let mut parts = path.trim_start_matches('/').splitn(2, '/');
            let (action, family) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body) = match replicas.act(action, family) {
                Ok(()) => ("200 OK", "done".to_owned()),
                Err(error) => ("500 Internal Server Error", error),
            };
            let _ = write!(
                conn,
                "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn the_agent_entrypoint_mounts_pins_reattaches_and_fails_over() {
    START.get_or_init(Instant::now);
    let store = fixture::store();
    let app = store.join("app.git");
    let main = String::from_utf8(git(&app, &["rev-parse", "main"])).unwrap();
    let tree = ls_tree(&app, "main");
    let oid = |path: &str| {
        let entry = tree.iter().find(|e| e.path == path.as_bytes());
        entry
            .unwrap_or_else(|| panic!("{path} in app@main"))
            .oid
            .clone()
    };
    let server = GitNfsd::start(store);
    let replicas = StopOnDrop(Replicas::start(store));
    let ctl_port = serve_control(Arc::clone(&replicas.0));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let checks = include_str!("../guest/scripts/agent-entrypoint.sh");
    let script = format!(
        "MAIN={}\nREADME_OID={}\nMAIN_RS_OID={}\nBIG_OID={}\n{checks}",
        main.trim(),
        oid("README.md"),
        oid("src/main.rs"),
        oid("big/random.bin"),
    );
    let console = GuestRun::new()
        .env("nfsport", server.port())
        .env("replicaport", replicas.0.port)
        .env("ctlport", ctl_port)
        .agent_runner_image()
        .file(
            &root.join("fly/agent-runner/entrypoint").to_string_lossy(),
            "usr/local/bin/entrypoint",
        )
        .run(&script);
    assert_all_checks_passed(checks, &console);

    // The guest stopped and killed the replica its relay used, brought it
    // back, and killed the other.
    let log = replicas.0.log.lock().unwrap().clone();
    let [freeze, kill, start, kill_other] = log.as_slice() else {
        panic!("the guest asked for {log:?}");
    };
    let first = freeze.strip_prefix("freeze ").expect("a freeze first");
    let second = FAMILIES.iter().find(|f| **f != first).unwrap();
    assert_eq!(
        [kill, start, kill_other],
        [
            &format!("kill {first}"),
            &format!("start {first}"),
            &format!("kill {second}")
        ]
    );
    // The replica that came back served the worktree's reads at the end.
    let reads = replicas
        .0
        .metric(first, "gitnfsd_reads_total{name=\"worktree\"}")
        .expect("the first replica runs again");
    assert!(reads > 0.0, "the restarted replica served no worktree READ");
}
