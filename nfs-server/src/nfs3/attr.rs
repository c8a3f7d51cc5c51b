//! NULL, GETATTR, ACCESS, FSSTAT, FSINFO and PATHCONF.

use nfs3_types::nfs3::{
    ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP, ACCESS3_MODIFY, ACCESS3_READ,
    ACCESS3res, ACCESS3resfail, ACCESS3resok, FSF3_HOMOGENEOUS, FSF3_SYMLINK, FSINFO3res,
    FSINFO3resfail, FSINFO3resok, FSSTAT3res, FSSTAT3resfail, FSSTAT3resok, GETATTR3res,
    GETATTR3resok, Nfs3Result, PATHCONF3res, PATHCONF3resfail, PATHCONF3resok, nfstime3,
};
use nfs3_types::xdr_codec::Void;

use super::{FhArgs, MAX_READ, args, attributes, file_handle, post_op, reply, resolve};
use crate::dispatch::Context;
use crate::fs::{Attr, FileType, MAX_NAME};
use crate::rpc::{CallHeader, Credential, Decode, Reply, XdrError, XdrReader};

pub fn null(_: &Context, _: &CallHeader, a: &[u8]) -> Reply {
    match args::<()>(a) {
        Ok(()) => Reply::Success(Vec::new()),
        Err(r) => r,
    }
}

impl Decode<'_> for () {
    fn decode(_: &mut XdrReader<'_>) -> Result<Self, XdrError> {
        Ok(())
    }
}

pub fn getattr(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: FhArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res: GETATTR3res = match resolve(ctx, call, a.fh).and_then(|n| attributes(ctx, &n)) {
        Ok(obj_attributes) => Nfs3Result::Ok(GETATTR3resok { obj_attributes }),
        Err(status) => Nfs3Result::Err((status, Void)),
    };
    reply(&res)
}

struct AccessArgs<'a> {
    fh: &'a [u8],
    access: u32,
}

impl<'a> Decode<'a> for AccessArgs<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            fh: file_handle(r)?,
            access: r.u32()?,
        })
    }
}

pub fn access(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: AccessArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res: ACCESS3res = match resolve(ctx, call, a.fh) {
        Ok(node) => match ctx.fs.attr(&node) {
            Ok(attr) => Nfs3Result::Ok(ACCESS3resok {
                obj_attributes: nfs3_types::nfs3::post_op_attr::Some(super::fattr(&attr)),
                access: a.access & allowed(&attr, &call.cred),
            }),
            Err(e) => Nfs3Result::Err((
                crate::status::nfs_status(&ctx.metrics, &e),
                ACCESS3resfail::default(),
            )),
        },
        Err(status) => Nfs3Result::Err((status, ACCESS3resfail::default())),
    };
    reply(&res)
}

/// Access bits the caller gets: read, lookup and execute by the mode class
/// that applies; never modify, extend or delete on a read-only export.
fn allowed(attr: &Attr, cred: &Credential) -> u32 {
    let bits = match cred {
        Credential::Unix { uid: 0, .. } => {
            // root reads everything and executes what anyone may execute.
            let x = if attr.mode & 0o111 != 0 { 1 } else { 0 };
            0o6 | x
        }
        Credential::Unix { uid, gid, gids } => {
            if *uid == attr.uid {
                attr.mode >> 6 & 7
            } else if *gid == attr.gid || gids.contains(&attr.gid) {
                attr.mode >> 3 & 7
            } else {
                attr.mode & 7
            }
        }
        Credential::None | Credential::Other(_) => attr.mode & 7,
    };
    let mut access = 0;
    if bits & 4 != 0 {
        access |= ACCESS3_READ;
    }
    if bits & 1 != 0 {
        access |= match attr.file_type {
            FileType::Directory => ACCESS3_LOOKUP,
            _ => ACCESS3_EXECUTE,
        };
    }
    access & !(ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE)
}

pub fn fsstat(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: FhArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res: FSSTAT3res = match resolve(ctx, call, a.fh) {
        Ok(node) => {
            let (bytes, files) = ctx.fs.totals(&node);
            Nfs3Result::Ok(FSSTAT3resok {
                obj_attributes: post_op(ctx, &node),
                tbytes: bytes,
                fbytes: 0,
                abytes: 0,
                tfiles: files,
                ffiles: 0,
                afiles: 0,
                // An export never changes while it exists.
                invarsec: u32::MAX,
            })
        }
        Err(status) => Nfs3Result::Err((status, FSSTAT3resfail::default())),
    };
    reply(&res)
}

pub fn fsinfo(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: FhArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res: FSINFO3res = match resolve(ctx, call, a.fh) {
        Ok(node) => Nfs3Result::Ok(FSINFO3resok {
            obj_attributes: post_op(ctx, &node),
            rtmax: MAX_READ,
            rtpref: MAX_READ,
            rtmult: 4096,
            wtmax: MAX_READ,
            wtpref: MAX_READ,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: u64::MAX >> 1,
            time_delta: nfstime3 {
                seconds: 1,
                nseconds: 0,
            },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS,
        }),
        Err(status) => Nfs3Result::Err((status, FSINFO3resfail::default())),
    };
    reply(&res)
}

pub fn pathconf(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let a: FhArgs = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res: PATHCONF3res = match resolve(ctx, call, a.fh) {
        Ok(node) => Nfs3Result::Ok(PATHCONF3resok {
            obj_attributes: post_op(ctx, &node),
            linkmax: 1,
            name_max: MAX_NAME as u32,
            no_trunc: true,
            chown_restricted: true,
            case_insensitive: false,
            case_preserving: true,
        }),
        Err(status) => Nfs3Result::Err((status, PATHCONF3resfail::default())),
    };
    reply(&res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mode: u32, file_type: FileType) -> Attr {
        Attr {
            file_type,
            mode,
            nlink: 1,
            uid: 1000,
            gid: 100,
            size: 0,
            fileid: 2,
            fsid: 1,
            time: 0,
        }
    }

    fn unix(uid: u32, gid: u32) -> Credential {
        Credential::Unix {
            uid,
            gid,
            gids: vec![],
        }
    }

    #[test]
    fn access_follows_mode_class_and_never_grants_writes() {
        let file = attr(0o640, FileType::Regular);
        assert_eq!(allowed(&file, &unix(1000, 1)), ACCESS3_READ);
        assert_eq!(allowed(&file, &unix(5, 100)), ACCESS3_READ);
        assert_eq!(allowed(&file, &unix(5, 5)), 0);
        let exe = attr(0o755, FileType::Regular);
        assert_eq!(allowed(&exe, &unix(5, 5)), ACCESS3_READ | ACCESS3_EXECUTE);
        let dir = attr(0o755, FileType::Directory);
        assert_eq!(allowed(&dir, &unix(0, 0)), ACCESS3_READ | ACCESS3_LOOKUP);
        assert_eq!(
            allowed(&attr(0o644, FileType::Regular), &unix(0, 0)),
            ACCESS3_READ
        );
        assert_eq!(
            allowed(&dir, &Credential::None),
            ACCESS3_READ | ACCESS3_LOOKUP
        );
    }
}
