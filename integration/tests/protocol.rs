//! Protocol behaviour checked with a minimal RPC client over real sockets:
//! directory paging, symlinks, read-only answers, NFSACL, portmapper and
//! MOUNT's EXPORT list.

use std::collections::BTreeSet;

use integration::client::{NFSACL, PORTMAP, RpcClient, pack, unpack};
use integration::fixture;
use integration::server::GitNfsd;
use nfs3_types::mount::exports;
use nfs3_types::nfs3::{
    ACCESS3_EXECUTE, ACCESS3_LOOKUP, ACCESS3_MODIFY, ACCESS3_READ, ACCESS3args, ACCESS3res,
    Nfs3Result, READLINK3args, READLINK3res, REMOVE3args, REMOVE3res, WRITE3args, WRITE3res,
    diropargs3, filename3, ftype3, nfsstat3, stable_how,
};
use nfs3_types::portmap::mapping;
use nfs3_types::xdr_codec::Opaque;

fn many_names() -> BTreeSet<Vec<u8>> {
    let mut names: BTreeSet<Vec<u8>> = (0..20_000)
        .map(|i| format!("f{i:05}").into_bytes())
        .collect();
    names.insert(b".".to_vec());
    names.insert(b"..".to_vec());
    names
}

#[test]
fn readdir_lists_20000_entries_exactly_once_at_any_page_size() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let many = c.walk(&root, "many").expect("lookup many");
    let want = many_names();
    for count in [600, 1024, 4096, 8192, 65_536, 1 << 20] {
        let listing = c.readdir_all(&many, count).expect("READDIR");
        let names: Vec<Vec<u8>> = listing.entries.iter().map(|e| e.name.clone()).collect();
        let unique: BTreeSet<Vec<u8>> = names.iter().cloned().collect();
        assert_eq!(names.len(), unique.len(), "duplicates at count {count}");
        assert_eq!(unique, want, "entries at count {count}");
        let cookies: BTreeSet<u64> = listing.entries.iter().map(|e| e.cookie).collect();
        assert_eq!(
            cookies.len(),
            names.len(),
            "cookies are distinct at count {count}"
        );
        if count <= 8192 {
            assert!(
                listing.pages > 10,
                "count {count} took {} pages",
                listing.pages
            );
        }
    }
}

#[test]
fn readdirplus_lists_20000_entries_exactly_once_with_attributes() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let many = c.walk(&root, "many").expect("lookup many");
    let want = many_names();
    for (dircount, maxcount) in [
        (512, 4096),
        (4096, 8192),
        (8192, 32_768),
        (65_536, 1 << 20),
        (100, 100_000),
    ] {
        let listing = c
            .readdirplus_all(&many, dircount, maxcount)
            .expect("READDIRPLUS");
        let names: Vec<Vec<u8>> = listing.entries.iter().map(|e| e.name.clone()).collect();
        let unique: BTreeSet<Vec<u8>> = names.iter().cloned().collect();
        assert_eq!(
            names.len(),
            unique.len(),
            "duplicates at {dircount}/{maxcount}"
        );
        assert_eq!(unique, want, "entries at {dircount}/{maxcount}");
        for e in &listing.entries {
            let attrs = e.attrs.as_ref().expect("attributes in READDIRPLUS");
            assert!(e.fh.is_some(), "handle in READDIRPLUS");
            if e.name.starts_with(b"f") {
                assert_eq!(attrs.type_, ftype3::NF3REG);
                assert_eq!(
                    attrs.size,
                    6,
                    "size of {:?}",
                    String::from_utf8_lossy(&e.name)
                );
            }
        }
    }
}

