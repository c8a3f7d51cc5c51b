//! `--allow`: clients outside the allowed address ranges get an RPC
//! authentication error for every call (MOUNT included); allowed ones are
//! served. Every test client here is on 127.0.0.1, so "outside" is made by
//! allowing only another range.

use integration::client::{MOUNT, NFS, RpcClient, RpcError};
use integration::fixture;
use integration::libnfs;
use integration::server::GitNfsd;

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
