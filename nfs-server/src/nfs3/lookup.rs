//! LOOKUP and READLINK.

use nfs3_types::nfs3::{
    LOOKUP3res, LOOKUP3resfail, LOOKUP3resok, Nfs3Result, READLINK3res, READLINK3resfail,
    READLINK3resok, nfspath3,
};
use nfs3_types::xdr_codec::Opaque;

use super::{
    FhArgs, args, check_access, file_handle, file_name, handle_of, post_op, reply, resolve,
};
use crate::dispatch::Context;
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader};
use crate::status::nfs_status;

struct DirOpArgs<'a> {
    dir: &'a [u8],
    name: &'a [u8],
}

impl<'a> Decode<'a> for DirOpArgs<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            dir: file_handle(r)?,
            name: file_name(r)?,
        })
    }
}

pub fn lookup(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: DirOpArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let dir = match resolve(ctx, call, a.dir) {
        Ok(dir) => dir,
        Err(status) => return reply(&LOOKUP3res::Err((status, LOOKUP3resfail::default()))),
    };
    // From the namespace, a repository's name leads into its worktree.
    let found = ctx
        .fs
        .lookup(&dir, a.name)
        .map_err(|e| nfs_status(&ctx.metrics, &e))
        .and_then(|child| check_access(ctx, call, &child).map(|()| child));
    let res: LOOKUP3res = match found {
        Ok(child) => Nfs3Result::Ok(LOOKUP3resok {
            object: handle_of(&child),
            obj_attributes: post_op(ctx, &child),
            dir_attributes: post_op(ctx, &dir),
        }),
        Err(status) => Nfs3Result::Err((
            status,
            LOOKUP3resfail {
                dir_attributes: post_op(ctx, &dir),
            },
        )),
    };
    reply(&res)
}

pub fn readlink(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: FhArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let node = match resolve(ctx, call, a.fh) {
        Ok(node) => node,
        Err(status) => return reply(&READLINK3res::Err((status, READLINK3resfail::default()))),
    };
    match ctx.fs.readlink(&node) {
        Ok(target) => reply(&READLINK3res::Ok(READLINK3resok {
            symlink_attributes: post_op(ctx, &node),
            data: nfspath3(Opaque::borrowed(&target)),
        })),
        Err(e) => reply(&READLINK3res::Err((
            nfs_status(&ctx.metrics, &e),
            READLINK3resfail {
                symlink_attributes: post_op(ctx, &node),
            },
        ))),
    }
}
