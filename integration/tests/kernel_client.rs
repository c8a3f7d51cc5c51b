//! The Linux kernel's NFS client in a QEMU guest (software emulation; this
//! machine's kernel has no NFS client) mounts git-nfsd from the host, checks
//! listings and bytes, and builds an overlayfs on top in which root (not the
//! owner: NFSACL decides) and an ordinary user (the owner) read, edit and
//! create files while the export stays unchanged.

use integration::fixture::{self, git, ls_tree};
use integration::guest::{GuestRun, assert_all_checks_passed};
use integration::server::GitNfsd;

#[test]
fn kernel_client_mounts_reads_and_overlays_the_export() {
    let store = fixture::store();
    let app = store.join("app.git");
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1000"]);

    let tree = ls_tree(&app, "main");
    let mut manifest = String::new();
    for e in tree
        .iter()
        .filter(|e| e.kind == "blob" && e.mode != "120000" && !e.path.starts_with(b"many/"))
    {
        let bytes = git(&app, &["cat-file", "blob", &e.oid]);
        let digest = sha256_hex(&bytes);
        manifest.push_str(&format!(
            "{digest}  ./{}\n",
            String::from_utf8_lossy(&e.path)
        ));
    }
    let many = tree.iter().filter(|e| e.path.starts_with(b"many/")).count();
    let script = format!(
        "EXPORT=/app\nENTRIES={}\nMANY={many}\nMANIFEST='{}'\n{}",
        tree.len() + 1,
        manifest.trim_end(),
        include_str!("../guest/scripts/kernel-client.sh")
    );
    let console = GuestRun::new().env("nfsport", server.port()).run(&script);
    assert_all_checks_passed(include_str!("../guest/scripts/kernel-client.sh"), &console);
    // The overlay asked the server for ACLs and the kernel used READDIRPLUS.
    assert!(
        server.metric("gitnfsd_rpc_calls_total{program=\"nfsacl3\",procedure=\"GETACL\"}") > 0.0
    );
    assert!(
        server.metric("gitnfsd_rpc_calls_total{program=\"nfs3\",procedure=\"READDIRPLUS\"}") > 0.0
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
