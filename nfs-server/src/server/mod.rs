//! The TCP listener: accepts connections within limits and stops on
//! shutdown, draining the connections it started.

mod access;
mod connection;
mod refusals;

pub use access::{AccessList, ExportRule, ExportRuleError};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Context;
use crate::fs::Filesystem;
use crate::metrics::Metrics;
use refusals::RefusalLog;

/// Bounds on what one client can make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest RPC record accepted; larger ones close the connection.
    pub max_record_bytes: usize,
    /// Calls of one connection being answered at once.
    pub max_in_flight: usize,
    /// Open connections; more are closed on accept.
    pub max_connections: usize,
    /// Open connections from one client address; more from it are closed
    /// on accept, so one client cannot take every slot (the Linux client
    /// uses one connection per server, `nconnect` up to 16).
    pub max_connections_per_client: usize,
    /// A connection with no call in flight that sends nothing for this long
    /// is closed (clients reconnect when they need to; Linux's closes its
    /// own idle connections after 5 minutes).
    pub idle_timeout: std::time::Duration,
    /// Once a record has begun, all of it must arrive within this time: a
    /// client trickling bytes (slowloris) cannot hold a connection forever.
    pub record_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A WRITE of wtmax plus headers fits; everything else is far smaller.
            max_record_bytes: crate::nfs3::MAX_READ as usize + 64 * 1024,
            max_in_flight: 64,
            max_connections: 1024,
            max_connections_per_client: 64,
            idle_timeout: std::time::Duration::from_secs(900),
            record_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    ctx: Arc<Context>,
    limits: Limits,
    access: Arc<AccessList>,
}

impl Server {
    pub async fn bind(
        addr: SocketAddr,
        fs: Arc<Filesystem>,
        metrics: Arc<Metrics>,
        limits: Limits,
        access: AccessList,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let access = Arc::new(access);
        Ok(Self {
            listener,
            ctx: Arc::new(Context {
                fs,
                metrics,
                port,
                access: Arc::clone(&access),
            }),
            limits,
            access,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then waits for open connections
    /// to finish the calls they are answering.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let per_client = Arc::new(std::sync::Mutex::new(HashMap::<IpAddr, usize>::new()));
        let mut full = RefusalLog::new("too many connections; closing");
        let mut greedy = RefusalLog::new("too many connections from one client; closing");
        let mut outsiders = RefusalLog::new("refusing a client; its calls get AUTH_ERROR");
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                full.refused(peer, &format_args!("limit {}", self.limits.max_connections));
                Metrics::count(&self.ctx.metrics.connections_closed, "connection_limit");
                continue;
            };
            let Some(client_slot) = ClientSlot::take(
                &per_client,
                peer.ip(),
                self.limits.max_connections_per_client,
            ) else {
                greedy.refused(
                    peer,
                    &format_args!(
                        "limit {} per client",
                        self.limits.max_connections_per_client
                    ),
                );
                Metrics::count(
                    &self.ctx.metrics.connections_closed,
                    "client_connection_limit",
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            let ctx = Arc::clone(&self.ctx);
            let limits = self.limits;
            let stop = shutdown.child_token();
            let refusal = self.access.refusal(peer);
            if let Some(why) = refusal {
                outsiders.refused(
                    peer,
                    &format_args!("{why} (allowed: {:?})", self.access.ranges()),
                );
            }
            let refused = refusal.is_some();
            connections.spawn(async move {
                connection::serve(stream, peer, ctx, limits, stop, refused).await;
                drop(client_slot);
                drop(slot);
            });
        }
        while connections.join_next().await.is_some() {}
    }
}

/// One of a client address's connection slots, given back on drop.
struct ClientSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl ClientSlot {
    fn take(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        client: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = map.entry(client).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(Self {
            counts: Arc::clone(counts),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.client);
            }
        }
    }
}
