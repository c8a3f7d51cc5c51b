//! The mutating procedures. The export is read-only, so each answers
//! NFS3ERR_ROFS with empty weak cache consistency data, after checking that
//! its arguments start with a well-formed handle.

use nfs3_types::nfs3::{nfsstat3, wcc_data};

use super::file_handle;
use crate::dispatch::Context;
use crate::rpc::{CallHeader, Reply, XdrReader, encode};
use crate::status::counted;

/// What follows the status in each procedure's failure result.
#[derive(Clone, Copy)]
enum Failure {
    /// One wcc_data (SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE,
    /// RMDIR, COMMIT).
    Wcc,
    /// Two wcc_data (RENAME).
    TwoWcc,
    /// post_op_attr then wcc_data (LINK).
    AttrAndWcc,
}

fn read_only(ctx: &Context, args: &[u8], failure: Failure) -> Reply {
    if file_handle(&mut XdrReader::new(args)).is_err() {
        return Reply::GarbageArgs;
    }
    let mut out = Vec::with_capacity(20);
    encode(&counted(&ctx.metrics, nfsstat3::NFS3ERR_ROFS), &mut out);
    match failure {
        Failure::Wcc => encode(&wcc_data::default(), &mut out),
        Failure::TwoWcc => {
            encode(&wcc_data::default(), &mut out);
            encode(&wcc_data::default(), &mut out);
        }
        Failure::AttrAndWcc => {
            encode(&nfs3_types::nfs3::post_op_attr::None, &mut out);
            encode(&wcc_data::default(), &mut out);
        }
    }
    Reply::Success(out)
}

macro_rules! read_only_procedures {
    ($($name:ident => $failure:ident),* $(,)?) => {
        $(
            pub fn $name(ctx: &Context, _: &CallHeader, args: &[u8]) -> Reply {
                read_only(ctx, args, Failure::$failure)
            }
        )*
    };
}

read_only_procedures! {
    setattr => Wcc,
    write => Wcc,
    create => Wcc,
    mkdir => Wcc,
    symlink => Wcc,
    mknod => Wcc,
    remove => Wcc,
    rmdir => Wcc,
    rename => TwoWcc,
    link => AttrAndWcc,
    commit => Wcc,
}
