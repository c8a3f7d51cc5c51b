//! overlay-scripts in the QEMU guest: mount-worktree, umount-worktree,
//! worktree-status and the worktree-fsmonitor hook against git-nfsd on the
//! host, with every error case the scripts promise.

use std::process::Command;

use integration::fixture::{self, ls_tree};
use integration::server::GitNfsd;

#[test]
fn overlay_scripts_mount_reattach_and_report_errors_in_the_guest() {
    let store = fixture::store();
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    let files = ls_tree(&store.join("app.git"), "main")
        .iter()
        .filter(|e| e.kind != "tree")
        .count();
    let script = format!(
        "FILES={files}\n{}",
        include_str!("../guest/scripts/overlay-scripts.sh")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("overlay-scripts.sh");
    std::fs::write(&path, script).expect("write script");
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-scripts");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/run-guest"))
        .args(["--timeout", "900"])
        .arg("--env")
        .arg(format!("nfsport={}", server.port()))
        .arg("--env")
        .arg(format!("metricsport={}", server.metrics.port()))
        .arg("--file")
        .arg(format!("{scripts}:opt/overlay-scripts"))
        .arg(&path)
        .output()
        .expect("run-guest");
    let console = String::from_utf8_lossy(&out.stdout);
    println!("{console}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "guest checks failed (exit {:?})",
        out.status.code()
    );
    let passed = console.lines().filter(|l| l.starts_with("PASS: ")).count();
    let checks = include_str!("../guest/scripts/overlay-scripts.sh")
        .lines()
        .filter(|l| l.starts_with("check \""))
        .count();
    assert_eq!(passed, checks, "every check ran and passed");
}
