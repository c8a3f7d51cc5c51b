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
