//! What the proxy needs to know of the machines behind an app, and the one
//! thing it may ask of them (to be started): the seam between
//! [`crate::proxy`] and the platform that runs machines.
//!
//! The services are the machines' own: like Fly's proxy, the local one
//! routes by each machine's `config.services` (flyctl writes `fly.toml`'s
//! services into every machine it deploys; machines made through the
//! Machines API carry their own).

use std::future::Future;
use std::net::IpAddr;

use serde::Deserialize;

/// A machine's lifecycle state as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteState {
    /// Serving.
    Started,
    /// Not serving, but the proxy may start it (stopped, suspended, created).
    Startable,
    /// In transition or gone: neither serving nor startable now.
    Unavailable,
}

/// One machine of an app, as the proxy sees it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub id: String,
    pub app: String,
    pub region: String,
    pub state: RouteState,
    /// Its private (6PN) address: where the proxy connects.
    pub address: IpAddr,
    pub services: Vec<Service>,
}

impl Backend {
    /// The service of this machine that answers on proxy port `port`.
    pub fn service_on(&self, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .find(|service| service.ports.iter().any(|p| p.port == Some(port)))
    }
}

/// A machine's `config.services[]` entry, as the Machines API spells it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Service {
    #[serde(default = "tcp")]
    pub protocol: String,
    pub internal_port: u16,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Start a stopped or suspended machine for a request or connection.
    #[serde(default)]
    pub autostart: Option<bool>,
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
}

impl Service {
    /// Whether the port speaks HTTP (the `http` handler): only then can
    /// the proxy read headers, replay, or pin by instance.
    pub fn is_http(&self, port: u16) -> bool {
        self.ports
            .iter()
            .any(|p| p.port == Some(port) && p.handlers.iter().any(|h| h == "http"))
    }
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// A port the proxy listens on for a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Port {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub handlers: Vec<String>,
}

/// `concurrency`: how many requests or connections one machine takes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Concurrency {
    /// `requests` or `connections`.
    #[serde(rename = "type", default = "connections")]
    pub kind: String,
    #[serde(default)]
    pub soft_limit: Option<u32>,
    #[serde(default)]
    pub hard_limit: Option<u32>,
}

fn connections() -> String {
    "connections".to_owned()
}

/// The machines behind the proxy.
pub trait Backends: Send + Sync + 'static {
    /// Every machine of `app` that is not destroyed.
    fn machines(&self, app: &str) -> Vec<Backend>;

    /// Starts (or resumes) a startable machine and resolves once it is
    /// started; an error says why it could not be.
    fn start(&self, app: &str, machine: &str) -> impl Future<Output = Result<(), String>> + Send;
}
