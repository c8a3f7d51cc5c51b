//! Vanilla git in a mounted export, through the Linux kernel's NFS client
//! and an overlayfs in a QEMU guest: a fresh mount is a clean checkout whose
//! `git status` reads no file contents, and a whole git session gives the
//! same results as in an ordinary clone on the host.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use integration::fixture::{self, git, ls_tree};
use integration::guest::GuestRun;
use integration::server::GitNfsd;

const GITCONFIG: &str = "[user]\n\tname = Guest\n\temail = guest@example.invalid\n\
[init]\n\tdefaultBranch = main\n[core]\n\tpager = cat\n[advice]\n\tdetachedHead = false\n";

fn run_guest(server: &GitNfsd, header: &str) -> String {
    let script = format!(
        "{header}\n{}",
        include_str!("../guest/scripts/kernel-git.sh")
    );
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-scripts");
    GuestRun::new()
        .env("nfsport", server.port())
        .file(scripts, "opt/overlay-scripts")
        .run(&script)
}

/// A digest of every file in the store: names, sizes and bytes.
fn store_digest(store: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f | sort | xargs sha256sum")
        .current_dir(store)
        .output()
        .expect("digest the store");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn git_status_in_a_fresh_mount_is_clean_and_reads_no_file_contents() {
    let store = fixture::store();
    let app = store.join("app.git");
    let before = store_digest(store);
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    let commit = String::from_utf8(git(&app, &["rev-parse", "main"])).expect("utf8");
    let tracked = ls_tree(&app, "main")
        .iter()
        .filter(|e| e.kind != "tree")
        .count();
    let header = format!(
        "EXPORT=/app@main\nMODE=status\nCOMMIT={}\nTRACKED={tracked}",
        commit.trim()
    );
    let console = run_guest(&server, &header);
    for check in [
        "mount nfs",
        "overlays for root and agent",
        "fresh status is clean (root)",
        "status says clean",
        "HEAD is the pinned commit",
        "on the mounted branch",
        "index lists every file",
        "log reads the packs",
        "upstream is origin/main",
        "fresh status is clean (agent)",
        "git status wrote nothing but the index",
    ] {
        assert!(
            console.contains(&format!("PASS: {check}")),
            "check {check:?} did not pass"
        );
    }
    // git read the index, config, refs and packs, and .gitmodules (git's
    // own configuration in the tree), but no other file of the worktree.
    let worktree_reads = server.metric("gitnfsd_reads_total{name=\"worktree\"}");
    let git_reads = server.metric("gitnfsd_reads_total{name=\"git\"}");
    let metadata_bytes = server.metric("gitnfsd_read_bytes_total{name=\"git_metadata\"}");
    let gitmodules = git(&app, &["cat-file", "blob", "main:.gitmodules"]).len() as f64;
    assert_eq!(worktree_reads, 0.0, "git status read worktree files");
    assert!(git_reads > 0.0, "git read its .git through NFS");
    assert!(
        metadata_bytes <= gitmodules,
        "read {metadata_bytes} bytes of git metadata files"
    );
    assert_eq!(store_digest(store), before, "the store changed");
}

#[test]
fn a_git_session_in_the_guest_matches_one_in_an_ordinary_clone() {
    let store = fixture::store();
    let app = store.join("app.git");
    let before = store_digest(store);
    let workflow = include_str!("../guest/scripts/git-workflow.sh");

    // The same session on the host, in a clone, with Debian's git (as in the guest).
    let home = tempfile::tempdir().expect("home");
    std::fs::write(home.path().join(".gitconfig"), GITCONFIG).expect("gitconfig");
    let clone = home.path().join("clone");
    let host_git = |args: &[&str], dir: &Path| {
        Command::new("sh")
            .args(args)
            .current_dir(dir)
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("host git")
    };
    let cloned = host_git(
        &[
            "-c",
            &format!("git clone -q {} {}", app.display(), clone.display()),
        ],
        home.path(),
    );
    assert!(
        cloned.status.success(),
        "{}",
        String::from_utf8_lossy(&cloned.stderr)
    );
    let script = home.path().join("git-workflow.sh");
    std::fs::write(&script, workflow).expect("write workflow");
    let host = host_git(
        &[
            script.to_str().expect("utf8"),
            clone.to_str().expect("utf8"),
        ],
        home.path(),
    );
    let host_out = String::from_utf8_lossy(&host.stdout).into_owned();
    assert!(
        host.status.success(),
        "host workflow failed: {host_out}{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let host_steps: Vec<&str> = host_out
        .lines()
        .filter(|l| l.starts_with("STEP "))
        .collect();
    assert!(host_steps.len() >= 20, "host transcript: {host_out}");

    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    let header = format!(
        "EXPORT=/app@main\nMODE=workflow\nWORKFLOW='{}'",
        workflow.replace('\'', "'\\''")
    );
    let console = run_guest(&server, &header);
    for who in ["ROOT", "AGENT"] {
        let steps: Vec<&str> = console
            .lines()
            .filter_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix(who)?
                    .strip_prefix(' ')
            })
            .filter(|l| l.starts_with("STEP "))
            .collect();
        assert_eq!(steps, host_steps, "{who}'s session differs from the host's");
    }
    let distinct: BTreeSet<&str> = host_steps.iter().copied().collect();
    assert!(distinct.iter().any(|s| s.starts_with("STEP final tree: ")));
    assert!(
        !console.contains("FSMONITOR-MISMATCH"),
        "fsmonitor status differs from a full scan"
    );
    assert!(console.contains("PASS: mount-worktree for root and agent"));
    assert!(console.contains("PASS: fsmonitor is on"));
    assert!(console.contains("PASS: the lower layer is unchanged"));
    assert!(console.contains("PASS: the work lives in the uppers"));
    assert_eq!(store_digest(store), before, "the store changed");
}
