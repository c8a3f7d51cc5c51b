//! The Fly agent-runner image's entrypoint (`fly/agent-runner/entrypoint`)
//! in the QEMU guest, against git-nfsd on the host: it mounts the worktree
//! the environment names with the kernel's NFS client and overlayfs, pins
//! its commit and branch, and on later boots re-attaches the same upper
//! (read-write or read-only) at the pinned commit with HEAD on the pinned
//! branch, so an agent's commits survive restarts, mode switches and a
//! moved branch; another agent on the same machine starts clean; bad
//! names, another repository and unknown revisions are refused.

use std::path::Path;

use integration::fixture::{self, git};
use integration::guest::{GuestRun, assert_all_checks_passed};
use integration::server::GitNfsd;

#[test]
fn the_agent_entrypoint_mounts_pins_and_reattaches_the_worktree() {
    let store = fixture::store();
    let main = String::from_utf8(git(&store.join("app.git"), &["rev-parse", "main"])).unwrap();
    let server = GitNfsd::start(store);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = format!(
        "MAIN={}\n{}",
        main.trim(),
        include_str!("../guest/scripts/agent-entrypoint.sh")
    );
    let console = GuestRun::new()
        .env("nfsport", server.port())
        .agent_runner_image()
        .file(
            &root.join("fly/agent-runner/entrypoint").to_string_lossy(),
            "usr/local/bin/entrypoint",
        )
        .run(&script);
    assert_all_checks_passed(
        include_str!("../guest/scripts/agent-entrypoint.sh"),
        &console,
    );
}
