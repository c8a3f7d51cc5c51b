//! git-nfsd against an independent client: `nfs-ls` and `nfs-cat` from
//! libnfs-utils. Every listed name, type, mode and size is compared with
//! `git ls-tree`, and file bytes with `git cat-file`.

use std::collections::BTreeMap;
use std::path::Path;

use integration::fixture::{self, TreeEntry, git, ls_tree};
use integration::libnfs::{self, Listed};
use integration::server::GitNfsd;

fn expected_mode(e: &TreeEntry) -> &'static str {
    match e.mode.as_str() {
        "040000" | "160000" => "drwxr-xr-x",
        "100755" => "-rwxr-xr-x",
        "120000" => "lrwxrwxrwx",
        _ => "-rw-r--r--",
    }
}

fn assert_listing_matches(server: &GitNfsd, export: &str, repo: &Path, rev: &str) {
    let listed = libnfs::ls_tree(|p| server.url(p), export).expect("nfs-ls");
    let mut got: BTreeMap<Vec<u8>, Listed> = BTreeMap::new();
    // Every export carries a synthesized .git (tested in the git tests).
    let (dotgit, listed): (Vec<Listed>, Vec<Listed>) = listed
        .into_iter()
        .partition(|l| l.path == b".git" || l.path.starts_with(b".git/"));
    assert!(
        dotgit.iter().any(|l| l.path == b".git/HEAD"),
        "{export} has .git/HEAD"
    );
    assert!(
        dotgit.iter().any(|l| l.path == b".git/index"),
        "{export} has .git/index"
    );
    for l in listed {
        let path = l.path.clone();
        assert!(
            got.insert(path.clone(), l).is_none(),
            "{} listed twice",
            String::from_utf8_lossy(&path)
        );
    }
    let expected = ls_tree(repo, rev);
    assert_eq!(got.len(), expected.len(), "entry count of {export}");
    for e in &expected {
        let name = String::from_utf8_lossy(&e.path);
        let l = got
            .get(&e.path)
            .unwrap_or_else(|| panic!("{name} missing from {export}"));
        assert_eq!(l.mode, expected_mode(e), "mode of {name}");
        let size = e.size.unwrap_or(4096);
        assert_eq!(l.size, size, "size of {name}");
        assert_eq!((l.uid, l.gid), (0, 0), "owner of {name}");
    }
}

#[test]
fn listings_match_git_ls_tree_for_branches_tags_and_loose_objects() {
    let store = fixture::store();
    let app = store.join("app.git");
    let server = GitNfsd::start(store);
    assert_listing_matches(&server, "/app", &app, "HEAD");
    assert_listing_matches(&server, "/app@main", &app, "main");
    assert_listing_matches(
        &server,
        "/app@feature/nested-name",
        &app,
        "feature/nested-name",
    );
    assert_listing_matches(&server, "/app@v1.0", &app, "v1.0");
    assert_listing_matches(&server, "/app@light-tag", &app, "light-tag");
    let short = String::from_utf8(git(&app, &["rev-parse", "--short", "main"])).expect("utf8");
    assert_listing_matches(&server, &format!("/app@{}", short.trim()), &app, "main");
    // org/lib.git keeps its objects loose.
    assert_listing_matches(&server, "/org/lib", &store.join("org/lib.git"), "HEAD");
}

