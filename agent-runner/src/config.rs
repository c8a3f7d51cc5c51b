//! Defaults that depend on where the runner runs (a Fly machine or not).

use std::net::IpAddr;

/// Host header values the HTTP server accepts by default: loopback names,
/// every address of this machine, and on Fly the app's private names.
pub fn default_allowed_hosts() -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        hosts.extend(interfaces.iter().map(|i| i.ip().to_string()));
    }
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            hosts.push(name.to_owned());
        }
    }
    hosts.extend(fly_hosts(|key| std::env::var(key).ok()));
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The names a Fly machine is reached by over the private network.
fn fly_hosts(env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let Some(app) = env("FLY_APP_NAME").filter(|a| !a.is_empty()) else {
        return Vec::new();
    };
    let mut hosts = vec![format!("{app}.flycast"), format!("{app}.internal")];
    if let Some(machine) = env("FLY_MACHINE_ID").filter(|m| !m.is_empty()) {
        hosts.push(format!("{machine}.vm.{app}.internal"));
    }
    if let Some(ip) = env("FLY_PRIVATE_IP").and_then(|ip| ip.parse::<IpAddr>().ok()) {
        hosts.push(ip.to_string());
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fly_names() {
        let env = |key: &str| match key {
            "FLY_APP_NAME" => Some("agents".to_owned()),
            "FLY_MACHINE_ID" => Some("148e21".to_owned()),
            "FLY_PRIVATE_IP" => Some("fdaa:0:1::2".to_owned()),
            _ => None,
        };
        assert_eq!(
            fly_hosts(env),
            [
                "agents.flycast",
                "agents.internal",
                "148e21.vm.agents.internal",
                "fdaa:0:1::2"
            ]
        );
        assert!(fly_hosts(|_| None).is_empty());
    }

    #[test]
    fn defaults_include_loopback() {
        let hosts = default_allowed_hosts();
        assert!(hosts.iter().any(|h| h == "localhost"));
        assert!(hosts.iter().any(|h| h == "127.0.0.1"));
    }
}
