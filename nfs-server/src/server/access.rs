//! Who may talk to the server. NFSv3 has no real authentication, so the
//! operator decides by client address (and optionally a privileged source
//! port): calls from anywhere else are
//! answered with an RPC authentication error (and one log line per
//! connection), so clients report a refusal rather than a dead server.

use std::net::IpAddr;

use ipnet::IpNet;

/// Client address ranges allowed to call, and whether their source port
/// must be privileged (below 1024, so only root on the client can connect).
#[derive(Debug, Clone)]
pub struct AccessList {
    allowed: Vec<IpNet>,
    privileged_port: bool,
}

impl AccessList {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed,
            privileged_port: false,
        }
    }

    /// Also require a source port below 1024 (the classic `secure` export
    /// option): only root on the client can then talk to the server.
    pub fn require_privileged_port(mut self, required: bool) -> Self {
        self.privileged_port = required;
        self
    }

    /// Why a client is refused, or `None` when it may call.
    pub fn refusal(&self, peer: std::net::SocketAddr) -> Option<&'static str> {
        if !self.allows(peer.ip()) {
            Some("client address not allowed")
        } else if self.privileged_port && peer.port() >= 1024 {
            Some("client source port is not privileged")
        } else {
            None
        }
    }

    /// Loopback only; on Fly (when `FLY_APP_NAME` is set) also its private
    /// IPv6 network, fdaa::/16, which Flycast and the 6PN use.
    pub fn default_for_environment(on_fly: bool) -> Self {
        let mut allowed: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().expect("literal range"),
            "::1/128".parse().expect("literal range"),
        ];
        if on_fly {
            allowed.push("fdaa::/16".parse().expect("literal range"));
        }
        Self::new(allowed)
    }

    pub fn allows(&self, addr: IpAddr) -> bool {
        // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.allowed.iter().any(|net| net.contains(&addr))
    }

    pub fn ranges(&self) -> &[IpNet] {
        &self.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_loopback_only_and_fly_adds_6pn() {
        let local = AccessList::default_for_environment(false);
        assert!(local.allows("127.0.0.1".parse().unwrap()));
        assert!(local.allows("127.3.4.5".parse().unwrap()));
        assert!(local.allows("::1".parse().unwrap()));
        assert!(local.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!local.allows("10.0.0.1".parse().unwrap()));
        assert!(!local.allows("fdaa:0:1::2".parse().unwrap()));
        let fly = AccessList::default_for_environment(true);
        assert!(fly.allows("fdaa:0:1::2".parse().unwrap()));
        assert!(!fly.allows("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn privileged_port_check() {
        let list = AccessList::default_for_environment(false).require_privileged_port(true);
        assert_eq!(list.refusal("127.0.0.1:800".parse().unwrap()), None);
        assert!(list.refusal("127.0.0.1:40000".parse().unwrap()).is_some());
        assert!(list.refusal("10.0.0.1:800".parse().unwrap()).is_some());
        let open = AccessList::default_for_environment(false);
        assert_eq!(open.refusal("127.0.0.1:40000".parse().unwrap()), None);
    }

    #[test]
    fn explicit_ranges() {
        let list = AccessList::new(vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(list.allows("10.1.2.3".parse().unwrap()));
        assert!(list.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!list.allows("127.0.0.1".parse().unwrap()));
    }
}
