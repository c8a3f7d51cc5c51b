//! overlay-scripts in the QEMU guest: mount-worktree, umount-worktree,
//! worktree-status and the worktree-fsmonitor hook against git-nfsd on the
//! host, with every error case the scripts promise.

use integration::fixture::{self, ls_tree};
use integration::guest::{GuestRun, assert_all_checks_passed};
use integration::server::GitNfsd;

#[test]
fn overlay_scripts_mount_reattach_and_report_errors_in_the_guest() {
    let store = fixture::store();
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    let files = ls_tree(&store.join("app.git"), "main")
        .iter()
        .filter(|e| e.kind != "tree")
        .count();
    let checks = include_str!("../guest/scripts/overlay-scripts.sh");
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-scripts");
    let console = GuestRun::new()
        .env("nfsport", server.port())
        .env("metricsport", server.metrics.port())
        .file(scripts, "opt/overlay-scripts")
        .run(&format!("FILES={files}\n{checks}"));
    assert_all_checks_passed(checks, &console);
}
