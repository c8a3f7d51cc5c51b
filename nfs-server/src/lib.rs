//! `git-nfsd`: serves the repositories of a store as lazy, read-only
//! worktrees over NFSv3.
//!
//! A MOUNT of `/<repo>@<rev>` pins one commit; the worktree is synthesized
//! from that commit's trees, and file contents are decoded from packed
//! objects only when a client READs them. Layers, from the wire inwards:
//!
//! - [`rpc`]: record marking, call headers, bounded XDR decoding.
//! - [`server`]: listener and connections, limits and shutdown.
//! - [`relay`]: `git-nfsd relay`, on an agent's machine: its NFS
//!   connections to whichever replica answers.
//! - [`dispatch`]: the program table; [`nfs3`], [`mount`], [`acl`] and
//!   [`portmap`] are the programs; [`handle`] and [`status`] convert between
//!   the wire and the model.
//! - [`fs`]: the filesystem model (no NFS types), over [`store`] (`gix`,
//!   caches, read-only).
//! - [`fuzzing`]: the entry points of the fuzz targets in `nfs-server/fuzz`.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use nfs_server::{fs::{Filesystem, Owner}, metrics::Metrics, server::{AccessList, Limits, Server}, store::{Spill, Store}};
//! let store = Arc::new(Store::open_dir("/srv/store".as_ref())?);
//! let metrics = Arc::new(Metrics::new());
//! let spill = Spill::temporary(4 << 30)?;
//! let fs = Arc::new(Filesystem::new(store, Owner::default(), 256 << 20, spill, Arc::clone(&metrics)));
//! let access = AccessList::default_for_environment(false);
//! let server = Server::bind("127.0.0.1:2049".parse()?, fs, metrics, Limits::default(), access).await?;
//! server.run(tokio_util::sync::CancellationToken::new()).await;
//! # Ok(()) }
//! ```

pub mod acl;
pub mod dispatch;
pub mod fs;
pub mod fuzzing;
pub mod handle;
pub mod metrics;
pub mod mount;
pub mod nfs3;
pub mod portmap;
pub mod relay;
pub mod rpc;
pub mod server;
pub mod status;
pub mod store;
