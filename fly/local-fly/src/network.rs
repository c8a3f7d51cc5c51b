//! The private network (6PN): IPv6 only, one bridge, one network namespace
//! per machine with its own `fdaa:` address, and the names Fly's DNS gives
//! (`<app>.internal`, `<id>.vm.<app>.internal`, `<app>.flycast`,
//! `_api.internal`) as a hosts file every machine sees.
//!
//! The root namespace is the "host": it holds the bridge, the proxy's
//! Flycast addresses and the Machines API. Machines get no IPv4 address but
//! loopback, so nothing between them goes over IPv4, as on Fly.
//!
//! Everything is made with iproute2's `ip`, which the tests' machines have
//! (the host's, copied into the QEMU guest with its libraries).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip` (iproute2): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot write the hosts file {path}: {source}")]
    Hosts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One local Fly's network. `instance` keeps several apart on one host.
#[derive(Debug)]
pub struct Network {
    instance: u16,
    bridge: String,
    hosts_file: PathBuf,
}

/// What the hosts file lists.
#[derive(Debug, Default, Clone)]
pub struct Names {
    /// app → its Flycast address.
    pub flycast: BTreeMap<String, Ipv6Addr>,
    /// (app, machine id, address) of every started machine.
    pub started: Vec<(String, String, Ipv6Addr)>,
}

impl Network {
    /// Makes the bridge `lfly<instance>` with the host's addresses: the
    /// gateway (the proxy's own address and the Machines API's).
    pub fn create(instance: u16, dir: &Path) -> Result<Self, NetworkError> {
        let network = Self {
            instance,
            bridge: format!("lfly{instance}"),
            hosts_file: dir.join("hosts"),
        };
        // A previous run that was killed may have left its bridge.
        let _ = ip(&["link", "del", &network.bridge]);
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", network.gateway()),
            "dev",
            &network.bridge,
            "nodad",
        ])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        network.write_hosts(&Names::default())?;
        Ok(network)
    }

    /// The host's address on the private network: machines' default route,
    /// the proxy's source address, `_api.internal`.
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfdaa, 0, self.instance, 0, 0, 0, 0, 1)
    }

    /// Machine number `n`'s address.
    pub fn machine_address(&self, n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfdaa, 0, self.instance, 0, 0, 0, 0x100, n)
    }

    /// App number `n`'s Flycast address, served by the proxy on the host.
    pub fn flycast_address(&self, n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfdaa, 0, self.instance, 0xf, 0, 0, 0, n)
    }

    /// The network namespace of machine number `n`.
    pub fn namespace(&self, n: u16) -> String {
        format!("lfly{}-m{n}", self.instance)
    }

    /// The file every machine sees as `/etc/hosts`.
    pub fn hosts_file(&self) -> &Path {
        &self.hosts_file
    }

    /// Puts a Flycast address on the host, for the proxy to listen on.
    pub fn add_flycast(&self, address: Ipv6Addr) -> Result<(), NetworkError> {
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address}/128"),
            "dev",
            &self.bridge,
            "nodad",
        ])
    }

    /// Makes machine `n`'s namespace, its link to the bridge and its
    /// address; only loopback has IPv4.
    pub fn attach(&self, n: u16) -> Result<(), NetworkError> {
        let namespace = self.namespace(n);
        let host_end = format!("lf{}v{n}", self.instance);
        let _ = ip(&["netns", "del", &namespace]);
        let _ = ip(&["link", "del", &host_end]);
        ip(&["netns", "add", &namespace])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", namespace.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", self.machine_address(n)),
            "dev",
            "eth0",
            "nodad",
        ])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        Ok(())
    }

    /// Removes machine `n`'s namespace and link.
    pub fn detach(&self, n: u16) {
        let _ = ip(&["netns", "del", &self.namespace(n)]);
        let _ = ip(&["link", "del", &format!("lf{}v{n}", self.instance)]);
    }

    /// Rewrites the hosts file in place (machines bind-mount the file, so
    /// a rename would leave them the old one). `.internal` names list
    /// started machines only, as Fly's DNS does.
    pub fn write_hosts(&self, names: &Names) -> Result<(), NetworkError> {
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        let _ = writeln!(text, "{}\t_api.internal", self.gateway());
        for (app, address) in &names.flycast {
            let _ = writeln!(text, "{address}\t{app}.flycast");
        }
        for (app, machine, address) in &names.started {
            let _ = writeln!(
                text,
                "{address}\t{app}.internal {machine}.vm.{app}.internal"
            );
        }
        std::fs::write(&self.hosts_file, text).map_err(|source| NetworkError::Hosts {
            path: self.hosts_file.clone(),
            source,
        })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetworkError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
