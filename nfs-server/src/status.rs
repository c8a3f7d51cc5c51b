//! The only mapping from model errors to protocol statuses, with one metric
//! series per branch. Server faults (I/O on the store) are logged; client
//! mistakes are only counted.

use nfs3_types::mount::mountstat3;
use nfs3_types::nfs3::nfsstat3;

use crate::fs::{FsError, MountError};
use crate::handle::HandleError;
use crate::metrics::Metrics;

/// The NFS status for a filesystem error.
pub fn nfs_status(metrics: &Metrics, err: &FsError) -> nfsstat3 {
    let (status, name) = match err {
        FsError::NotFound => (nfsstat3::NFS3ERR_NOENT, "NFS3ERR_NOENT"),
        FsError::NotDir => (nfsstat3::NFS3ERR_NOTDIR, "NFS3ERR_NOTDIR"),
        FsError::IsDir => (nfsstat3::NFS3ERR_ISDIR, "NFS3ERR_ISDIR"),
        FsError::NotSymlink => (nfsstat3::NFS3ERR_INVAL, "NFS3ERR_INVAL"),
        FsError::NameTooLong => (nfsstat3::NFS3ERR_NAMETOOLONG, "NFS3ERR_NAMETOOLONG"),
        FsError::BadCookie(_) => (nfsstat3::NFS3ERR_BAD_COOKIE, "NFS3ERR_BAD_COOKIE"),
        FsError::Stale(why) => {
            tracing::debug!(why, "stale handle");
            (nfsstat3::NFS3ERR_STALE, "NFS3ERR_STALE")
        }
        FsError::Resolve(e) => {
            tracing::warn!(error = %e, "revision did not resolve");
            (nfsstat3::NFS3ERR_NOENT, "NFS3ERR_NOENT")
        }
        FsError::Object(e) => {
            tracing::error!(error = %e, "object read failed");
            (nfsstat3::NFS3ERR_IO, "NFS3ERR_IO")
        }
        FsError::Build(e) => {
            tracing::error!(error = %e, "tree load failed");
            (nfsstat3::NFS3ERR_IO, "NFS3ERR_IO")
        }
        FsError::StoreFile { .. } | FsError::Spilled { .. } | FsError::Shared(_) => {
            tracing::error!(error = %err, "store read failed");
            (nfsstat3::NFS3ERR_IO, "NFS3ERR_IO")
        }
    };
    Metrics::count(&metrics.statuses, name);
    status
}

/// The NFS status for bytes that are not one of our handles.
pub fn handle_status(metrics: &Metrics, err: &HandleError) -> nfsstat3 {
    tracing::debug!(error = %err, "bad handle");
    Metrics::count(&metrics.statuses, "NFS3ERR_BADHANDLE");
    nfsstat3::NFS3ERR_BADHANDLE
}

/// Counts a status produced directly by a handler (ROFS, TOOSMALL, ...).
pub fn counted(metrics: &Metrics, status: nfsstat3) -> nfsstat3 {
    Metrics::count(&metrics.statuses, status_name(status));
    status
}

fn status_name(status: nfsstat3) -> &'static str {
    match status {
        nfsstat3::NFS3ERR_ROFS => "NFS3ERR_ROFS",
        nfsstat3::NFS3ERR_TOOSMALL => "NFS3ERR_TOOSMALL",
        nfsstat3::NFS3ERR_BAD_COOKIE => "NFS3ERR_BAD_COOKIE",
        nfsstat3::NFS3ERR_INVAL => "NFS3ERR_INVAL",
        nfsstat3::NFS3ERR_ACCES => "NFS3ERR_ACCES",
        _ => "other",
    }
}

/// The MOUNT status for a refused export, logged with the reason: the
/// client only shows a number.
pub fn mount_status(metrics: &Metrics, path: &[u8], err: &MountError) -> mountstat3 {
    let path = String::from_utf8_lossy(path);
    let (status, name) = match err {
        MountError::Path(_) => (mountstat3::MNT3ERR_ACCES, "MNT3ERR_ACCES"),
        MountError::UnknownRepo(_)
        | MountError::Resolve(_)
        | MountError::NotInTree(_)
        | MountError::PinNotACommit(_) => (mountstat3::MNT3ERR_NOENT, "MNT3ERR_NOENT"),
        MountError::NotADirectory(_) => (mountstat3::MNT3ERR_NOTDIR, "MNT3ERR_NOTDIR"),
        MountError::Build(_) => (mountstat3::MNT3ERR_IO, "MNT3ERR_IO"),
    };
    match err {
        MountError::Build(_) => tracing::error!(%path, error = %err, "MOUNT failed"),
        _ => tracing::warn!(%path, error = %err, "MOUNT refused"),
    }
    count_mount(metrics, name);
    status
}

/// The MOUNT status for an export the export rules keep from the client.
pub fn mount_refused_by_rules(
    metrics: &Metrics,
    path: &[u8],
    peer: Option<std::net::IpAddr>,
) -> mountstat3 {
    tracing::warn!(path = %String::from_utf8_lossy(path), ?peer, "MOUNT refused by the export rules");
    Metrics::count(&metrics.access_refused, "mount");
    count_mount(metrics, "MNT3ERR_ACCES");
    mountstat3::MNT3ERR_ACCES
}

/// Counts a MOUNT answer, both as an answer and as a mount outcome.
fn count_mount(metrics: &Metrics, name: &'static str) {
    Metrics::count(&metrics.statuses, name);
    Metrics::count(&metrics.mounts, name);
}