#[test]
fn file_bytes_match_git_cat_file() {
    let store = fixture::store();
    let app = store.join("app.git");
    let server = GitNfsd::start(store);
    let blobs: Vec<TreeEntry> = ls_tree(&app, "main")
        .into_iter()
        .filter(|e| e.kind == "blob" && e.mode != "120000")
        // Every file outside the 20,000-entry folder, and every 97th inside it.
        .filter(|e| {
            !e.path.starts_with(b"many/")
                || e.path.ends_with(b"7") && e.path[e.path.len() - 3] == b'9'
        })
        .collect();
    assert!(blobs.len() > 30, "fixture has the files it should");
    for e in &blobs {
        let name = String::from_utf8_lossy(&e.path);
        // libnfs takes the path as raw bytes, without percent-decoding.
        let url = server.url(&format!("/app/{name}"));
        let got = libnfs::cat(&url).unwrap_or_else(|err| panic!("nfs-cat {name}: {err}"));
        let want = git(&app, &["cat-file", "blob", &e.oid]);
        assert!(
            got == want,
            "bytes of {name} differ ({} vs {} bytes)",
            got.len(),
            want.len()
        );
    }
    // The 20 MB file was among them, and every byte READ was counted.
    let read = server.metric("gitnfsd_read_bytes_total{name=\"worktree\"}");
    assert!(read >= 20_000_000.0, "READ bytes counted: {read}");
}

#[test]
fn the_root_lists_the_repositories() {
    let store = fixture::store();
    let server = GitNfsd::start(store);
    let listed = libnfs::ls(&server.url("/"), false).expect("nfs-ls of /");
    let org = libnfs::ls(&server.url("/org"), false).expect("nfs-ls of /org");
    let names = |l: &[Listed]| -> Vec<String> {
        let mut v: Vec<String> = l
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&listed), ["app", "org"]);
    assert_eq!(names(&org), ["lib"]);
    // Repositories under / show their HEAD worktree.
    let app = libnfs::ls(&server.url("/app"), false).expect("nfs-ls of /app");
    assert!(app.iter().any(|l| l.path == b"README.md"));
}

#[test]
fn unknown_repository_or_revision_is_a_mount_error() {
    let server = GitNfsd::start(fixture::store());
    for export in ["/nope", "/app@no-such-branch", "/app@0000000", "/org/nope"] {
        let err = libnfs::ls(&server.url(export), false).expect_err(export);
        assert!(err.contains("MNT3ERR_NOENT"), "{export}: {err}");
    }
}

#[test]
fn uid_and_gid_flags_own_every_file() {
    let store = fixture::store();
    let server = GitNfsd::start_with(store, "127.0.0.1:0", &["--uid", "1000", "--gid", "1001"]);
    let listed = libnfs::ls(&server.url("/app/src"), true).expect("nfs-ls");
    assert!(!listed.is_empty());
    for l in listed {
        assert_eq!((l.uid, l.gid), (1000, 1001));
    }
}

/// A blob larger than the memory cache is decoded once into the spill
/// folder and read from there: its bytes match git's, and it was decoded
/// once, not once per READ.
#[test]
fn blobs_larger_than_the_cache_are_spilled_and_decoded_once() {
    let store = fixture::store();
    let app = store.join("app.git");
    let spill = tempfile::tempdir().unwrap();
    // 2 MiB of cache: 1 MiB for blobs, so the 20 MB file is spilled.
    let server = GitNfsd::start_with(
        store,
        "127.0.0.1:0",
        &[
            "--cache-bytes",
            "2097152",
            "--spill-dir",
            spill.path().to_str().unwrap(),
        ],
    );
    let big = ls_tree(&app, "main")
        .into_iter()
        .filter(|e| e.kind == "blob")
        .max_by_key(|e| e.size)
        .unwrap();
    let size = big.size.unwrap();
    assert!(size > 10_000_000, "the fixture's big file: {big:?}");
    let name = String::from_utf8_lossy(&big.path).into_owned();
    let want = git(&app, &["cat-file", "blob", &big.oid]);
    for _ in 0..2 {
        let got = libnfs::cat(&server.url(&format!("/app/{name}"))).unwrap();
        assert!(got == want, "bytes of {name} differ");
    }
    let decoded = server.metric("gitnfsd_blob_decoded_bytes_total");
    assert!(
        decoded < 2.0 * size as f64,
        "decoded {decoded} bytes for two reads of a {size}-byte file"
    );
    // The spilled copy is in a folder of the server's own.
    let spilled: Vec<_> = std::fs::read_dir(spill.path())
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(spilled, [size], "one spilled file, the whole blob");
}
