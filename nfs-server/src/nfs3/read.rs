//! READ: file contents, decoded from the object database on first use.

use nfs3_types::nfs3::{Nfs3Result, READ3res, READ3resfail, READ3resok, nfsstat3, post_op_attr};

use super::{MAX_READ, args, file_handle, post_op, reply, resolve};
use crate::dispatch::Context;
use crate::fs::ReadChunk;
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader, encode};
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

/// READ3res for success, with the data left out of the encoded part:
/// status, attributes, count, eof and the opaque's length, then the data
/// itself as a [`Reply::Data`] tail (RFC 1813 §3.3.6 layout).
fn data_reply(attributes: post_op_attr, chunk: ReadChunk) -> Reply {
    // The count is at most MAX_READ, well within u32.
    let count = u32::try_from(chunk.data.len()).unwrap_or(u32::MAX);
    let mut head = Vec::with_capacity(128);
    encode(&nfsstat3::NFS3_OK, &mut head);
    encode(&attributes, &mut head);
    encode(&count, &mut head);
    encode(&chunk.eof, &mut head);
    encode(&count, &mut head);
    Reply::Data {
        head,
        data: chunk.data,
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
        Ok(chunk) => data_reply(post_op(ctx, &node), chunk),
        Err(e) => reply(&Nfs3Result::<READ3resok, _>::Err((
            nfs_status(&ctx.metrics, &e),
            READ3resfail {
                file_attributes: post_op(ctx, &node),
            },
        ))),
    }
}

#[cfg(test)]
mod tests {
    use nfs3_types::nfs3::Nfs3Option;
    use nfs3_types::xdr_codec::Opaque;

    use super::*;

    /// The split reply is byte for byte the READ3res nfs3_types encodes,
    /// padding included, for every length modulo four.
    #[test]
    fn data_reply_matches_the_encoded_read3res() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"hello"] {
            let chunk = ReadChunk {
                data: bytes::Bytes::copy_from_slice(data),
                eof: data.len() % 2 == 0,
            };
            let mut split = Vec::new();
            data_reply(Nfs3Option::None, chunk.clone()).encode(9, &mut split);
            let mut whole = Vec::new();
            reply(&READ3res::Ok(READ3resok {
                file_attributes: Nfs3Option::None,
                count: data.len() as u32,
                eof: chunk.eof,
                data: Opaque::borrowed(data),
            }))
            .encode(9, &mut whole);
            assert_eq!(split, whole, "{data:?}");
        }
    }
}
