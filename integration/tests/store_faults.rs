//! The store changing under mounted exports: an export keeps serving the
//! same bytes, new mounts see the new state.

use std::path::Path;

use integration::client::RpcClient;
use integration::fixture::{self, git};
use integration::server::GitNfsd;

const IDENTITY: [&str; 4] = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"];

fn commit_file(work: &Path, name: &str, content: &[u8]) {
    std::fs::write(work.join(name), content).expect("write");
    git(work, &["add", "."]);
    git(
        work,
        &[&IDENTITY[..], &["commit", "-q", "-m", name]].concat(),
    );
    git(work, &["push", "-q", "origin", "main"]);
}

/// `git gc --prune=now` deletes the packs a mounted export lists in its
/// `.git/objects/pack`; the export still reads them (and its files) byte
/// for byte, while a new mount lists the new packs and sees the new commit.
#[test]
fn a_repack_does_not_change_a_mounted_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let bare = store.join("app.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = dir.path().join("work");
    git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), "work"]);
    let first: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    commit_file(&work, "first.bin", &first);
    git(&bare, &["repack", "-q", "-a", "-d"]);

    let server = GitNfsd::start(&store);
    let mut client = RpcClient::connect(server.addr);
    let root = client.mount("/app@main").unwrap();
    let pack_dir = client.walk(&root, ".git/objects/pack").unwrap();
    let names: Vec<String> = client
        .readdir_all(&pack_dir, 4096)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let pack = client.lookup(&pack_dir, names[0].as_bytes()).unwrap();
    let pack_before = client.read_all(&pack, 65536).unwrap();
    assert_eq!(
        pack_before,
        std::fs::read(bare.join("objects/pack").join(&names[0])).unwrap()
    );

    // A new commit, then a repack that deletes the old pack.
    commit_file(&work, "second.txt", b"second\n");
    git(&bare, &["gc", "-q", "--prune=now"]);
    assert!(
        !bare.join("objects/pack").join(&names[0]).exists(),
        "gc replaced the pack"
    );

    // The mounted export: the same pack bytes, the same file.
    assert_eq!(client.read_all(&pack, 65536).unwrap(), pack_before);
    let file = client.walk(&root, "first.bin").unwrap();
    assert_eq!(client.read_all(&file, 65536).unwrap(), first);
    assert!(client.walk(&root, "second.txt").is_err(), "pinned commit");

    // A new mount sees the new commit and lists the new pack.
    let mut fresh = RpcClient::connect(server.addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let new_root = loop {
        let root = fresh.mount("/app@main").unwrap();
        if fresh.walk(&root, "second.txt").is_ok() {
            break root;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new commit never seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let new_pack_dir = fresh.walk(&new_root, ".git/objects/pack").unwrap();
    let new_names: Vec<Vec<u8>> = fresh
        .readdir_all(&new_pack_dir, 4096)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(!new_names.contains(&names[0].clone().into_bytes()));
    let file = fresh.walk(&new_root, "first.bin").unwrap();
    assert_eq!(fresh.read_all(&file, 65536).unwrap(), first);
}

/// A store of two repositories, each with one commit, fully packed.
fn two_repo_store(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store");
    for (name, file, content) in [
        ("app", "app.txt", b"app\n".as_slice()),
        ("lib", "lib.txt", b"lib\n".as_slice()),
    ] {
        let bare = store.join(format!("{name}.git"));
        std::fs::create_dir_all(&bare).expect("store");
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = dir.join(format!("work-{name}"));
        git(
            dir,
            &[
                "clone",
                "-q",
                bare.to_str().expect("UTF-8"),
                work.to_str().expect("UTF-8"),
            ],
        );
        commit_file(&work, file, content);
        git(&bare, &["repack", "-q", "-a", "-d"]);
    }
    store
}

/// 300 KB of pseudo-random bytes: large enough for its own pack entry,
/// and stored by zlib as is.
fn incompressible() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A pack corrupted in place (same size, bytes flipped inside one blob's
/// compressed data): reading that blob answers NFS3ERR_IO, never wrong
/// bytes, and every other file of the same pack is still served.
#[test]
fn a_pack_corrupted_in_place_fails_only_the_damaged_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_repo_store(dir.path());
    let bare = store.join("app.git");
    // Incompressible, so zlib stores it in stored blocks: only the stream's
    // checksum can tell the flipped bytes.
    commit_file(
        &dir.path().join("work-app"),
        "damaged.bin",
        &incompressible(),
    );
    git(&bare, &["repack", "-q", "-a", "-d"]);
    let entry = fixture::pack_entry(&bare, "main:damaged.bin").unwrap();
    let pack = &fixture::packs(&bare)[entry.pack];

    let server = GitNfsd::start(&store);
    let mut client = RpcClient::connect(server.addr);
    let root = client.mount("/app@main").unwrap();
    let damaged_fh = client.walk(&root, "damaged.bin").unwrap();
    let app_fh = client.walk(&root, "app.txt").unwrap();
    // Flip 16 bytes in the middle of the blob's data, before it was read.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(pack).unwrap();
        file.seek(SeekFrom::Start(entry.offset + entry.size_in_pack / 2))
            .unwrap();
        file.write_all(&[0x5a; 16]).unwrap();
    }
    let status = client.read_all(&damaged_fh, 65536).unwrap_err();
    assert_eq!(format!("{status:?}"), "NFS3ERR_IO");
    assert_eq!(client.read_all(&app_fh, 4096).unwrap(), b"app\n");
    let mut other = RpcClient::connect(server.addr);
    let lib = other.mount("/lib@main").unwrap();
    let lib_file = other.walk(&lib, "lib.txt").unwrap();
    assert_eq!(other.read_all(&lib_file, 4096).unwrap(), b"lib\n");
}

/// A repository deleted from the store: its mounted export answers STALE,
/// a new mount of it fails cleanly, and the other repository is untouched.
#[test]
fn a_deleted_repository_is_stale_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_repo_store(dir.path());
    let server = GitNfsd::start(&store);
    let mut client = RpcClient::connect(server.addr);
    let app = client.mount("/app@main").unwrap();
    let lib = client.mount("/lib@main").unwrap();
    let lib_file = client.walk(&lib, "lib.txt").unwrap();
    assert_eq!(client.read_all(&lib_file, 4096).unwrap(), b"lib\n");

    std::fs::remove_dir_all(store.join("lib.git")).unwrap();
    // The store is rescanned at most once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match client.getattr(&lib) {
            Err(status) => {
                assert_eq!(format!("{status:?}"), "NFS3ERR_STALE");
                break;
            }
            Ok(_) => {
                assert!(std::time::Instant::now() < deadline, "never went stale");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    assert!(client.mount("/lib@main").is_err(), "unknown repository now");
    let app_file = client.walk(&app, "app.txt").unwrap();
    assert_eq!(client.read_all(&app_file, 4096).unwrap(), b"app\n");
    let mut fresh = RpcClient::connect(server.addr);
    assert!(fresh.mount("/app@main").is_ok());
}

/// `two_repo_store` with `doomed.bin` (incompressible) committed to app
/// and packed on its own: the store and that pack.
fn store_with_a_doomed_pack(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = two_repo_store(dir);
    let bare = store.join("app.git");
    commit_file(&dir.join("work-app"), "doomed.bin", &incompressible());
    git(&bare, &["repack", "-q", "-d"]);
    let newest = fixture::packs(&bare)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("app has packs");
    (store, newest)
}

/// Truncates `file` to half its length, in place.
fn cut_in_half(file: &Path) {
    let len = std::fs::metadata(file).expect("the pack").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncating the pack");
}

/// A pack truncated under the server: gix reads packs through a memory
/// map, where a truncated file would kill the process (SIGBUS). The server
/// notices the shorter pack first: reads of the objects in it answer
/// NFS3ERR_IO (one log line), the server keeps running, and objects of
/// the repository's other packs and other repositories are served.
#[test]
fn a_truncated_pack_fails_only_its_own_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (store, doomed_pack) = store_with_a_doomed_pack(dir.path());

    let mut server = GitNfsd::start(&store);
    let mut client = RpcClient::connect(server.addr);
    let root = client.mount("/app@main").unwrap();
    let doomed_fh = client.walk(&root, "doomed.bin").unwrap();
    // Cut the pack holding doomed.bin in half, before it was ever read.
    cut_in_half(&doomed_pack);

    let status = client.read_all(&doomed_fh, 65536).unwrap_err();
    assert_eq!(format!("{status:?}"), "NFS3ERR_IO");
    assert!(
        server.is_running(),
        "the server survived the truncated pack"
    );
    let mut other = RpcClient::connect(server.addr);
    let lib = other.mount("/lib@main").unwrap();
    let lib_file = other.walk(&lib, "lib.txt").unwrap();
    assert_eq!(other.read_all(&lib_file, 4096).unwrap(), b"lib\n");
}

#[test]
fn an_index_built_after_a_pack_was_truncated_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, doomed_pack) = store_with_a_doomed_pack(dir.path());

    let mut server = GitNfsd::start(&store);
    let mut client = RpcClient::connect(server.addr);
    // MOUNT walks the trees; no blob size has been read yet.
    let root = client.mount("/app@main").unwrap();
    cut_in_half(&doomed_pack);

    // The index needs every blob's size, doomed.bin's among them.
    let status = match client.walk(&root, ".git/index") {
        Ok(index) => client.read_all(&index, 65536).unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(format!("{status:?}"), "NFS3ERR_IO");
    assert!(server.is_running(), "the server survived the index build");
    // Objects of the intact pack still read.
    let app = client.walk(&root, "app.txt").unwrap();
    assert_eq!(client.read_all(&app, 4096).unwrap(), b"app\n");
}
