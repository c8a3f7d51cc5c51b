//! NFSv3 (RFC 1813): the procedure table and what the procedures share:
//! handle resolution, attribute conversion and argument decoding.
//!
//! The export is read-only: reading procedures are answered from the
//! filesystem model, mutating ones with NFS3ERR_ROFS.

mod attr;
mod lookup;
mod read;
mod readdir;
mod readonly;

use nfs3_types::nfs3::{fattr3, ftype3, nfsstat3, nfstime3, post_op_attr, specdata3};
use nfs3_types::xdr_codec::Pack;

use crate::dispatch::{Context, Handler};
use crate::fs::{Attr, FileType, Filesystem, Node, NodeId};
use crate::metrics::Metrics;
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader, decode_args, encode};
use crate::{handle, status};

pub const PROGRAM: u32 = nfs3_types::nfs3::PROGRAM;
pub const VERSION: u32 = nfs3_types::nfs3::VERSION;

/// Largest READ we answer, and the size we advertise in FSINFO.
pub const MAX_READ: u32 = 1 << 20;
/// Longest name accepted on the wire; longer than NAME_MAX so that a long
/// name gets NFS3ERR_NAMETOOLONG rather than GARBAGE_ARGS.
const MAX_WIRE_NAME: usize = 4096;

/// Indexed by procedure number (RFC 1813 §3.3).
pub const PROCEDURES: &[(&str, Handler)] = &[
    ("NULL", attr::null),
    ("GETATTR", attr::getattr),
    ("SETATTR", readonly::setattr),
    ("LOOKUP", lookup::lookup),
    ("ACCESS", attr::access),
    ("READLINK", lookup::readlink),
    ("READ", read::read),
    ("WRITE", readonly::write),
    ("CREATE", readonly::create),
    ("MKDIR", readonly::mkdir),
    ("SYMLINK", readonly::symlink),
    ("MKNOD", readonly::mknod),
    ("REMOVE", readonly::remove),
    ("RMDIR", readonly::rmdir),
    ("RENAME", readonly::rename),
    ("LINK", readonly::link),
    ("READDIR", readdir::readdir),
    ("READDIRPLUS", readdir::readdirplus),
    ("FSSTAT", attr::fsstat),
    ("FSINFO", attr::fsinfo),
    ("PATHCONF", attr::pathconf),
    ("COMMIT", readonly::commit),
];

/// Arguments that are just a file handle.
pub(crate) struct FhArgs<'a> {
    pub fh: &'a [u8],
}

impl<'a> Decode<'a> for FhArgs<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            fh: file_handle(r)?,
        })
    }
}

pub(crate) fn file_handle<'a>(r: &mut XdrReader<'a>) -> Result<&'a [u8], XdrError> {
    r.opaque(nfs3_types::nfs3::NFS3_FHSIZE)
}

pub(crate) fn file_name<'a>(r: &mut XdrReader<'a>) -> Result<&'a [u8], XdrError> {
    r.opaque(MAX_WIRE_NAME)
}

/// Decodes arguments or logs why they are garbage.
pub(crate) fn args<'a, T: Decode<'a>>(bytes: &'a [u8]) -> Result<T, Reply> {
    decode_args(bytes).map_err(|e| {
        tracing::debug!(error = %e, "garbage arguments");
        Reply::GarbageArgs
    })
}

/// A successful RPC whose result is `value`.
pub(crate) fn reply<T: Pack>(value: &T) -> Reply {
    let mut out = Vec::with_capacity(value.packed_size());
    encode(value, &mut out);
    Reply::Success(out)
}

/// Resolves a handle to a node, or the status that answers it.
pub(crate) fn resolve(ctx: &Context, call: &CallHeader, fh: &[u8]) -> Result<Node, nfsstat3> {
    let id = handle::decode(fh).map_err(|e| status::handle_status(&ctx.metrics, &e))?;
    let node = ctx
        .fs
        .node(id)
        .map_err(|e| status::nfs_status(&ctx.metrics, &e))?;
    check_access(ctx, call, &node)?;
    Ok(node)
}

/// Refuses nodes of repositories the export rules keep from this client.
/// Handles are predictable, so this is checked on every use, not only at
/// MOUNT.
pub(crate) fn check_access(ctx: &Context, call: &CallHeader, node: &Node) -> Result<(), nfsstat3> {
    match node {
        Node::Worktree { export, .. } if !ctx.access.may_use(call.peer, &export.repo.name) => {
            tracing::debug!(peer = ?call.peer, repo = %export.repo.name, "handle of a repository this client may not use");
            Metrics::count(&ctx.metrics.access_refused, "handle");
            Err(status::counted(&ctx.metrics, nfsstat3::NFS3ERR_ACCES))
        }
        _ => Ok(()),
    }
}

pub(crate) fn handle_of(node: &Node) -> nfs3_types::nfs3::nfs_fh3 {
    fh_of(&Filesystem::id_of(node))
}

pub(crate) fn fh_of(id: &NodeId) -> nfs3_types::nfs3::nfs_fh3 {
    nfs3_types::nfs3::nfs_fh3 {
        data: nfs3_types::xdr_codec::Opaque::owned(handle::encode(id)),
    }
}

pub(crate) fn attributes(ctx: &Context, node: &Node) -> Result<fattr3, nfsstat3> {
    ctx.fs
        .attr(node)
        .map(|a| fattr(&a))
        .map_err(|e| status::nfs_status(&ctx.metrics, &e))
}

/// Attributes when available; absent attributes are legal in most replies.
pub(crate) fn post_op(ctx: &Context, node: &Node) -> post_op_attr {
    match ctx.fs.attr(node) {
        Ok(a) => post_op_attr::Some(fattr(&a)),
        Err(_) => post_op_attr::None,
    }
}

pub(crate) fn nfs_time(seconds: i64) -> nfstime3 {
    nfstime3 {
        seconds: u32::try_from(seconds.max(0)).unwrap_or(u32::MAX),
        nseconds: 0,
    }
}

pub(crate) fn fattr(a: &Attr) -> fattr3 {
    let time = nfs_time(a.time);
    fattr3 {
        type_: match a.file_type {
            FileType::Directory => ftype3::NF3DIR,
            FileType::Regular => ftype3::NF3REG,
            FileType::Symlink => ftype3::NF3LNK,
        },
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.size.next_multiple_of(4096),
        rdev: specdata3::default(),
        fsid: a.fsid,
        fileid: a.fileid,
        atime: time,
        mtime: time,
        ctime: time,
    }
}
