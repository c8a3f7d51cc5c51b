//! File handles survive restarts and are the same on every server with the
//! same store; a mounted export stays pinned to its commit while the branch
//! moves.

use std::path::Path;

use integration::client::RpcClient;
use integration::fixture::{self, git};
use integration::server::GitNfsd;

#[test]
fn handles_survive_a_restart_and_agree_across_servers() {
    let store = fixture::store();
    let (handle, attrs_before) = {
        let server = GitNfsd::start(store);
        let mut c = RpcClient::connect(server.addr);
        let root = c.mount("/app@feature/nested-name").expect("mount");
        let fh = c.walk(&root, "deep/level01/level02/level03").expect("walk");
        let fh = c.walk(&fh, "level04/level05").expect("walk");
        (fh.clone(), c.getattr(&fh).expect("getattr"))
        // The server is killed here.
    };
    let restarted = GitNfsd::start(store);
    let other = GitNfsd::start(store);
    for server in [&restarted, &other] {
        let mut c = RpcClient::connect(server.addr);
        let attrs = c.getattr(&handle).expect("old handle resolves");
        assert_eq!(attrs.fileid, attrs_before.fileid);
        assert_eq!(attrs.fsid, attrs_before.fsid);
        assert_eq!(attrs.mtime, attrs_before.mtime);
        let leaf = c
            .walk(&handle, "level06/level07")
            .expect("walk from the old handle");
        assert!(c.getattr(&leaf).is_ok());
        // The same path gives byte-identical handles on both servers.
        let root = c.mount("/app@feature/nested-name").expect("mount");
        let again = c
            .walk(&root, "deep/level01/level02/level03/level04/level05")
            .expect("walk");
        assert_eq!(again.data, handle.data);
    }
}

/// Identity for commits made by these tests.
const ID: [&str; 4] = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"];

fn commit_in(repo: &Path, file: &str, text: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let clone = work.path().join("c");
    git(
        work.path(),
        &["clone", "-q", repo.to_str().expect("utf8"), "c"],
    );
    std::fs::write(clone.join(file), text).expect("write");
    git(&clone, &["add", file]);
    git(
        &clone,
        &[&ID[..], &["commit", "-qm", "move the branch"]].concat(),
    );
    git(&clone, &["push", "-q", "origin", "HEAD:main"]);
}

#[test]
fn a_mounted_export_stays_pinned_when_the_branch_moves() {
    let store = tempfile::tempdir().expect("store");
    let repo = store.path().join("pin.git");
    let src = tempfile::tempdir().expect("src");
    git(src.path(), &["init", "-q", "-b", "main", "."]);
    std::fs::write(src.path().join("state.txt"), "old\n").expect("write");
    git(src.path(), &["add", "state.txt"]);
    git(src.path(), &[&ID[..], &["commit", "-qm", "old"]].concat());
    git(
        src.path(),
        &["clone", "-q", "--bare", ".", repo.to_str().expect("utf8")],
    );

    let server = GitNfsd::start(store.path());
    let mut c = RpcClient::connect(server.addr);
    let pinned = c.mount("/pin@main").expect("mount");
    let old = c.walk(&pinned, "state.txt").expect("lookup");
    commit_in(&repo, "state.txt", "new\n");

    // The old export and its file handle still serve the old commit.
    assert_eq!(c.read_all(&old, 100).expect("read"), b"old\n");
    let again = c.walk(&pinned, "state.txt").expect("lookup again");
    assert_eq!(c.read_all(&again, 100).expect("read"), b"old\n");
    // A new MOUNT sees the new commit.
    let fresh = c.mount("/pin@main").expect("mount again");
    assert_ne!(fresh.data, pinned.data);
    let new = c.walk(&fresh, "state.txt").expect("lookup new");
    assert_eq!(c.read_all(&new, 100).expect("read"), b"new\n");
    assert_eq!(
        String::from_utf8(git(&repo, &["cat-file", "blob", "main:state.txt"])).expect("utf8"),
        "new\n"
    );
}

#[test]
fn a_repository_added_later_is_found_without_restart() {
    let store = tempfile::tempdir().expect("store");
    let seed = fixture::store().join("org/lib.git");
    let copy = |name: &str| {
        git(
            store.path(),
            &["clone", "-q", "--bare", seed.to_str().expect("utf8"), name],
        );
    };
    copy("first.git");
    let server = GitNfsd::start(store.path());
    let mut c = RpcClient::connect(server.addr);
    assert_eq!(c.mount("/second").err(), Some(2));
    copy("second.git");
    // Rescans are rate limited to one a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.mount("/second").expect("the new repository mounts");
}