#[test]
fn tiny_pages_answer_toosmall_and_stale_cookies_are_refused() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    assert_eq!(
        c.readdir_all(&root, 50).err(),
        Some(nfsstat3::NFS3ERR_TOOSMALL)
    );
    // A cookie past the end of the directory with a wrong verifier.
    let args = nfs3_types::nfs3::READDIR3args {
        dir: root.clone(),
        cookie: 9_999_999,
        cookieverf: nfs3_types::nfs3::cookieverf3([1; 8]),
        count: 4096,
    };
    match c.nfs::<_, nfs3_types::nfs3::READDIR3res>(16, &args) {
        Nfs3Result::Err((status, _)) => assert_eq!(status, nfsstat3::NFS3ERR_BAD_COOKIE),
        Nfs3Result::Ok(_) => panic!("stale cookie accepted"),
    }
}

#[test]
fn files_symlinks_and_nesting_read_back_exactly() {
    let store = fixture::store();
    let app = store.join("app.git");
    let server = GitNfsd::start(store);
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");

    // Symlink targets through READLINK.
    for (link, target) in [
        ("link-to-readme", "README.md"),
        ("dangling-link", "does/not/exist"),
        ("bin/main-link", "../src/main.rs"),
    ] {
        let fh = c.walk(&root, link).expect("lookup link");
        assert_eq!(c.getattr(&fh).expect("getattr").type_, ftype3::NF3LNK);
        let res: READLINK3res = c.nfs(5, &READLINK3args { symlink: fh });
        match res {
            Nfs3Result::Ok(ok) => assert_eq!(ok.data.0.as_ref(), target.as_bytes()),
            Nfs3Result::Err((s, _)) => panic!("READLINK {link}: {s}"),
        }
    }

    // 30 levels down.
    let mut deep = String::from("deep");
    for i in 1..=30 {
        deep.push_str(&format!("/level{i:02}"));
    }
    let leaf = c
        .walk(&root, &format!("{deep}/leaf.txt"))
        .expect("deep leaf");
    assert_eq!(c.read_all(&leaf, 4096).expect("read"), b"bottom\n");
    let up = c.walk(&root, &format!("{deep}/..")).expect("..");
    let parent = c.walk(&root, &deep[..deep.len() - 8]).expect("parent");
    assert_eq!(
        c.getattr(&up).expect("getattr ..").fileid,
        c.getattr(&parent).expect("getattr").fileid
    );

    // The 20 MB file, in odd-sized READs, equals the blob.
    let big = c.walk(&root, "big/random.bin").expect("big file");
    let attrs = c.getattr(&big).expect("getattr");
    assert_eq!(attrs.size, 20_000_000);
    let bytes = c.read_all(&big, 777_777).expect("read big");
    assert!(bytes == fixture::git(&app, &["cat-file", "blob", "main:big/random.bin"]));
    // Reads past the end are empty with eof; absurd counts are clamped.
    assert_eq!(
        c.read(&big, 30_000_000, 10).expect("read past end"),
        (vec![], true)
    );
    let (data, _) = c.read(&big, 0, u32::MAX).expect("huge count");
    assert_eq!(data.len(), 1 << 20);

    // The gitlink is an empty directory; executables keep their bit.
    let sub = c.walk(&root, "vendor/sub").expect("gitlink");
    assert_eq!(c.getattr(&sub).expect("getattr").type_, ftype3::NF3DIR);
    assert_eq!(
        c.readdir_all(&sub, 4096)
            .expect("list gitlink")
            .entries
            .len(),
        2
    );
    let run = c.walk(&root, "bin/run.sh").expect("executable");
    assert_eq!(c.getattr(&run).expect("getattr").mode, 0o755);
    let empty = c.walk(&root, "empty").expect("empty file");
    assert_eq!(c.read_all(&empty, 4096).expect("read empty"), b"");

    // Errors: missing names, reading a directory, READLINK of a file.
    assert_eq!(
        c.lookup(&root, b"nope").err(),
        Some(nfsstat3::NFS3ERR_NOENT)
    );
    assert_eq!(c.lookup(&run, b"x").err(), Some(nfsstat3::NFS3ERR_NOTDIR));
    assert_eq!(
        c.lookup(&root, &[b'x'; 300]).err(),
        Some(nfsstat3::NFS3ERR_NAMETOOLONG)
    );
    assert_eq!(c.read(&root, 0, 10).err(), Some(nfsstat3::NFS3ERR_ISDIR));
    let res: READLINK3res = c.nfs(5, &READLINK3args { symlink: run });
    assert!(matches!(res, Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, _))));
}

