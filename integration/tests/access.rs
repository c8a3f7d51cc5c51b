//! `--allow`: clients outside the allowed address ranges get an RPC
//! authentication error for every call (MOUNT included); allowed ones are
//! served. Every test client here is on 127.0.0.1, so "outside" is made by
//! allowing only another range.
//!
//! `--export-allow`: per-range repository rules, tested with clients bound
//! to 127.0.0.2 and 127.0.0.3 (loopback, other source addresses).

use integration::client::{MOUNT, NFS, RpcClient, RpcError, unpack};
use integration::fixture;
use integration::libnfs;
use integration::server::GitNfsd;
use nfs3_types::mount::exports;
use nfs3_types::nfs3::nfsstat3;

#[test]
fn clients_outside_the_allowed_ranges_get_auth_errors() {
    let server = GitNfsd::start_with(fixture::store(), "127.0.0.1:0", &["--allow", "10.9.0.0/16"]);
    let mut c = RpcClient::connect(server.addr);
    // MSG_DENIED / AUTH_ERROR for MOUNT, NFS and even NULL.
    assert_eq!(c.call(MOUNT, 3, 0, &[]), Err(RpcError::Denied(1)));
    assert_eq!(c.call(MOUNT, 3, 5, &[]), Err(RpcError::Denied(1)));
    assert_eq!(c.call(NFS, 3, 0, &[]), Err(RpcError::Denied(1)));
    let err = libnfs::ls(&server.url("/app"), false).expect_err("nfs-ls must be refused");
    assert!(!err.is_empty());
    assert!(server.metric("gitnfsd_answers_total{name=\"auth_error\"}") >= 3.0);
    assert_eq!(server.metric("gitnfsd_mounts_total{name=\"MNT3_OK\"}"), 0.0);
}

#[test]
fn allowed_ranges_are_served_and_loopback_is_the_default() {
    let listed = GitNfsd::start_with(
        fixture::store(),
        "127.0.0.1:0",
        &["--allow", "10.9.0.0/16", "--allow", "127.0.0.0/8"],
    );
    let default = GitNfsd::start(fixture::store());
    for server in [&listed, &default] {
        let mut c = RpcClient::connect(server.addr);
        let root = c.mount("/app").expect("mount from an allowed address");
        c.walk(&root, "README.md").expect("lookup");
    }
}

#[test]
fn require_privileged_port_refuses_unprivileged_source_ports() {
    let server = GitNfsd::start_with(
        fixture::store(),
        "127.0.0.1:0",
        &["--require-privileged-port"],
    );
    // An ordinary client: an ephemeral source port.
    let mut c = RpcClient::connect(server.addr);
    assert_eq!(c.call(MOUNT, 3, 0, &[]), Err(RpcError::Denied(1)));
    // libnfs binds a privileged source port when run as root, as mount does.
    if running_as_root() {
        let listed = libnfs::ls(&server.url("/app"), false)
            .expect("a root client with a privileged port is served");
        assert!(listed.iter().any(|l| l.path == b"README.md"));
    }
}

/// Whether this test runs as root (then libnfs can bind ports below 1024).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

const MNT3ERR_ACCES: u32 = 13;

fn exported(c: &mut RpcClient) -> Vec<String> {
    let list: exports = unpack(&c.call(MOUNT, 3, 5, &[]).expect("EXPORT"));
    list.0
        .iter()
        .map(|e| String::from_utf8_lossy(&e.ex_dir.0).into_owned())
        .collect()
}

/// Each client range may use only the repositories its rules name: at
/// MOUNT, in the EXPORT list, through the namespace, and through handles
/// (which are predictable, so a handle from another client must not work).
#[test]
fn export_rules_narrow_repositories_per_client_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("git-nfsd.log");
    let server = GitNfsd::start_logging_to(
        fixture::store(),
        &[
            "--export-allow",
            "127.0.0.2/32=app",
            "--export-allow",
            "127.0.0.3/32=org/*",
        ],
        &log,
    );
    let mut app_client = RpcClient::connect_from("127.0.0.2".parse().unwrap(), server.addr);
    let mut org_client = RpcClient::connect_from("127.0.0.3".parse().unwrap(), server.addr);
    let mut no_rule = RpcClient::connect(server.addr);

    let app_root = app_client
        .mount("/app@main")
        .expect("127.0.0.2 may mount app");
    let readme = app_client.walk(&app_root, "README.md").expect("lookup");
    assert_eq!(app_client.mount("/org/lib"), Err(MNT3ERR_ACCES));
    assert_eq!(exported(&mut app_client), ["/app"]);

    let lib_root = org_client
        .mount("/org/lib")
        .expect("127.0.0.3 may mount org/*");
    org_client
        .getattr(&lib_root)
        .expect("getattr of its own export");
    assert_eq!(org_client.mount("/app"), Err(MNT3ERR_ACCES));
    assert_eq!(exported(&mut org_client), ["/org/lib"]);
    // A handle of app, taken from the other client, is refused on every use.
    assert_eq!(
        org_client.getattr(&readme).err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        org_client.read(&readme, 0, 100).err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        org_client.lookup(&app_root, b"src").err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        org_client.readdir_all(&app_root, 4096).err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );

    // No rule covers 127.0.0.1: no repository, though the namespace
    // root mounts, and names in it lead nowhere.
    assert_eq!(no_rule.mount("/app"), Err(MNT3ERR_ACCES));
    assert!(exported(&mut no_rule).is_empty());
    let namespace = no_rule.mount("/").expect("the namespace root");
    assert_eq!(
        no_rule.lookup(&namespace, b"app").err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        no_rule.getattr(&readme).err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );

    // The allowed client is unaffected throughout.
    assert!(
        app_client
            .read_all(&readme, 4096)
            .unwrap()
            .starts_with(b"# Fixture")
    );
    assert_eq!(
        server.metric("gitnfsd_access_refused_total{name=\"mount\"}"),
        3.0
    );
    assert!(server.metric("gitnfsd_access_refused_total{name=\"handle\"}") >= 6.0);
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("MOUNT refused by the export rules").count(),
        3,
        "{log}"
    );
}

#[test]
fn a_malformed_export_rule_stops_the_server_with_a_reason() {
    let out = std::process::Command::new(integration::workspace_bin("git-nfsd"))
        .args(["serve", "--store"])
        .arg(fixture::store())
        .args(["--export-allow", "10.0.0.0/8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not CIDR=GLOB"), "{err}");
}
