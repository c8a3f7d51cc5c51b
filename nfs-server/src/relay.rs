//! `git-nfsd relay`: a TCP relay on an agent's machine between the kernel's
//! NFS client and git-nfsd's replicas.
//!
//! On Fly, `<app>.internal` names every started git-nfsd machine, and
//! connecting to one directly keeps the agent's own address on the
//! connection, so `--max-connections-per-client` and `--export-allow` see
//! each agent (Flycast connections all come from the proxy's address).
//! But the kernel mounts one address and retries only that one: when that
//! machine stops, the mount hangs. The relay resolves the name again for
//! every new connection and takes the first address that answers, starting
//! with the one that worked last; when its upstream goes, it closes the
//! client's connection, and the kernel reconnects (to the relay) and
//! retransmits its calls to whichever replica answers now. File handles are
//! the same on every replica of a store, so nothing reaches git.
//!
//! A client connecting from a privileged port (root's kernel client) is
//! relayed from a privileged port too, when the relay runs as root, so
//! `--require-privileged-port` keeps its meaning; other clients are relayed
//! from ordinary ports.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a client's connection is held before it is closed when no
/// replica answers.
const NO_REPLICA_PAUSE: Duration = Duration::from_secs(1);

/// The privileged source ports the relay tries, highest first, as the
/// kernel's own client does (`min_resvport`..`max_resvport`).
const RESERVED_PORTS: std::ops::RangeInclusive<u16> = 665..=1023;

/// Where the relay forwards to: a name (or address) and port, looked up
/// again for every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("{text:?} has no valid port"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    listener: TcpListener,
    /// Tried in order (each name's addresses as the resolver gives them),
    /// after the one that answered last.
    upstreams: Vec<Upstream>,
    connect_timeout: Duration,
    /// The address that answered last: tried first next time, so clients
    /// stay on one replica while it lives.
    last_good: Mutex<Option<SocketAddr>>,
}

impl Relay {
    pub async fn bind(
        listen: SocketAddr,
        upstreams: Vec<Upstream>,
        connect_timeout: Duration,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(listen).await?,
            upstreams,
            connect_timeout,
            last_good: Mutex::new(None),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Relays connections until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let relay = std::sync::Arc::new(self);
        loop {
            let accepted = tokio::select! {
                accepted = relay.listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let relay = std::sync::Arc::clone(&relay);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = relay.serve(client, peer) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }

    async fn serve(&self, mut client: TcpStream, peer: SocketAddr) {
        let privileged = peer.port() < 1024;
        let Some((mut upstream, address)) = self.connect(privileged).await else {
            // The kernel reconnects at once when its connection closes:
            // hold it a while first, or a store with no replica up turns
            // into a busy loop of accepts and log lines.
            tracing::warn!(%peer, upstreams = ?self.upstreams, "no replica answers; closing the client's connection in {NO_REPLICA_PAUSE:?}");
            tokio::time::sleep(NO_REPLICA_PAUSE).await;
            return;
        };
        tracing::info!(%peer, %address, "relaying");
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => {
                tracing::info!(%peer, %address, sent, received, "connection ended");
            }
            Err(error) => {
                tracing::info!(%peer, %address, %error, "connection broke; the client reconnects");
            }
        }
    }

    /// Connects to the first replica that answers, the last good one first.
    async fn connect(&self, privileged: bool) -> Option<(TcpStream, SocketAddr)> {
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for upstream in &self.upstreams {
            match tokio::net::lookup_host((upstream.host.as_str(), upstream.port)).await {
                Ok(found) => addresses.extend(found),
                Err(error) => tracing::warn!(%upstream, %error, "cannot resolve the upstream"),
            }
        }
        let last = *self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = last
            && let Some(position) = addresses.iter().position(|a| *a == last)
        {
            addresses.rotate_left(position);
        }
        for address in addresses {
            let attempt = tokio::time::timeout(self.connect_timeout, connect(address, privileged));
            match attempt.await {
                Ok(Ok(stream)) => {
                    *self.last_good.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
                    return Some((stream, address));
                }
                Ok(Err(error)) => tracing::info!(%address, %error, "replica refused"),
                Err(_) => tracing::info!(%address, "replica did not answer in time"),
            }
        }
        None
    }
}

/// Connects to `address`, from a privileged port if asked and allowed.
async fn connect(address: SocketAddr, privileged: bool) -> std::io::Result<TcpStream> {
    if privileged {
        for port in RESERVED_PORTS.rev() {
            let socket = if address.is_ipv6() {
                TcpSocket::new_v6()?
            } else {
                TcpSocket::new_v4()?
            };
            let local: SocketAddr = if address.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, port).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, port).into()
            };
            match socket.bind(local) {
                Ok(()) => return socket.connect(address).await,
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => continue,
                // Not root: relay from an ordinary port.
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => break,
                Err(error) => return Err(error),
            }
        }
    }
    TcpStream::connect(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams() {
        let upstream: Upstream = "nfsd.internal:2049".parse().unwrap();
        assert_eq!(upstream.host, "nfsd.internal");
        assert_eq!(upstream.port, 2049);
        let v6: Upstream = "[fdaa::3]:2049".parse().unwrap();
        assert_eq!(v6.host, "fdaa::3");
        assert_eq!(v6.to_string(), "[fdaa::3]:2049");
        assert!("nfsd".parse::<Upstream>().is_err());
        assert!(":2049".parse::<Upstream>().is_err());
        assert!("nfsd:port".parse::<Upstream>().is_err());
    }
}