#[test]
fn timestamps_are_the_committer_time() {
    let store = fixture::store();
    let server = GitNfsd::start(store);
    let mut c = RpcClient::connect(server.addr);
    let main = c.mount("/app").expect("mount main");
    let feature = c.mount("/app@feature/nested-name").expect("mount feature");
    // 2024-01-02T03:04:05Z and 2024-02-03T04:05:06Z.
    for (root, secs) in [(main, 1_704_164_645), (feature, 1_706_933_106)] {
        let readme = c.walk(&root, "README.md").expect("readme");
        let a = c.getattr(&readme).expect("getattr");
        assert_eq!(
            (a.mtime.seconds, a.ctime.seconds, a.atime.seconds),
            (secs, secs, secs)
        );
    }
}

/// `/app@<branch>:<commit>`: the commit's tree, with HEAD on the branch
/// and the branch at that commit, whatever the branch names in the store.
#[test]
fn a_branch_pinned_at_a_commit_mounts_that_commit_with_the_branch_as_head() {
    let store = fixture::store();
    let app = store.join("app.git");
    let rev = |r: &str| String::from_utf8(fixture::git(&app, &["rev-parse", r])).unwrap();
    let (main, tag) = (rev("main"), rev("v1.0"));
    let (main, tag) = (main.trim(), tag.trim());
    let server = GitNfsd::start(store);
    let mut c = RpcClient::connect(server.addr);
    let root = c
        .mount(&format!("/app@feature/nested-name:{main}"))
        .expect("mount the feature branch pinned at main's commit");
    assert!(
        c.walk(&root, "feature.txt").is_err(),
        "the tree is main's, not the feature branch's"
    );
    let head = c.walk(&root, ".git/HEAD").unwrap();
    assert_eq!(
        c.read_all(&head, 4096).unwrap(),
        b"ref: refs/heads/feature/nested-name\n"
    );
    let packed = c.walk(&root, ".git/packed-refs").unwrap();
    let packed = String::from_utf8(c.read_all(&packed, 1 << 20).unwrap()).unwrap();
    assert!(
        packed.contains(&format!("{main} refs/heads/feature/nested-name\n")),
        "{packed}"
    );
    // The same commit by branch: the same export, so the same handles.
    let by_branch = c.mount("/app@main").unwrap();
    let pinned_main = c.mount(&format!("/app@main:{main}")).unwrap();
    assert_eq!(by_branch, pinned_main);
    // A folder after the pin.
    let inside = c.mount(&format!("/app@main:{main}/src")).unwrap();
    assert_eq!(inside, c.walk(&by_branch, "src").unwrap());

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    for (path, status) in [
        (format!("/app@main:{unknown}"), 2),
        (format!("/app@main:{tag}"), 2),
        (format!("/nope@main:{main}"), 2),
        (format!("/app@main:{}", &main[..12]), 13),
        (format!("/app@main~1:{main}"), 13),
    ] {
        assert_eq!(c.mount(&path).err(), Some(status), "MOUNT {path}");
    }
}

