//! An app's `fly.toml`, read the way flyctl reads it for a deploy, and the
//! machine config flyctl would send for it.
//!
//! Only what the project's apps use is read: `app`, `primary_region`,
//! `kill_signal`, `kill_timeout`, `[env]`, `[mounts]`, `[deploy] strategy`,
//! `[http_service]` (ports 80 and 443 with the `http` handler),
//! `[[services]]`, their `concurrency` and `machine_checks`, and `[[vm]]`.
//! Anything else is ignored, as a key flyctl does not know would be.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

/// Why a `fly.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid fly.toml: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The parts of `fly.toml` the local platform acts on.
#[derive(Debug, Clone, Deserialize)]
pub struct FlyToml {
    pub app: String,
    #[serde(default)]
    pub primary_region: Option<String>,
    #[serde(default)]
    pub kill_signal: Option<String>,
    #[serde(default)]
    pub kill_timeout: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Option<MountsToml>,
    #[serde(default)]
    pub deploy: Option<DeployToml>,
    #[serde(default)]
    pub http_service: Option<HttpServiceToml>,
    #[serde(default)]
    pub services: Vec<ServiceToml>,
    #[serde(default)]
    pub vm: Vec<VmToml>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MountsToml {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeployToml {
    #[serde(default)]
    pub strategy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpServiceToml {
    pub internal_port: u16,
    #[serde(default)]
    pub auto_start_machines: Option<bool>,
    #[serde(default)]
    pub auto_stop_machines: Option<toml::Value>,
    #[serde(default)]
    pub min_machines_running: Option<u32>,
    #[serde(default)]
    pub concurrency: Option<toml::Value>,
    #[serde(default)]
    pub machine_checks: Vec<MachineCheck>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceToml {
    pub internal_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default)]
    pub auto_start_machines: Option<bool>,
    #[serde(default)]
    pub ports: Vec<toml::Value>,
    #[serde(default)]
    pub concurrency: Option<toml::Value>,
    #[serde(default)]
    pub machine_checks: Vec<MachineCheck>,
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// `[[http_service.machine_checks]]` / `[[services.machine_checks]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MachineCheck {
    pub command: Vec<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub kill_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VmToml {
    #[serde(default)]
    pub memory: Option<toml::Value>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub cpu_kind: Option<String>,
}

impl FlyToml {
    pub fn load(path: &Path) -> Result<Self, AppError> {
        let text = std::fs::read_to_string(path).map_err(|source| AppError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| AppError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// The machine checks of every service.
    pub fn machine_checks(&self) -> Vec<MachineCheck> {
        let mut checks: Vec<MachineCheck> = self
            .http_service
            .iter()
            .flat_map(|s| s.machine_checks.clone())
            .collect();
        checks.extend(self.services.iter().flat_map(|s| s.machine_checks.clone()));
        checks
    }

    /// The deploy strategy flyctl would use (`rolling` unless set).
    pub fn strategy(&self) -> String {
        self.deploy
            .as_ref()
            .and_then(|d| d.strategy.clone())
            .unwrap_or_else(|| "rolling".to_owned())
    }

    /// Memory of `[[vm]]`, in MB (`"1gb"`, `"512mb"`, `1024`); Fly's
    /// default is 256.
    pub fn memory_mb(&self) -> Result<u32, AppError> {
        let Some(value) = self.vm.first().and_then(|vm| vm.memory.clone()) else {
            return Ok(256);
        };
        parse_memory(&value)
            .ok_or_else(|| AppError::Invalid(format!("[[vm]] memory {value} is not a size")))
    }

    /// The ports the proxy listens on for this app: 80 for
    /// `[http_service]` (443 is TLS, which the local proxy does not speak),
    /// and every `[[services.ports]]` port.
    pub fn proxy_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = Vec::new();
        if self.http_service.is_some() {
            ports.push(80);
        }
        for service in &self.services {
            for port in &service.ports {
                if let Some(port) = port
                    .get("port")
                    .and_then(toml::Value::as_integer)
                    .and_then(|p| u16::try_from(p).ok())
                {
                    ports.push(port);
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The services as flyctl writes them into a machine's config.
    pub fn machine_services(&self) -> Vec<Value> {
        let mut services = Vec::new();
        if let Some(http) = &self.http_service {
            let mut service = json!({
                "protocol": "tcp",
                "internal_port": http.internal_port,
                "ports": [
                    {"port": 80, "handlers": ["http"]},
                    {"port": 443, "handlers": ["tls", "http"]},
                ],
                "autostart": http.auto_start_machines.unwrap_or(true),
                "min_machines_running": http.min_machines_running.unwrap_or(0),
            });
            if let Some(concurrency) = &http.concurrency {
                service["concurrency"] = toml_to_json(concurrency);
            }
            if let Some(autostop) = &http.auto_stop_machines {
                service["autostop"] = toml_to_json(autostop);
            }
            services.push(service);
        }
        for toml_service in &self.services {
            let mut service = json!({
                "protocol": toml_service.protocol,
                "internal_port": toml_service.internal_port,
                "ports": toml_service.ports.iter().map(toml_to_json).collect::<Vec<_>>(),
                "autostart": toml_service.auto_start_machines.unwrap_or(true),
            });
            if let Some(concurrency) = &toml_service.concurrency {
                service["concurrency"] = toml_to_json(concurrency);
            }
            services.push(service);
        }
        services
    }

    /// The config flyctl sends for a machine of this app running `image`
    /// as release `release` (without its volume, which is per machine).
    pub fn machine_config(&self, image: &str, release: u64) -> Result<Value, AppError> {
        let memory_mb = self.memory_mb()?;
        let vm = self.vm.first();
        let mut env = self.env.clone();
        env.insert("FLY_PROCESS_GROUP".to_owned(), "app".to_owned());
        if let Some(region) = &self.primary_region {
            env.insert("PRIMARY_REGION".to_owned(), region.clone());
        }
        let mut config = json!({
            "image": image,
            "env": env,
            "guest": {
                "cpu_kind": vm.and_then(|vm| vm.cpu_kind.clone()).unwrap_or_else(|| "shared".to_owned()),
                "cpus": vm.and_then(|vm| vm.cpus).unwrap_or(1),
                "memory_mb": memory_mb,
            },
            "services": self.machine_services(),
            "metadata": {
                "fly_platform_version": "v2",
                "fly_process_group": "app",
                "fly_release_id": format!("rel-{release}"),
                "fly_release_version": release.to_string(),
                "fly_flyctl_version": "local-fly",
            },
            "restart": {"policy": "on-failure", "max_retries": 10},
        });
        let mut stop = serde_json::Map::new();
        if let Some(signal) = &self.kill_signal {
            stop.insert("signal".to_owned(), json!(signal));
        }
        if let Some(timeout) = self.kill_timeout {
            stop.insert("timeout".to_owned(), json!(format!("{timeout}s")));
        }
        if !stop.is_empty() {
            config["stop_config"] = Value::Object(stop);
        }
        Ok(config)
    }
}

/// `"1gb"`, `"512mb"`, `"2048"` or `2048` → MB.
fn parse_memory(value: &toml::Value) -> Option<u32> {
    match value {
        toml::Value::Integer(mb) => u32::try_from(*mb).ok(),
        toml::Value::String(text) => {
            let text = text.trim().to_ascii_lowercase();
            if let Some(gb) = text.strip_suffix("gb") {
                gb.trim().parse::<u32>().ok()?.checked_mul(1024)
            } else if let Some(mb) = text.strip_suffix("mb") {
                mb.trim().parse().ok()
            } else {
                text.parse().ok()
            }
        }
        _ => None,
    }
}

fn toml_to_json(value: &toml::Value) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_fly_toml(app: &str) -> FlyToml {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(app)
            .join("fly.toml");
        FlyToml::load(&path).expect("the project's fly.toml")
    }

    #[test]
    fn the_projects_apps_read() {
        let runner = repo_fly_toml("agent-runner");
        assert_eq!(runner.strategy(), "canary");
        assert_eq!(runner.memory_mb().unwrap(), 2048);
        assert_eq!(runner.machine_checks().len(), 1);
        assert!(
            runner.mounts.is_none(),
            "canary needs machines without volumes"
        );
        let config = runner.machine_config("img", 3).unwrap();
        assert_eq!(config["services"][0]["internal_port"], 8080);
        assert_eq!(config["services"][0]["ports"][0]["port"], 80);
        assert_eq!(config["services"][0]["autostart"], true);
        assert_eq!(config["metadata"]["fly_release_version"], "3");
        assert_eq!(config["stop_config"]["signal"], "SIGTERM");

        let nfsd = repo_fly_toml("git-nfsd");
        assert_eq!(nfsd.strategy(), "rolling");
        let services = nfsd.machine_services();
        assert_eq!(services[0]["internal_port"], 2049);
        assert_eq!(services[0]["ports"][0]["port"], 2049);
        assert_eq!(nfsd.memory_mb().unwrap(), 1024);

        let coordinator = repo_fly_toml("coordinator");
        assert_eq!(coordinator.memory_mb().unwrap(), 256);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory(&toml::Value::String("1gb".into())), Some(1024));
        assert_eq!(
            parse_memory(&toml::Value::String("512MB".into())),
            Some(512)
        );
        assert_eq!(parse_memory(&toml::Value::Integer(2048)), Some(2048));
        assert_eq!(parse_memory(&toml::Value::String("lots".into())), None);
    }
}
