//! NFSACL v3 (program 100227), the side protocol Linux uses for POSIX ACLs
//! on NFSv3 mounts.
//!
//! Not optional: the Linux client marks every NFSv3 inode ACL-capable, so
//! overlayfs asks for ACLs on permission checks; PROG_UNAVAIL there makes
//! reads and copy-ups through an overlay fail with EOPNOTSUPP. GETACL answers
//! the minimal ACL equivalent to the mode (owner, group, other), which the
//! client folds back into the mode bits; SETACL answers read-only.

use nfs3_types::nfs3::nfsstat3;

use crate::dispatch::{Context, Handler};
use crate::nfs3::{args, file_handle, post_op, resolve};
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader, encode};
use crate::status::{counted, nfs_status};

pub const PROGRAM: u32 = 100_227;
pub const VERSION: u32 = 3;

pub const PROCEDURES: &[(&str, Handler)] =
    &[("NULL", null), ("GETACL", getacl), ("SETACL", setacl)];

/// Mask bits: which ACLs and counts the client wants.
const NFS_ACL: u32 = 0x1;
const NFS_ACLCNT: u32 = 0x2;
const NFS_DFACL: u32 = 0x4;
const NFS_DFACLCNT: u32 = 0x8;
const MASK_ALL: u32 = NFS_ACL | NFS_ACLCNT | NFS_DFACL | NFS_DFACLCNT;

/// POSIX ACL entry tags, as on the wire.
const ACL_USER_OBJ: u32 = 0x01;
const ACL_GROUP_OBJ: u32 = 0x04;
const ACL_OTHER: u32 = 0x20;

struct GetAclArgs<'a> {
    fh: &'a [u8],
    mask: u32,
}

impl<'a> Decode<'a> for GetAclArgs<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            fh: file_handle(r)?,
            mask: r.u32()?,
        })
    }
}

fn null(_: &Context, _: &CallHeader, _: &[u8]) -> Reply {
    Reply::Success(Vec::new())
}

fn getacl(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: GetAclArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut out = Vec::with_capacity(160);
    let node = match resolve(ctx, call, a.fh) {
        Ok(node) => node,
        Err(status) => {
            encode(&status, &mut out);
            return Reply::Success(out);
        }
    };
    let attr = match ctx.fs.attr(&node) {
        Ok(attr) => attr,
        Err(e) => {
            encode(&nfs_status(&ctx.metrics, &e), &mut out);
            return Reply::Success(out);
        }
    };
    if a.mask & !MASK_ALL != 0 {
        encode(&counted(&ctx.metrics, nfsstat3::NFS3ERR_INVAL), &mut out);
        return Reply::Success(out);
    }
    encode(&nfsstat3::NFS3_OK, &mut out);
    encode(&post_op(ctx, &node), &mut out);
    encode(&a.mask, &mut out);
    // Access ACL: count, then an XDR array (its own length, then entries).
    let entries = [
        (ACL_USER_OBJ, attr.uid, attr.mode >> 6 & 7),
        (ACL_GROUP_OBJ, attr.gid, attr.mode >> 3 & 7),
        (ACL_OTHER, 0, attr.mode & 7),
    ];
    let count = entries.len() as u32;
    encode(&count, &mut out);
    encode(&count, &mut out);
    for (tag, id, perm) in entries {
        encode(&tag, &mut out);
        encode(&id, &mut out);
        encode(&perm, &mut out);
    }
    // Default ACL: none, for directories and files alike.
    encode(&0u32, &mut out);
    encode(&0u32, &mut out);
    Reply::Success(out)
}

fn setacl(ctx: &Context, _: &CallHeader, a: &[u8]) -> Reply {
    if file_handle(&mut XdrReader::new(a)).is_err() {
        return Reply::GarbageArgs;
    }
    let mut out = Vec::with_capacity(8);
    encode(&counted(&ctx.metrics, nfsstat3::NFS3ERR_ROFS), &mut out);
    encode(&nfs3_types::nfs3::post_op_attr::None, &mut out);
    Reply::Success(out)
}
