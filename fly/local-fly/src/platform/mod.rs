//! The machines, volumes and apps of one local Fly, and their lifecycle
//! with Fly's states: created, starting, started, stopping, stopped,
//! suspending, suspended, replacing, destroying, destroyed.
//!
//! Every change bumps a version on a `watch` channel, which the Machines
//! API's `wait` and the tests follow. A machine's process tree belongs to
//! one boot ([`Boot`]); a watcher task per boot records its end and applies
//! the restart policy when it ended by itself.
//!
//! | module | job |
//! |---|---|
//! | `mod.rs` | the state, apps, images, queries, the proxy's view ([`PlatformBackends`]) |
//! | `lifecycle` | create, boot, start, stop, suspend, update, destroy, wait |
//! | `volumes` | volumes and which machine holds each |
//! | `json` | the Machines API's JSON of a machine, ids, timestamps |

mod json;
mod lifecycle;
mod volumes;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tracing::warn;

use crate::app::FlyToml;
use crate::backends::{Backend, Backends, RouteState, Service};
use crate::network::{Names, Network};
use crate::runtime::Boot;
use json::view;

/// Fly suspends only machines with at most this much memory.
pub const SUSPEND_MAX_MEMORY_MB: u64 = 2048;
/// How long a stop waits for PID 1 unless the config says otherwise.
const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A machine's state, as the Machines API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Replacing,
    Destroying,
    Destroyed,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
            Self::Replacing => "replacing",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(Value::String(text.to_owned())).ok()
    }
}

/// An image the platform can run: its files and its OCI config.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Image {
    pub reference: String,
    /// The image's root filesystem (`/`: the host's own files).
    pub root: PathBuf,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The image's `USER` (`name`, `uid` or `uid:gid`); empty: root.
    #[serde(default)]
    pub user: Option<String>,
}

/// An app: its `fly.toml`, secrets, Flycast address and release counter.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub fly_toml: FlyToml,
    pub secrets: BTreeMap<String, String>,
    pub flycast: Ipv6Addr,
    pub release: u64,
}

/// Why an operation was refused; the API turns each into a status.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("failed_precondition: {0}")]
    Precondition(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug)]
struct MachineRecord {
    id: String,
    number: u16,
    app: String,
    name: String,
    state: MachineState,
    region: String,
    instance_id: String,
    private_ip: Ipv6Addr,
    created_at: String,
    updated_at: String,
    config: Value,
    /// The current boot, while one runs.
    boot: Option<Boot>,
    /// Becomes `true` when the current boot's processes are gone.
    ended: Option<watch::Receiver<bool>>,
    /// Which boot is current: a watcher of an older one changes nothing.
    generation: u64,
    exit_code: Option<i32>,
    restarts: u32,
}

#[derive(Debug, Clone, Serialize)]
struct VolumeRecord {
    id: String,
    name: String,
    region: String,
    size_gb: u32,
    state: String,
    attached_machine_id: Option<String>,
    created_at: String,
}

#[derive(Debug, Default)]
struct State {
    apps: BTreeMap<String, App>,
    machines: BTreeMap<String, MachineRecord>,
    volumes: BTreeMap<String, VolumeRecord>,
    images: BTreeMap<String, Image>,
    next_machine: u16,
    next_app: u16,
}

/// Called with (app, machine id, its `/.fly` folder) for every new
/// machine, before its first boot: where the Machines API socket is served.
pub type MachineHook = Box<dyn Fn(&str, &str, &Path) + Send + Sync>;

