//! Portmapper v2 (RFC 1833): enough for clients that ask where NFS, MOUNT
//! and NFSACL live before connecting. Every program lives on our one port.

use nfs3_types::portmap::{IPPROTO_TCP, mapping};
use nfs3_types::xdr_codec::List;

use crate::dispatch::{Context, Handler};
use crate::nfs3::{args, reply};
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader};
use crate::{acl, mount, nfs3};

pub const PROGRAM: u32 = nfs3_types::portmap::PROGRAM;
pub const VERSION: u32 = nfs3_types::portmap::VERSION;

pub const PROCEDURES: &[(&str, Handler)] = &[
    ("NULL", null),
    ("SET", refuse),
    ("UNSET", refuse),
    ("GETPORT", getport),
    ("DUMP", dump),
];

/// The (program, version) pairs we serve over TCP.
const SERVED: &[(u32, u32)] = &[
    (nfs3::PROGRAM, nfs3::VERSION),
    (mount::PROGRAM, mount::VERSION),
    (acl::PROGRAM, acl::VERSION),
    (PROGRAM, VERSION),
];

struct Mapping {
    prog: u32,
    vers: u32,
    prot: u32,
}

impl Decode<'_> for Mapping {
    fn decode(r: &mut XdrReader<'_>) -> Result<Self, XdrError> {
        let prog = r.u32()?;
        let vers = r.u32()?;
        let prot = r.u32()?;
        let _port = r.u32()?;
        Ok(Self { prog, vers, prot })
    }
}

fn null(_: &Context, _: &CallHeader, _: &[u8]) -> Reply {
    Reply::Success(Vec::new())
}

/// Registration is not offered: answer false.
fn refuse(_: &Context, _: &CallHeader, _: &[u8]) -> Reply {
    reply(&false)
}

fn getport(ctx: &Context, _: &CallHeader, a: &[u8]) -> Reply {
    let m: Mapping = match args(a) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let served = m.prot == IPPROTO_TCP && SERVED.contains(&(m.prog, m.vers));
    let port = if served { u32::from(ctx.port) } else { 0 };
    reply(&port)
}

fn dump(ctx: &Context, _: &CallHeader, _: &[u8]) -> Reply {
    let maps: List<mapping> = List(
        SERVED
            .iter()
            .map(|&(prog, vers)| mapping {
                prog,
                vers,
                prot: IPPROTO_TCP,
                port: u32::from(ctx.port),
            })
            .collect(),
    );
    reply(&maps)
}
