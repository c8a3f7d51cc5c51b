//! MOUNT v3 (RFC 1813 appendix I): turns an export path into the root handle
//! of a pinned worktree, and lists the exports.

use nfs3_types::mount::{MNTPATHLEN, dirpath, export_node, fhandle3, mountres3, mountres3_ok};
use nfs3_types::xdr_codec::{List, Opaque};

use crate::dispatch::{Context, Handler};
use crate::fs::NodeId;
use crate::handle;
use crate::metrics::Metrics;
use crate::nfs3::{args, reply};
use crate::rpc::{CallHeader, Decode, Reply, XdrError, XdrReader};
use crate::status::{mount_refused_by_rules, mount_status};

pub const PROGRAM: u32 = nfs3_types::mount::PROGRAM;
pub const VERSION: u32 = nfs3_types::mount::VERSION;

const AUTH_NONE: u32 = 0;
const AUTH_SYS: u32 = 1;

pub const PROCEDURES: &[(&str, Handler)] = &[
    ("NULL", null),
    ("MNT", mnt),
    ("DUMP", dump),
    ("UMNT", umnt),
    ("UMNTALL", null),
    ("EXPORT", export),
];

struct PathArgs<'a>(&'a [u8]);

impl<'a> Decode<'a> for PathArgs<'a> {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError> {
        r.opaque(MNTPATHLEN).map(PathArgs)
    }
}

fn null(_: &Context, _: &CallHeader, _: &[u8]) -> Reply {
    Reply::Success(Vec::new())
}

fn mnt(ctx: &Context, call: &CallHeader, a: &[u8]) -> Reply {
    let PathArgs(path) = match args(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res = match ctx.fs.mount(path) {
        Ok(id) if !may_mount(ctx, call, &id) => {
            mountres3::Err(mount_refused_by_rules(&ctx.metrics, path, call.peer))
        }
        Ok(id) => {
            tracing::info!(path = %String::from_utf8_lossy(path), ?id, "mounted");
            Metrics::count(&ctx.metrics.mounts, "MNT3_OK");
            mountres3::Ok(mountres3_ok {
                fhandle: fhandle3(Opaque::owned(handle::encode(&id))),
                auth_flavors: vec![AUTH_SYS, AUTH_NONE],
            })
        }
        Err(e) => mountres3::Err(mount_status(&ctx.metrics, path, &e)),
    };
    reply(&res)
}

/// Whether the export rules let this client use the repository `id` is in
/// (the namespace root is open to every allowed client).
fn may_mount(ctx: &Context, call: &CallHeader, id: &NodeId) -> bool {
    match id {
        NodeId::Namespace(_) => true,
        NodeId::Worktree { repo, .. } => ctx
            .fs
            .store()
            .repo_by_id(*repo)
            .is_some_and(|r| ctx.access.may_use(call.peer, &r.name)),
    }
}

fn umnt(_: &Context, _: &CallHeader, a: &[u8]) -> Reply {
    // Stateless: exports are pinned by their handles, nothing to release.
    match args::<PathArgs>(a) {
        Ok(_) => Reply::Success(Vec::new()),
        Err(r) => r,
    }
}

fn dump(_: &Context, _: &CallHeader, _: &[u8]) -> Reply {
    // We keep no mount list: an empty mountlist.
    reply(&false)
}

fn export(ctx: &Context, call: &CallHeader, _: &[u8]) -> Reply {
    let names = ctx.fs.export_names();
    let exports: List<export_node> = List(
        names
            .iter()
            .filter(|n| ctx.access.may_use(call.peer, n.trim_start_matches('/')))
            .map(|n| export_node {
                ex_dir: dirpath(Opaque::borrowed(n.as_bytes())),
                ex_groups: List(Vec::new()),
            })
            .collect(),
    );
    reply(&exports)
}
