//! Who may talk to the server, and which repositories each client may use.
//! NFSv3 has no real authentication, so the operator decides by client
//! address (and optionally a privileged source port): calls from anywhere
//! else are answered with an RPC authentication error (and one log line per
//! connection), so clients report a refusal rather than a dead server.
//! Export rules then narrow what an allowed client may mount or reach by
//! handle (handles are predictable, so mounting is not the only door).

use std::net::IpAddr;
use std::str::FromStr;

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;
use thiserror::Error;

/// Client address ranges allowed to call, and whether their source port
/// must be privileged (below 1024, so only root on the client can connect).
#[derive(Debug, Clone)]
pub struct AccessList {
    allowed: Vec<IpNet>,
    privileged_port: bool,
    exports: Vec<ExportRule>,
}

/// `CIDR=GLOB`: clients in the range may use repositories whose export
/// name matches the glob (`*` stays within one `/` component, `**` spans
/// several).
#[derive(Debug, Clone)]
pub struct ExportRule {
    range: IpNet,
    glob: String,
    matcher: GlobMatcher,
}

/// Why an export rule did not parse.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportRuleError {
    #[error("export rule {0:?} is not CIDR=GLOB")]
    Shape(String),
    #[error("export rule range {0:?}: {1}")]
    Range(String, ipnet::AddrParseError),
    #[error("export rule glob {0:?}: {1}")]
    Glob(String, globset::Error),
}

impl FromStr for ExportRule {
    type Err = ExportRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (range, glob) = s
            .split_once('=')
            .filter(|(r, g)| !r.is_empty() && !g.is_empty())
            .ok_or_else(|| ExportRuleError::Shape(s.to_owned()))?;
        let range = range
            .parse()
            .map_err(|e| ExportRuleError::Range(range.to_owned(), e))?;
        let matcher = GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| ExportRuleError::Glob(glob.to_owned(), e))?
            .compile_matcher();
        Ok(Self {
            range,
            glob: glob.to_owned(),
            matcher,
        })
    }
}

impl std::fmt::Display for ExportRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.range, self.glob)
    }
}

impl AccessList {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed,
            privileged_port: false,
            exports: Vec::new(),
        }
    }

    /// Restricts which repositories each client may use. With no rules
    /// every allowed client may use every repository; with rules, a client
    /// may use only the repositories some rule covering its address names.
    pub fn with_export_rules(mut self, rules: Vec<ExportRule>) -> Self {
        self.exports = rules;
        self
    }

    /// Whether the client at `peer` may use the repository `repo`. An
    /// unknown peer is refused whenever there are rules.
    pub fn may_use(&self, peer: Option<IpAddr>, repo: &str) -> bool {
        if self.exports.is_empty() {
            return true;
        }
        let Some(peer) = peer.map(unmap) else {
            return false;
        };
        self.exports
            .iter()
            .any(|rule| rule.range.contains(&peer) && rule.matcher.is_match(repo))
    }

    pub fn export_rules(&self) -> &[ExportRule] {
        &self.exports
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
        let addr = unmap(addr);
        self.allowed.iter().any(|net| net.contains(&addr))
    }

    pub fn ranges(&self) -> &[IpNet] {
        &self.allowed
    }
}

/// A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
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

    #[test]
    fn export_rules_narrow_repositories_per_range() {
        let rules = ["10.0.0.0/8=org/*", "10.1.0.0/16=app", "::1/128=**"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let list = AccessList::new(vec!["0.0.0.0/0".parse().unwrap()]).with_export_rules(rules);
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(list.may_use(ip("10.2.3.4"), "org/lib"));
        assert!(
            !list.may_use(ip("10.2.3.4"), "org/lib/deeper"),
            "* stays in one component"
        );
        assert!(!list.may_use(ip("10.2.3.4"), "app"));
        assert!(
            list.may_use(ip("10.1.3.4"), "app"),
            "a second rule for a narrower range"
        );
        assert!(list.may_use(ip("::ffff:10.2.3.4"), "org/lib"), "v4-mapped");
        assert!(list.may_use(ip("::1"), "org/lib/deeper"));
        assert!(!list.may_use(ip("192.168.0.1"), "app"), "no rule covers it");
        assert!(!list.may_use(None, "app"), "an unknown peer");
        let open = AccessList::new(Vec::new());
        assert!(open.may_use(None, "anything"), "no rules: no narrowing");
    }

    #[test]
    fn bad_export_rules_are_explained() {
        for (bad, says) in [
            ("10.0.0.0/8", "is not CIDR=GLOB"),
            ("=app", "is not CIDR=GLOB"),
            ("10.0.0.0/8=", "is not CIDR=GLOB"),
            ("10.0.0/8=app", "range"),
            ("10.0.0.0/8=a[", "glob"),
        ] {
            let err = bad.parse::<ExportRule>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let rule: ExportRule = "fdaa::/16=org/**".parse().unwrap();
        assert_eq!(rule.to_string(), "fdaa::/16=org/**");
    }
}
