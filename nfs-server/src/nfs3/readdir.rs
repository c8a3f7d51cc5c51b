//! READDIR and READDIRPLUS with real cookies: a cookie is a position in the
//! directory's fixed, sorted listing, so any page size lists every entry
//! exactly once.

use nfs3_types::nfs3::{
    READDIR3res, READDIR3resfail, READDIR3resok, READDIRPLUS3res, READDIRPLUS3resfail,
    READDIRPLUS3resok, cookieverf3, dirlist3, dirlistplus3, entry3, entryplus3, filename3,
    nfsstat3, post_op_attr, post_op_fh3,
};
use nfs3_types::xdr_codec::{List, Opaque};

use super::{args, fh_of, file_handle, post_op, reply, resolve};
use crate::dispatch::Context;
use crate::fs::{DirEntry, Node};
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader};
use crate::status::{counted, nfs_status};

/// Encoded size of post_op_attr with attributes.
const ATTR_SIZE: usize = 4 + 84;
/// status + dir attributes + cookie verifier + end of list + eof.
const REPLY_OVERHEAD: usize = 4 + ATTR_SIZE + 8 + 4 + 4;

struct ReaddirArgs<'a> {
    dir: &'a [u8],
    cookie: u64,
    verifier: [u8; 8],
    dircount: u32,
    maxcount: u32,
}

/// READDIR's arguments (one count) and READDIRPLUS's (two) share a shape.
fn decode_listing<'a>(r: &mut XdrReader<'a>, plus: bool) -> Result<ReaddirArgs<'a>, XdrError> {
    let dir = file_handle(r)?;
    let cookie = r.u64()?;
    let verifier = r.fixed::<8>()?;
    let dircount = r.u32()?;
    let maxcount = if plus { r.u32()? } else { dircount };
    Ok(ReaddirArgs {
        dir,
        cookie,
        verifier,
        dircount,
        maxcount,
    })
}

struct Plain<'a>(ReaddirArgs<'a>);
struct Plus<'a>(ReaddirArgs<'a>);

impl<'a> Decode<'a> for Plain<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        decode_listing(r, false).map(Plain)
    }
}

impl<'a> Decode<'a> for Plus<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        decode_listing(r, true).map(Plus)
    }
}

fn name_size(name: &[u8]) -> usize {
    4 + name.len().next_multiple_of(4)
}

/// Resolves the directory and checks the cookie verifier.
fn open_dir(
    ctx: &Context,
    call: &CallHeader,
    a: &ReaddirArgs,
) -> Result<(Node, [u8; 8]), nfsstat3> {
    let dir = resolve(ctx, call, a.dir)?;
    let verifier = ctx.fs.dir_verifier(&dir);
    if a.cookie != 0 && a.verifier != [0; 8] && a.verifier != verifier {
        return Err(counted(&ctx.metrics, nfsstat3::NFS3ERR_BAD_COOKIE));
    }
    Ok((dir, verifier))
}

pub fn readdir(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let Plain(a) = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (dir, verifier) = match open_dir(ctx, call, &a) {
        Ok(d) => d,
        Err(status) => return reply(&READDIR3res::Err((status, READDIR3resfail::default()))),
    };
    let budget = a.maxcount as usize;
    let mut used = REPLY_OVERHEAD;
    let mut entries = Vec::new();
    let listed = ctx.fs.read_dir(&dir, a.cookie, |e: DirEntry| {
        let size = 4 + 8 + name_size(&e.name) + 8;
        if used + size > budget {
            return false;
        }
        used += size;
        entries.push(entry3 {
            fileid: e.fileid,
            name: filename3(Opaque::owned(e.name)),
            cookie: e.cookie,
        });
        true
    });
    let res: READDIR3res = match listed {
        Ok(eof) if eof || !entries.is_empty() => READDIR3res::Ok(READDIR3resok {
            dir_attributes: post_op(ctx, &dir),
            cookieverf: cookieverf3(verifier),
            reply: dirlist3 {
                entries: List(entries),
                eof,
            },
        }),
        Ok(_) => READDIR3res::Err((
            counted(&ctx.metrics, nfsstat3::NFS3ERR_TOOSMALL),
            READDIR3resfail {
                dir_attributes: post_op(ctx, &dir),
            },
        )),
        Err(e) => READDIR3res::Err((
            nfs_status(&ctx.metrics, &e),
            READDIR3resfail {
                dir_attributes: post_op(ctx, &dir),
            },
        )),
    };
    reply(&res)
}

pub fn readdirplus(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let Plus(a) = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (dir, verifier) = match open_dir(ctx, call, &a) {
        Ok(d) => d,
        Err(status) => {
            return reply(&READDIRPLUS3res::Err((
                status,
                READDIRPLUS3resfail::default(),
            )));
        }
    };
    let max_total = a.maxcount as usize;
    let max_dir_info = a.dircount as usize;
    let mut total = REPLY_OVERHEAD;
    let mut dir_info = 0;
    let mut entries = Vec::new();
    let listed = ctx.fs.read_dir(&dir, a.cookie, |e: DirEntry| {
        let child = e.id.and_then(|id| ctx.fs.node_near(&dir, id).ok());
        let attributes = match &child {
            Some(node) => post_op(ctx, node),
            None => post_op_attr::None,
        };
        let handle = match e.id {
            Some(id) if child.is_some() => post_op_fh3::Some(fh_of(&id)),
            _ => post_op_fh3::None,
        };
        let info = 8 + name_size(&e.name) + 8;
        let size = 4
            + info
            + match attributes {
                post_op_attr::Some(_) => ATTR_SIZE,
                post_op_attr::None => 4,
            }
            + match &handle {
                post_op_fh3::Some(fh) => 8 + fh.data.len().next_multiple_of(4),
                post_op_fh3::None => 4,
            };
        let fits =
            total + size <= max_total && (entries.is_empty() || dir_info + info <= max_dir_info);
        if !fits {
            return false;
        }
        total += size;
        dir_info += info;
        entries.push(entryplus3 {
            fileid: e.fileid,
            name: filename3(Opaque::owned(e.name)),
            cookie: e.cookie,
            name_attributes: attributes,
            name_handle: handle,
        });
        true
    });
    let res: READDIRPLUS3res = match listed {
        Ok(eof) if eof || !entries.is_empty() => READDIRPLUS3res::Ok(READDIRPLUS3resok {
            dir_attributes: post_op(ctx, &dir),
            cookieverf: cookieverf3(verifier),
            reply: dirlistplus3 {
                entries: List(entries),
                eof,
            },
        }),
        Ok(_) => READDIRPLUS3res::Err((
            counted(&ctx.metrics, nfsstat3::NFS3ERR_TOOSMALL),
            READDIRPLUS3resfail {
                dir_attributes: post_op(ctx, &dir),
            },
        )),
        Err(e) => READDIRPLUS3res::Err((
            nfs_status(&ctx.metrics, &e),
            READDIRPLUS3resfail {
                dir_attributes: post_op(ctx, &dir),
            },
        )),
    };
    reply(&res)
}

#[cfg(test)]
mod tests {
    use nfs3_types::xdr_codec::Pack;

    use super::*;
    use crate::fs::{Attr, FileType};
    use crate::nfs3::fattr;

    #[test]
    fn attr_size_matches_the_encoding() {
        let attr = Attr {
            file_type: FileType::Regular,
            mode: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 1,
            fileid: 1,
            fsid: 1,
            time: 1,
        };
        assert_eq!(post_op_attr::Some(fattr(&attr)).packed_size(), ATTR_SIZE);
        assert_eq!(name_size(b"abcde"), 12);
    }
}