#[test]
fn mutating_procedures_answer_read_only() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let readme = c.walk(&root, "README.md").expect("readme");
    let res: WRITE3res = c.nfs(
        7,
        &WRITE3args {
            file: readme.clone(),
            offset: 0,
            count: 3,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(b"abc"),
        },
    );
    assert!(matches!(res, Nfs3Result::Err((nfsstat3::NFS3ERR_ROFS, _))));
    let res: REMOVE3res = c.nfs(
        12,
        &REMOVE3args {
            object: diropargs3 {
                dir: root.clone(),
                name: filename3(Opaque::borrowed(b"README.md")),
            },
        },
    );
    assert!(matches!(res, Nfs3Result::Err((nfsstat3::NFS3ERR_ROFS, _))));
    // ACCESS never grants modification.
    let res: ACCESS3res = c.nfs(
        4,
        &ACCESS3args {
            object: root.clone(),
            access: ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXECUTE,
        },
    );
    match res {
        Nfs3Result::Ok(ok) => assert_eq!(ok.access, ACCESS3_READ | ACCESS3_LOOKUP),
        Nfs3Result::Err((s, _)) => panic!("ACCESS: {s}"),
    }
    // The file is unchanged.
    assert!(
        c.read_all(&readme, 4096)
            .expect("read")
            .starts_with(b"# Fixture")
    );
}

#[test]
fn nfsacl_getacl_answers_the_mode_and_setacl_is_read_only() {
    let server = GitNfsd::start_with(
        fixture::store(),
        "127.0.0.1:0",
        &["--uid", "1000", "--gid", "1000"],
    );
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let run = c.walk(&root, "bin/run.sh").expect("executable");
    let mut args = pack(&run);
    args.extend_from_slice(&0xfu32.to_be_bytes());
    let body = c.call(NFSACL, 3, 1, &args).expect("GETACL accepted");
    let words: Vec<u32> = body
        .chunks(4)
        .map(|w| u32::from_be_bytes(w.try_into().expect("word")))
        .collect();
    assert_eq!(words[0], 0, "NFS3_OK");
    assert_eq!(words[1], 1, "attributes follow");
    let rest = &words[2 + 21..];
    assert_eq!(rest[0], 0xf, "mask echoed");
    // Three access entries: owner rwx, group r-x, other r-x; no default ACL.
    assert_eq!(&rest[1..3], &[3, 3]);
    assert_eq!(&rest[3..12], &[0x01, 1000, 7, 0x04, 1000, 5, 0x20, 0, 5]);
    assert_eq!(&rest[12..], &[0, 0]);

    let mut set = pack(&run);
    set.extend_from_slice(&[0; 20]);
    let body = c.call(NFSACL, 3, 2, &set).expect("SETACL accepted");
    assert_eq!(&body[..4], &30u32.to_be_bytes(), "NFS3ERR_ROFS");
}

#[test]
fn portmapper_getport_points_at_the_one_port() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let ask = |c: &mut RpcClient, prog, vers, prot| {
        let body = c
            .call(
                PORTMAP,
                2,
                3,
                &pack(&mapping {
                    prog,
                    vers,
                    prot,
                    port: 0,
                }),
            )
            .expect("GETPORT");
        u32::from_be_bytes(body[..4].try_into().expect("port"))
    };
    let port = u32::from(server.port());
    assert_eq!(ask(&mut c, 100_003, 3, 6), port);
    assert_eq!(ask(&mut c, 100_005, 3, 6), port);
    assert_eq!(ask(&mut c, 100_227, 3, 6), port);
    assert_eq!(ask(&mut c, 100_003, 3, 17), 0, "no UDP");
    assert_eq!(ask(&mut c, 100_003, 4, 6), 0, "no NFSv4");
}

#[test]
fn mount_export_lists_repositories_and_refuses_escapes() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let body = c.call(100_005, 3, 5, &[]).expect("EXPORT");
    let list: exports = unpack(&body);
    let dirs: Vec<String> = list
        .0
        .iter()
        .map(|e| String::from_utf8_lossy(&e.ex_dir.0).into_owned())
        .collect();
    assert_eq!(dirs, ["/app", "/org/lib"]);
    for (path, status) in [
        ("/../etc", 13),
        ("/app/../../etc", 13),
        ("app", 13),
        ("//app", 13),
        ("/app@main:README.md", 13),
        ("/nope", 2),
        ("/app@nope", 2),
        ("/app/README.md", 20),
        ("/app/no-such-folder", 2),
    ] {
        assert_eq!(c.mount(path).err(), Some(status), "MOUNT {path}");
    }
}