/// One local Fly.
pub struct Platform {
    dir: PathBuf,
    region: String,
    network: Network,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    on_machine: std::sync::OnceLock<MachineHook>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("dir", &self.dir)
            .field("region", &self.region)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// A platform keeping its files in `dir`, with network `instance`.
    pub fn new(dir: &Path, instance: u16, region: &str) -> Result<Arc<Self>, PlatformError> {
        std::fs::create_dir_all(dir.join("machines"))
            .and_then(|()| std::fs::create_dir_all(dir.join("volumes")))
            .map_err(|e| PlatformError::Internal(format!("cannot make {}: {e}", dir.display())))?;
        let network =
            Network::create(instance, dir).map_err(|e| PlatformError::Internal(e.to_string()))?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            region: region.to_owned(),
            network,
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
            on_machine: std::sync::OnceLock::new(),
        }))
    }

    /// Sets what runs for every new machine before its first boot (once).
    pub fn on_machine_created(&self, hook: MachineHook) {
        let _ = self.on_machine.set(hook);
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a change: wakes waiters and rewrites the names.
    fn changed(&self, state: &State) {
        let mut names = Names::default();
        for app in state.apps.values() {
            names.flycast.insert(app.name.clone(), app.flycast);
        }
        for machine in state.machines.values() {
            if machine.state == MachineState::Started {
                names
                    .started
                    .push((machine.app.clone(), machine.id.clone(), machine.private_ip));
            }
        }
        if let Err(error) = self.network.write_hosts(&names) {
            warn!(%error, "cannot update the names");
        }
        self.changes.send_modify(|version| *version += 1);
    }

    /// Adds an app (as `fly apps create` with `fly ips allocate-v6
    /// --private`): its Flycast address is put on the host.
    pub fn add_app(
        &self,
        fly_toml: FlyToml,
        secrets: BTreeMap<String, String>,
    ) -> Result<App, PlatformError> {
        let mut state = self.lock();
        if state.apps.contains_key(&fly_toml.app) {
            return Err(PlatformError::Invalid(format!(
                "app {} already exists",
                fly_toml.app
            )));
        }
        state.next_app += 1;
        let flycast = self.network.flycast_address(state.next_app);
        self.network
            .add_flycast(flycast)
            .map_err(|e| PlatformError::Internal(e.to_string()))?;
        let app = App {
            name: fly_toml.app.clone(),
            fly_toml,
            secrets,
            flycast,
            release: 0,
        };
        state.apps.insert(app.name.clone(), app.clone());
        self.changed(&state);
        Ok(app)
    }

    pub fn app(&self, name: &str) -> Option<App> {
        self.lock().apps.get(name).cloned()
    }

    pub fn apps(&self) -> Vec<App> {
        self.lock().apps.values().cloned().collect()
    }

    /// Counts a new release of the app and returns its number.
    pub fn next_release(&self, app: &str) -> Result<u64, PlatformError> {
        let mut state = self.lock();
        let app = state
            .apps
            .get_mut(app)
            .ok_or_else(|| PlatformError::NotFound(format!("app {app}")))?;
        app.release += 1;
        Ok(app.release)
    }

    /// Makes an image runnable under its reference (a push to the registry).
    pub fn add_image(&self, image: Image) {
        let mut state = self.lock();
        state.images.insert(image.reference.clone(), image);
    }

    /// A machine's JSON as the Machines API answers it.
    pub fn machine_view(&self, id: &str) -> Result<Value, PlatformError> {
        let state = self.lock();
        let machine = state
            .machines
            .get(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        Ok(view(machine))
    }

    /// The machines of `app` (destroyed ones left out), as JSON.
    pub fn list_machines(&self, app: &str, metadata: &[(String, String)]) -> Vec<Value> {
        let state = self.lock();
        state
            .machines
            .values()
            .filter(|m| m.app == app && m.state != MachineState::Destroyed)
            .filter(|m| {
                metadata
                    .iter()
                    .all(|(key, value)| m.config["metadata"][key].as_str() == Some(value.as_str()))
            })
            .map(view)
            .collect()
    }

    /// Which app a machine belongs to.
    pub fn app_of(&self, id: &str) -> Option<String> {
        self.lock().machines.get(id).map(|m| m.app.clone())
    }

    pub fn state_of(&self, id: &str) -> Option<MachineState> {
        self.lock().machines.get(id).map(|m| m.state)
    }

    /// The exit code of the machine's last boot, once it ended.
    pub fn exit_code(&self, id: &str) -> Option<i32> {
        self.lock().machines.get(id).and_then(|m| m.exit_code)
    }

    /// The machine's console (every boot's output).
    pub fn log(&self, id: &str) -> Result<String, PlatformError> {
        let path = self.dir.join("machines").join(id).join("log");
        std::fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|_| PlatformError::NotFound(format!("log of machine {id}")))
    }

    /// The folder a machine sees as `/.fly`.
    pub fn fly_dir(&self, id: &str) -> PathBuf {
        self.dir.join("machines").join(id).join("fly")
    }
}

impl Platform {
    /// The machines of `app` as the proxy sees them.
    pub fn backends(&self, app: &str) -> Vec<Backend> {
        let state = self.lock();
        state
            .machines
            .values()
            .filter(|m| m.app == app && m.state != MachineState::Destroyed)
            .map(|m| Backend {
                id: m.id.clone(),
                app: m.app.clone(),
                region: m.region.clone(),
                state: match m.state {
                    MachineState::Started => RouteState::Started,
                    MachineState::Stopped | MachineState::Suspended | MachineState::Created => {
                        RouteState::Startable
                    }
                    _ => RouteState::Unavailable,
                },
                address: IpAddr::V6(m.private_ip),
                services: m.config["services"]
                    .as_array()
                    .map(|services| {
                        services
                            .iter()
                            .filter_map(|s| serde_json::from_value::<Service>(s.clone()).ok())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// The platform as the proxy's [`Backends`]: it can start machines.
#[derive(Debug, Clone)]
pub struct PlatformBackends(pub Arc<Platform>);

impl Backends for PlatformBackends {
    fn machines(&self, app: &str) -> Vec<Backend> {
        self.0.backends(app)
    }

    async fn start(&self, _app: &str, machine: &str) -> Result<(), String> {
        match self.0.start(machine) {
            Ok(_) => {}
            // Someone else started it first: wait for it like they do.
            Err(PlatformError::Precondition(_)) => {}
            Err(error) => return Err(error.to_string()),
        }
        match self
            .0
            .wait(machine, MachineState::Started, Duration::from_secs(60))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("machine {machine} did not start within 60s")),
            Err(error) => Err(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            MachineState::Created,
            MachineState::Started,
            MachineState::Suspended,
            MachineState::Destroyed,
        ] {
            assert_eq!(MachineState::parse(state.as_str()), Some(state));
        }
        assert_eq!(MachineState::parse("running"), None);
    }
}
