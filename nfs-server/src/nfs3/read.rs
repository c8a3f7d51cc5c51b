//! READ: file contents, decoded from the object database on first use.

use nfs3_types::nfs3::{Nfs3Result, READ3res, READ3resfail, READ3resok};
use nfs3_types::xdr_codec::Opaque;

use super::{MAX_READ, args, file_handle, post_op, reply, resolve};
use crate::dispatch::Context;
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader};
use crate::status::nfs_status;

struct ReadArgs<'a> {
    fh: &'a [u8],
    offset: u64,
    count: u32,
}

impl<'a> Decode<'a> for ReadArgs<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            fh: file_handle(r)?,
            offset: r.u64()?,
            count: r.u32()?,
        })
    }
}

pub fn read(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: ReadArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let node = match resolve(ctx, call, a.fh) {
        Ok(node) => node,
        Err(status) => return reply(&READ3res::Err((status, READ3resfail::default()))),
    };
    // Counts past what we advertised are clamped, not refused (RFC 1813 §3.3.6).
    match ctx.fs.read(&node, a.offset, a.count.min(MAX_READ)) {
        Ok(chunk) => {
            let data = chunk.bytes();
            reply(&READ3res::Ok(READ3resok {
                file_attributes: post_op(ctx, &node),
                count: data.len() as u32,
                eof: chunk.eof,
                data: Opaque::borrowed(data),
            }))
        }
        Err(e) => reply(&Nfs3Result::<READ3resok, _>::Err((
            nfs_status(&ctx.metrics, &e),
            READ3resfail {
                file_attributes: post_op(ctx, &node),
            },
        ))),
    }
}
