//! Who may talk to the server. NFSv3 has no real authentication, so the
//! operator decides by client address: calls from anywhere else are
//! answered with an RPC authentication error (and one log line per
//! connection), so clients report a refusal rather than a dead server.

use std::net::IpAddr;

use ipnet::IpNet;

/// Client address ranges allowed to call.
#[derive(Debug, Clone)]
pub struct AccessList {
    allowed: Vec<IpNet>,
}

impl AccessList {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
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
        Self { allowed }
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
    fn explicit_ranges() {
        let list = AccessList::new(vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(list.allows("10.1.2.3".parse().unwrap()));
        assert!(list.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!list.allows("127.0.0.1".parse().unwrap()));
    }
}
