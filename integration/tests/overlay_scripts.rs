//! overlay-scripts in the QEMU guest: mount-worktree, umount-worktree,
//! worktree-status and the worktree-fsmonitor hook against git-nfsd on the
//! host, with every error case the scripts promise, and a server name with
//! IPv6 addresses only (as Fly's private names are) served from the host's ::1.

use integration::fixture::{self, git, ls_tree};
use integration::guest::{GuestRun, assert_all_checks_passed};
use integration::server::GitNfsd;

#[test]
fn overlay_scripts_mount_reattach_and_report_errors_in_the_guest() {
    let store = fixture::store();
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);
    // Fly's private names have IPv6 addresses only: the guest reaches this
    // one at fec0::2 (the host's ::1) through a name with no IPv4 address.
    let server6 = GitNfsd::start_with(store, "[::1]:0", &["--uid", "1000", "--gid", "1000"]);
    let app = store.join("app.git");
    let tree = ls_tree(&app, "main");
    let files = tree.iter().filter(|e| e.kind != "tree").count();
    let oid = |path: &str| {
        let entry = tree.iter().find(|e| e.path == path.as_bytes());
        entry
            .unwrap_or_else(|| panic!("{path} in app@main"))
            .oid
            .clone()
    };
    let main = String::from_utf8(git(&app, &["rev-parse", "main"])).expect("commit id");
    let prelude = format!(
        "FILES={files}\nMAIN={}\nREADME_OID={}\nMAIN_RS_OID={}\n",
        main.trim(),
        oid("README.md"),
        oid("src/main.rs")
    );
    let checks = include_str!("../guest/scripts/overlay-scripts.sh");
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-scripts");
    let console = GuestRun::new()
        .env("nfsport", server.port())
        .env("nfs6port", server6.port())
        .env("metricsport", server.metrics.port())
        .file(scripts, "opt/overlay-scripts")
        .run(&format!("{prelude}{checks}"));
    assert_all_checks_passed(checks, &console);
}
