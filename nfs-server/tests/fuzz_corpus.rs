//! Replays every checked-in fuzz input (the seed corpora and the crashes
//! fuzzing found, in `nfs-server/fuzz/{corpus,regressions}/<target>/`)
//! through the fuzz targets' entry points, on the stable toolchain.

use std::path::{Path, PathBuf};

use nfs_server::fuzzing::{CallHarness, export_path, record_stream};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut found = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            found.push((path, bytes));
        }
    }
    found.sort();
    found
}

#[test]
fn record_stream_inputs() {
    let inputs = inputs("record_stream");
    assert!(inputs.len() >= 3, "seed corpus missing");
    for (_, bytes) in inputs {
        record_stream(&bytes);
    }
}

#[test]
fn export_path_inputs() {
    let inputs = inputs("export_path");
    assert!(inputs.len() >= 5, "seed corpus missing");
    for (_, bytes) in inputs {
        export_path(&bytes);
    }
}

/// Seeds that reach real nodes and must succeed: the corpus starts deep.
const SUCCEED: &[&str] = &[
    "getattr",
    "getattr_namespace",
    "lookup",
    "lookup_dotdot",
    "lookup_dotgit",
    "access",
    "readlink",
    "read",
    "read_index",
    "readdir",
    "readdirplus",
    "readdirplus_dotgit",
    "fsstat",
    "fsinfo",
    "pathconf",
    "mnt",
    "mnt_folder",
    "mnt_root",
    "getacl",
];
const REFUSED_AS_READ_ONLY: &[&str] = &[
    "setattr", "write", "create", "mkdir", "symlink", "mknod", "remove", "rmdir", "rename", "link",
];

#[test]
fn rpc_call_inputs_are_all_answered() {
    let harness = CallHarness::new().unwrap();
    let inputs = inputs("rpc_call");
    assert!(inputs.len() >= 30, "seed corpus missing");
    let mut answered = 0;
    for (path, bytes) in &inputs {
        let name = path.file_name().unwrap().to_string_lossy();
        let reply = harness.call(bytes);
        if let Some(seed) = name.strip_prefix("seed-") {
            // Seeds are well-formed calls: each gets an accepted reply.
            let reply = reply.unwrap_or_else(|| panic!("{name}: no reply"));
            // REPLY, MSG_ACCEPTED, null verifier, SUCCESS.
            assert_eq!(
                reply[4..24],
                [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "{name}: not accepted"
            );
            answered += 1;
            let status = reply
                .get(24..28)
                .map(|w| u32::from_be_bytes(w.try_into().unwrap()));
            if SUCCEED.contains(&seed) {
                assert_eq!(status, Some(0), "{name}: failed");
            }
            if REFUSED_AS_READ_ONLY.contains(&seed) {
                assert_eq!(status, Some(30), "{name}: not NFS3ERR_ROFS");
            }
        }
    }
    assert!(answered >= 30);
}

/// The checked-in seeds still name real nodes: the fixture (and so its
/// handles) has not drifted from what the seeds were made with.
#[test]
fn checked_in_seeds_match_the_fixture() {
    let harness = CallHarness::new().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rpc_call");
    for (name, bytes) in harness.seed_calls().unwrap() {
        let saved = std::fs::read(dir.join(format!("seed-{name}"))).unwrap();
        assert_eq!(
            saved, bytes,
            "seed-{name} is stale: rerun the fuzz-seeds example"
        );
    }
}
