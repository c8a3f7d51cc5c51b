//! File handles survive restarts and are the same on every server with the
//! same store; a mounted export stays pinned to its commit while the branch
//! moves.

use std::path::Path;
use std::process::Command;

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

fn commit_in(repo: &Path, file: &str, text: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let clone = work.path().join("c");
    let run = |args: &[&str], dir: &Path| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t.invalid")
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    run(
        &["clone", "-q", repo.to_str().expect("utf8"), "c"],
        work.path(),
    );
    std::fs::write(clone.join(file), text).expect("write");
    run(&["add", file], &clone);
    run(&["commit", "-qm", "move the branch"], &clone);
    run(&["push", "-q", "origin", "HEAD:main"], &clone);
}

#[test]
fn a_mounted_export_stays_pinned_when_the_branch_moves() {
    let store = tempfile::tempdir().expect("store");
    let repo = store.path().join("pin.git");
    let src = tempfile::tempdir().expect("src");
    let run = |args: &[&str]| {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(src.path())
                .status()
                .expect("git")
                .success()
        );
    };
    run(&["init", "-q", "-b", "main", "."]);
    std::fs::write(src.path().join("state.txt"), "old\n").expect("write");
    run(&["add", "state.txt"]);
    run(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t.invalid",
        "commit",
        "-qm",
        "old",
    ]);
    run(&["clone", "-q", "--bare", ".", repo.to_str().expect("utf8")]);

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
        assert!(
            Command::new("git")
                .args(["clone", "-q", "--bare", seed.to_str().expect("utf8")])
                .arg(store.path().join(name))
                .status()
                .expect("git clone")
                .success()
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
