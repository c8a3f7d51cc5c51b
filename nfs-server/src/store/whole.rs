//! Copying a blob that is stored whole (a loose object, or a pack entry
//! that is not a delta) into a writer, inflating as it goes, so that a
//! blob of gigabytes never sits in memory.
//!
//! gix decodes an object into one buffer. That is right for deltas, which
//! need their base in memory anyway, but git never deltifies files above
//! `core.bigFileThreshold` (512 MiB), so the largest blobs are exactly the
//! ones stored whole, and those are streamed here. Pack files are read
//! with ordinary reads, not through a memory map: a pack truncated under
//! us ends the copy with an error rather than a SIGBUS.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use flate2::bufread::ZlibDecoder;
use gix::ObjectId;
use gix::odb::pack;

/// Copies blob `oid` from the object folder `objects` into `out`.
/// Returns its size, or `None` when it is not stored whole here (a delta,
/// an alternate, or not a blob): the caller then decodes it with gix.
pub fn copy_whole_blob(
    objects: &Path,
    oid: ObjectId,
    out: &mut impl Write,
) -> io::Result<Option<u64>> {
    if let Some(size) = copy_loose(objects, oid, out)? {
        return Ok(Some(size));
    }
    copy_packed(objects, oid, out)
}

fn copy_loose(objects: &Path, oid: ObjectId, out: &mut impl Write) -> io::Result<Option<u64>> {
    let hex = oid.to_string();
    let path = objects.join(&hex[..2]).join(&hex[2..]);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut inflated = BufReader::new(ZlibDecoder::new(BufReader::new(file)));
    // The header: "<kind> <size>\0".
    let mut header = Vec::with_capacity(32);
    inflated.by_ref().take(64).read_until(0, &mut header)?;
    let header = header
        .strip_suffix(b"\0")
        .ok_or_else(|| invalid(&path, "loose object header does not end"))?;
    let Some(size) = header.strip_prefix(b"blob ") else {
        return Ok(None);
    };
    let size: u64 = std::str::from_utf8(size)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(&path, "loose object size is not a number"))?;
    copy_exactly(&mut inflated, size, out, &path).map(Some)
}

fn copy_packed(objects: &Path, oid: ObjectId, out: &mut impl Write) -> io::Result<Option<u64>> {
    let packs = match std::fs::read_dir(objects.join("pack")) {
        Ok(packs) => packs,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in packs {
        let idx_path = entry?.path();
        if idx_path.extension().is_none_or(|x| x != "idx") {
            continue;
        }
        let index = pack::index::File::at(&idx_path, oid.kind()).map_err(io::Error::other)?;
        let Some(at) = index.lookup(oid) else {
            continue;
        };
        let offset = index.pack_offset_at_index(at);
        let pack_path = idx_path.with_extension("pack");
        let mut file = File::open(&pack_path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        let entry = pack::data::Entry::from_read(&mut reader, offset, oid.kind().len_in_bytes())?;
        if entry.header != pack::data::entry::Header::Blob {
            return Ok(None);
        }
        let mut inflated = ZlibDecoder::new(reader);
        return copy_exactly(&mut inflated, entry.decompressed_size, out, &pack_path).map(Some);
    }
    Ok(None)
}

/// Copies exactly `size` bytes, failing when the stream holds fewer or more.
fn copy_exactly(
    from: &mut impl Read,
    size: u64,
    out: &mut impl Write,
    path: &Path,
) -> io::Result<u64> {
    let copied = io::copy(&mut from.by_ref().take(size), out)?;
    if copied != size {
        return Err(invalid(path, "object is shorter than its header says"));
    }
    if from.read(&mut [0u8; 1])? != 0 {
        return Err(invalid(path, "object is longer than its header says"));
    }
    Ok(size)
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> String {
        let mut child = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or_default()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn loose_and_packed_blobs_are_copied_whole_and_deltas_are_left_to_gix() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        git(repo, &["init", "-q", "--bare"], None);
        let content: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let oid: ObjectId = git(repo, &["hash-object", "-w", "--stdin"], Some(&content))
            .parse()
            .unwrap();
        let objects = repo.join("objects");

        let mut out = Vec::new();
        assert_eq!(
            copy_whole_blob(&objects, oid, &mut out).unwrap(),
            Some(content.len() as u64)
        );
        assert_eq!(out, content, "loose");

        // A second version close to the first: packed, one is a delta.
        let mut changed = content.clone();
        changed[500] ^= 1;
        let other: ObjectId = git(repo, &["hash-object", "-w", "--stdin"], Some(&changed))
            .parse()
            .unwrap();
        let list = format!("{oid}\n{other}\n");
        let pack_dir = objects.join("pack");
        git(
            repo,
            &[
                "pack-objects",
                "-q",
                &format!("{}/pack", pack_dir.display()),
            ],
            Some(list.as_bytes()),
        );
        git(repo, &["prune-packed"], None);
        let (mut whole, mut deltas) = (0, 0);
        for (id, expected) in [(oid, &content), (other, &changed)] {
            let mut out = Vec::new();
            match copy_whole_blob(&objects, id, &mut out).unwrap() {
                Some(size) => {
                    assert_eq!(size, expected.len() as u64);
                    assert_eq!(&out, expected, "packed whole");
                    whole += 1;
                }
                None => deltas += 1,
            }
        }
        assert_eq!((whole, deltas), (1, 1));
        let missing = ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
        assert_eq!(
            copy_whole_blob(&objects, missing, &mut Vec::new()).unwrap(),
            None
        );
    }

    #[test]
    fn a_truncated_loose_object_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        git(repo, &["init", "-q", "--bare"], None);
        let content: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        let oid: ObjectId = git(repo, &["hash-object", "-w", "--stdin"], Some(&content))
            .parse()
            .unwrap();
        let hex = oid.to_string();
        let path = repo.join("objects").join(&hex[..2]).join(&hex[2..]);
        let bytes = std::fs::read(&path).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(copy_whole_blob(&repo.join("objects"), oid, &mut Vec::new()).is_err());
    }
}
