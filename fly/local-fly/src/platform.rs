//! The machines, volumes and apps of one local Fly, and their lifecycle
//! with Fly's states: created, starting, started, stopping, stopped,
//! suspending, suspended, replacing, destroying, destroyed.
//!
//! Every change bumps a version on a `watch` channel, which the Machines
//! API's `wait` and the tests follow. A machine's process tree belongs to
//! one boot ([`Boot`]); a watcher task per boot records its end and applies
//! the restart policy when it ended by itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::FlyToml;
use crate::backends::{Backend, Backends, RouteState, Service};
use crate::network::{Names, Network};
use crate::runtime::{Boot, BootSpec};

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

    // ----- volumes -----

    pub fn create_volume(
        &self,
        app: &str,
        name: &str,
        size_gb: u32,
    ) -> Result<Value, PlatformError> {
        let mut state = self.lock();
        if !state.apps.contains_key(app) {
            return Err(PlatformError::NotFound(format!("app {app}")));
        }
        let id = format!("vol_{}", random_hex(16));
        let path = self.dir.join("volumes").join(&id);
        std::fs::create_dir_all(&path)
            .map_err(|e| PlatformError::Internal(format!("cannot make {}: {e}", path.display())))?;
        let volume = VolumeRecord {
            id: id.clone(),
            name: name.to_owned(),
            region: self.region.clone(),
            size_gb,
            state: "created".to_owned(),
            attached_machine_id: None,
            created_at: now_rfc3339(),
        };
        let view = serde_json::to_value(&volume).unwrap_or(Value::Null);
        state.volumes.insert(id, volume);
        Ok(view)
    }

    pub fn delete_volume(&self, id: &str) -> Result<Value, PlatformError> {
        let mut state = self.lock();
        let volume = state
            .volumes
            .get(id)
            .ok_or_else(|| PlatformError::NotFound(format!("volume {id}")))?;
        if let Some(machine) = &volume.attached_machine_id
            && state
                .machines
                .get(machine)
                .is_some_and(|m| m.state != MachineState::Destroyed)
        {
            return Err(PlatformError::Precondition(format!(
                "volume {id} is attached to machine {machine}"
            )));
        }
        let mut volume = state
            .volumes
            .remove(id)
            .ok_or_else(|| PlatformError::NotFound(format!("volume {id}")))?;
        let _ = std::fs::remove_dir_all(self.dir.join("volumes").join(id));
        volume.state = "destroyed".to_owned();
        Ok(serde_json::to_value(&volume).unwrap_or(Value::Null))
    }

    pub fn list_volumes(&self, app: &str) -> Vec<Value> {
        let _ = app;
        self.lock()
            .volumes
            .values()
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect()
    }

    // ----- machines -----

    /// `POST /machines`: a new machine of `app`, booted unless
    /// `skip_launch`.
    pub fn create_machine(
        self: &Arc<Self>,
        app: &str,
        config: Value,
        skip_launch: bool,
    ) -> Result<Value, PlatformError> {
        let id = {
            let mut state = self.lock();
            if !state.apps.contains_key(app) {
                return Err(PlatformError::NotFound(format!("app {app}")));
            }
            check_config(&state, &config)?;
            state.next_machine += 1;
            let number = state.next_machine;
            self.network
                .attach(number)
                .map_err(|e| PlatformError::Internal(e.to_string()))?;
            let id = random_hex(14);
            attach_volume(&mut state, &config, &id)?;
            let now = now_rfc3339();
            let record = MachineRecord {
                id: id.clone(),
                number,
                app: app.to_owned(),
                name: format!("machine-{number}"),
                state: MachineState::Created,
                region: self.region.clone(),
                instance_id: new_instance_id(),
                private_ip: self.network.machine_address(number),
                created_at: now.clone(),
                updated_at: now,
                config,
                boot: None,
                ended: None,
                generation: 0,
                exit_code: None,
                restarts: 0,
            };
            state.machines.insert(id.clone(), record);
            self.changed(&state);
            id
        };
        info!(app, machine = %id, "created machine");
        let fly_dir = self.fly_dir(&id);
        let _ = std::fs::create_dir_all(&fly_dir);
        if let Some(hook) = self.on_machine.get() {
            hook(app, &id, &fly_dir);
        }
        if !skip_launch {
            self.boot(&id)?;
        }
        self.machine_view(&id)
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

    /// Boots the machine's current config: a new generation.
    fn boot(self: &Arc<Self>, id: &str) -> Result<(), PlatformError> {
        let (spec, generation) = {
            let mut state = self.lock();
            let spec = self.boot_spec(&state, id)?;
            let machine = state
                .machines
                .get_mut(id)
                .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
            machine.generation += 1;
            machine.state = MachineState::Starting;
            (spec, machine.generation)
        };
        let (boot, child) = match Boot::spawn(&spec) {
            Ok(spawned) => spawned,
            Err(error) => {
                let mut state = self.lock();
                if let Some(machine) = state.machines.get_mut(id) {
                    machine.state = MachineState::Stopped;
                }
                self.changed(&state);
                return Err(PlatformError::Internal(format!(
                    "machine {id} cannot boot: {error}"
                )));
            }
        };
        let (ended_tx, ended_rx) = watch::channel(false);
        {
            let mut state = self.lock();
            if let Some(machine) = state.machines.get_mut(id) {
                machine.boot = Some(boot);
                machine.ended = Some(ended_rx);
                machine.state = MachineState::Started;
                machine.exit_code = None;
                machine.updated_at = now_rfc3339();
            }
            self.changed(&state);
        }
        info!(machine = %id, generation, "booted machine");
        let platform = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut child = child;
            let code = match child.wait().await {
                Ok(status) => status.code().unwrap_or(128),
                Err(_) => 128,
            };
            let _ = ended_tx.send(true);
            platform.boot_ended(&id, generation, code);
        });
        Ok(())
    }

    /// A boot's processes are gone: record how, and restart the machine if
    /// it ended by itself and its policy says so.
    fn boot_ended(self: &Arc<Self>, id: &str, generation: u64, code: i32) {
        let restart = {
            let mut state = self.lock();
            let Some(machine) = state.machines.get_mut(id) else {
                return;
            };
            if machine.generation != generation {
                return;
            }
            machine.boot = None;
            machine.exit_code = Some(code);
            machine.updated_at = now_rfc3339();
            let by_itself = matches!(
                machine.state,
                MachineState::Started | MachineState::Suspended
            );
            let policy = machine.config["restart"]["policy"]
                .as_str()
                .unwrap_or("on-failure")
                .to_owned();
            let max = machine.config["restart"]["max_retries"]
                .as_u64()
                .unwrap_or(10);
            let restart = by_itself
                && (policy == "always" || (policy == "on-failure" && code != 0))
                && u64::from(machine.restarts) < max;
            info!(machine = %id, code, by_itself, restart, "machine's process ended");
            if restart {
                machine.restarts += 1;
            } else if machine.config["auto_destroy"].as_bool() == Some(true) {
                machine.state = MachineState::Destroyed;
                self.network.detach(machine.number);
            } else if machine.state != MachineState::Replacing
                && machine.state != MachineState::Destroying
            {
                machine.state = MachineState::Stopped;
            }
            self.changed(&state);
            restart
        };
        if restart && let Err(error) = self.boot(id) {
            warn!(machine = %id, %error, "restart failed");
        }
    }

    fn boot_spec(&self, state: &State, id: &str) -> Result<BootSpec, PlatformError> {
        let machine = state
            .machines
            .get(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        let app = state
            .apps
            .get(&machine.app)
            .ok_or_else(|| PlatformError::NotFound(format!("app {}", machine.app)))?;
        let config = &machine.config;
        let reference = config["image"].as_str().unwrap_or_default();
        let image = state.images.get(reference).ok_or_else(|| {
            PlatformError::Invalid(format!("image {reference:?} is not in the registry"))
        })?;
        let strings = |value: &Value| -> Option<Vec<String>> {
            value.as_array().map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect()
            })
        };
        let init = &config["init"];
        let argv = match strings(&init["exec"]) {
            Some(exec) if !exec.is_empty() => exec,
            _ => {
                let mut argv = strings(&init["entrypoint"])
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| image.entrypoint.clone());
                argv.extend(
                    strings(&init["cmd"])
                        .filter(|c| !c.is_empty())
                        .unwrap_or_else(|| image.cmd.clone()),
                );
                argv
            }
        };
        let mut env = image.env.clone();
        env.entry("PATH".to_owned()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
        });
        env.extend(app.secrets.clone());
        if let Some(vars) = config["env"].as_object() {
            for (key, value) in vars {
                if let Some(value) = value.as_str() {
                    env.insert(key.clone(), value.to_owned());
                }
            }
        }
        let memory = config["guest"]["memory_mb"].as_u64().unwrap_or(256);
        for (key, value) in [
            ("FLY_APP_NAME", machine.app.clone()),
            ("FLY_MACHINE_ID", machine.id.clone()),
            ("FLY_ALLOC_ID", machine.id.clone()),
            ("FLY_PRIVATE_IP", machine.private_ip.to_string()),
            ("FLY_REGION", machine.region.clone()),
            ("FLY_IMAGE_REF", reference.to_owned()),
            ("FLY_MACHINE_VERSION", machine.instance_id.clone()),
            ("FLY_VM_MEMORY_MB", memory.to_string()),
        ] {
            env.insert(key.to_owned(), value);
        }
        let volume = config["mounts"]
            .as_array()
            .and_then(|mounts| mounts.first())
            .and_then(|mount| {
                let id = mount["volume"].as_str()?;
                let path = mount["path"].as_str()?;
                Some((self.dir.join("volumes").join(id), path.to_owned()))
            });
        let dir = self.dir.join("machines").join(id);
        Ok(BootSpec {
            id: id.to_owned(),
            fly_dir: dir.join("fly"),
            dir,
            namespace: self.network.namespace(machine.number),
            image_root: image.root.clone(),
            user: image.user.clone().filter(|user| !user.is_empty()),
            argv,
            env,
            volume,
            hosts_file: self.network.hosts_file().to_path_buf(),
        })
    }

    /// `POST .../start`: boots a stopped or created machine, resumes a
    /// suspended one.
    pub fn start(self: &Arc<Self>, id: &str) -> Result<Value, PlatformError> {
        let current = self
            .state_of(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        match current {
            MachineState::Stopped | MachineState::Created => self.boot(id)?,
            MachineState::Suspended => {
                let mut state = self.lock();
                if let Some(machine) = state.machines.get_mut(id) {
                    if let Some(boot) = &machine.boot {
                        boot.thaw();
                    }
                    machine.state = MachineState::Started;
                    machine.updated_at = now_rfc3339();
                }
                self.changed(&state);
                info!(machine = %id, "resumed machine");
            }
            other => {
                return Err(PlatformError::Precondition(format!(
                    "machine {id} is {}, cannot start",
                    other.as_str()
                )));
            }
        }
        self.machine_view(id)
    }

    /// `POST .../stop`: the stop signal to PID 1, SIGKILL after the
    /// timeout; resolves once the machine is stopped.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<Value, PlatformError> {
        let current = self
            .state_of(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        match current {
            MachineState::Started | MachineState::Suspended | MachineState::Starting => {
                self.halt(id, MachineState::Stopping).await;
                let mut state = self.lock();
                if let Some(machine) = state.machines.get_mut(id)
                    && machine.state == MachineState::Stopping
                {
                    machine.state = MachineState::Stopped;
                }
                self.changed(&state);
            }
            MachineState::Stopped | MachineState::Created | MachineState::Stopping => {}
            other => {
                return Err(PlatformError::Precondition(format!(
                    "machine {id} is {}, cannot stop",
                    other.as_str()
                )));
            }
        }
        self.machine_view(id)
    }

    /// Ends the current boot (stop signal, then SIGKILL after the
    /// machine's timeout), marking the machine `during` meanwhile.
    async fn halt(&self, id: &str, during: MachineState) {
        let (boot, ended, signal, timeout) = {
            let mut state = self.lock();
            let Some(machine) = state.machines.get_mut(id) else {
                return;
            };
            let suspended = machine.state == MachineState::Suspended;
            machine.state = during;
            let signal = stop_signal(&machine.config);
            let timeout = stop_timeout(&machine.config);
            let boot = machine.boot.clone();
            let ended = machine.ended.clone();
            if suspended && let Some(boot) = &boot {
                boot.thaw();
            }
            self.changed(&state);
            (boot, ended, signal, timeout)
        };
        let (Some(boot), Some(mut ended)) = (boot, ended) else {
            return;
        };
        if !boot.signal_init(signal) {
            boot.kill();
        }
        let finished = tokio::time::timeout(timeout, ended.wait_for(|done| *done))
            .await
            .is_ok();
        if !finished {
            warn!(machine = %id, "did not stop within {timeout:?}: killing it");
            boot.kill();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|done| *done)).await;
        }
    }

    /// Whether the machine can be suspended now: started, and at most
    /// 2 GB of memory, as Fly requires.
    pub fn check_suspend(&self, id: &str) -> Result<(), PlatformError> {
        let state = self.lock();
        let machine = state
            .machines
            .get(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        suspendable(machine)
    }

    /// `POST .../suspend`: freezes the machine's processes. Refused above
    /// 2 GB of memory, as Fly refuses it.
    pub fn suspend(&self, id: &str) -> Result<Value, PlatformError> {
        let mut state = self.lock();
        let machine = state
            .machines
            .get_mut(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        suspendable(machine)?;
        machine.state = MachineState::Suspending;
        if let Some(boot) = &machine.boot {
            boot.freeze();
        }
        machine.state = MachineState::Suspended;
        machine.updated_at = now_rfc3339();
        let view = view(machine);
        self.changed(&state);
        info!(machine = %id, "suspended machine");
        Ok(view)
    }
}

fn suspendable(machine: &MachineRecord) -> Result<(), PlatformError> {
    let id = &machine.id;
    {
        let memory = machine.config["guest"]["memory_mb"].as_u64().unwrap_or(256);
        if memory > SUSPEND_MAX_MEMORY_MB {
            return Err(PlatformError::Invalid(format!(
                "machine {id} has {memory} MB of memory; suspend needs at most {SUSPEND_MAX_MEMORY_MB} MB"
            )));
        }
        if machine.state != MachineState::Started {
            return Err(PlatformError::Precondition(format!(
                "machine {id} is {}, cannot suspend",
                machine.state.as_str()
            )));
        }
        Ok(())
    }
}

impl Platform {
    /// `POST /machines/{id}`: the whole new config. A running machine
    /// reboots into it; a suspended one loses its snapshot; a stopped one
    /// stays stopped with `skip_launch`.
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        config: Value,
        skip_launch: bool,
    ) -> Result<Value, PlatformError> {
        let was = {
            let mut state = self.lock();
            check_config(&state, &config)?;
            attach_volume(&mut state, &config, id)?;
            let machine = state
                .machines
                .get_mut(id)
                .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
            if machine.state == MachineState::Destroyed {
                return Err(PlatformError::NotFound(format!("machine {id}")));
            }
            machine.config = config;
            machine.instance_id = new_instance_id();
            machine.updated_at = now_rfc3339();
            machine.state
        };
        let running = matches!(was, MachineState::Started | MachineState::Starting);
        if running || was == MachineState::Suspended {
            self.halt(id, MachineState::Replacing).await;
            let mut state = self.lock();
            if let Some(machine) = state.machines.get_mut(id) {
                machine.state = MachineState::Stopped;
                machine.boot = None;
            }
            self.changed(&state);
        }
        if running || !skip_launch {
            self.boot(id)?;
        } else {
            let state = self.lock();
            self.changed(&state);
        }
        info!(machine = %id, "updated machine");
        self.machine_view(id)
    }

    /// `DELETE /machines/{id}`: a stopped machine is destroyed; a running
    /// one only with `force`.
    pub async fn destroy(&self, id: &str, force: bool) -> Result<Value, PlatformError> {
        let current = self
            .state_of(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        if matches!(current, MachineState::Started | MachineState::Suspended) {
            if !force {
                return Err(PlatformError::Precondition(format!(
                    "machine {id} is {}; stop it first or destroy with force",
                    current.as_str()
                )));
            }
            self.halt(id, MachineState::Destroying).await;
        }
        let mut state = self.lock();
        let machine = state
            .machines
            .get_mut(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        machine.state = MachineState::Destroyed;
        machine.boot = None;
        self.network.detach(machine.number);
        let view = view(machine);
        for volume in state.volumes.values_mut() {
            if volume.attached_machine_id.as_deref() == Some(id) {
                volume.attached_machine_id = None;
            }
        }
        self.changed(&state);
        Ok(view)
    }

    /// Sets (`Some`) or deletes (`None`) one metadata key.
    pub fn set_metadata(
        &self,
        id: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), PlatformError> {
        let mut state = self.lock();
        let machine = state
            .machines
            .get_mut(id)
            .ok_or_else(|| PlatformError::NotFound(format!("machine {id}")))?;
        if !machine.config["metadata"].is_object() {
            machine.config["metadata"] = json!({});
        }
        if let Some(metadata) = machine.config["metadata"].as_object_mut() {
            match value {
                Some(value) => {
                    metadata.insert(key.to_owned(), Value::String(value));
                }
                None => {
                    metadata.remove(key);
                }
            }
        }
        self.changed(&state);
        Ok(())
    }

    /// Resolves when the machine is in `wanted`, or `false` after
    /// `timeout`.
    pub async fn wait(
        &self,
        id: &str,
        wanted: MachineState,
        timeout: Duration,
    ) -> Result<bool, PlatformError> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.state_of(id) {
                None => return Err(PlatformError::NotFound(format!("machine {id}"))),
                Some(state) if state == wanted => return Ok(true),
                Some(_) => {}
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }

    /// Stops every machine (the platform is going away).
    pub async fn shutdown(self: &Arc<Self>) {
        let ids: Vec<(String, u16)> = self
            .lock()
            .machines
            .values()
            .map(|m| (m.id.clone(), m.number))
            .collect();
        for (id, number) in ids {
            let boot = self.lock().machines.get(&id).and_then(|m| m.boot.clone());
            if let Some(boot) = boot {
                boot.thaw();
                boot.kill();
            }
            self.network.detach(number);
        }
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

fn view(machine: &MachineRecord) -> Value {
    let image = machine.config["image"].as_str().unwrap_or_default();
    let (repository, tag) = image
        .split_once('/')
        .map_or(image, |(_, rest)| rest)
        .rsplit_once(':')
        .unwrap_or((image, "latest"));
    json!({
        "id": machine.id,
        "name": machine.name,
        "state": machine.state.as_str(),
        "region": machine.region,
        "instance_id": machine.instance_id,
        "private_ip": machine.private_ip.to_string(),
        "config": machine.config,
        "image_ref": {
            "registry": image.split_once('/').map(|(registry, _)| registry).unwrap_or("registry.fly.io"),
            "repository": repository,
            "tag": tag,
            "digest": "",
        },
        "created_at": machine.created_at,
        "updated_at": machine.updated_at,
        "events": [],
    })
}

/// A config the platform can run: its image is in the registry.
fn check_config(state: &State, config: &Value) -> Result<(), PlatformError> {
    let image = config["image"]
        .as_str()
        .filter(|image| !image.is_empty())
        .ok_or_else(|| PlatformError::Invalid("config.image is required".to_owned()))?;
    if !state.images.contains_key(image) {
        return Err(PlatformError::Invalid(format!(
            "image {image:?} is not in the registry"
        )));
    }
    let mounts = config["mounts"].as_array().map_or(0, Vec::len);
    if mounts > 1 {
        return Err(PlatformError::Invalid(
            "invalid config.mounts, only 1 volume supported".to_owned(),
        ));
    }
    Ok(())
}

/// Attaches the config's volume to machine `id`; a volume attached to
/// another live machine is refused.
fn attach_volume(state: &mut State, config: &Value, id: &str) -> Result<(), PlatformError> {
    let Some(volume_id) = config["mounts"][0]["volume"].as_str() else {
        return Ok(());
    };
    let attached_elsewhere = {
        let volume = state
            .volumes
            .get(volume_id)
            .ok_or_else(|| PlatformError::Invalid(format!("volume {volume_id} does not exist")))?;
        volume.attached_machine_id.as_ref().filter(|other| {
            other.as_str() != id
                && state
                    .machines
                    .get(other.as_str())
                    .is_some_and(|m| m.state != MachineState::Destroyed)
        })
    }
    .cloned();
    if let Some(other) = attached_elsewhere {
        return Err(PlatformError::Precondition(format!(
            "volume {volume_id} is attached to machine {other}"
        )));
    }
    if let Some(volume) = state.volumes.get_mut(volume_id) {
        volume.attached_machine_id = Some(id.to_owned());
    }
    Ok(())
}

fn stop_signal(config: &Value) -> Signal {
    match config["stop_config"]["signal"].as_str().unwrap_or("SIGINT") {
        "SIGTERM" => Signal::TERM,
        "SIGQUIT" => Signal::QUIT,
        "SIGKILL" => Signal::KILL,
        "SIGUSR1" => Signal::USR1,
        "SIGUSR2" => Signal::USR2,
        "SIGHUP" => Signal::HUP,
        _ => Signal::INT,
    }
}

fn stop_timeout(config: &Value) -> Duration {
    config["stop_config"]["timeout"]
        .as_str()
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_KILL_TIMEOUT, Duration::from_secs)
}

fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

fn new_instance_id() -> String {
    format!("01{}", random_hex(24).to_ascii_uppercase())
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

    #[test]
    fn timestamps_are_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }

    #[test]
    fn stop_config() {
        let config = json!({"stop_config": {"signal": "SIGTERM", "timeout": "20s"}});
        assert_eq!(stop_signal(&config), Signal::TERM);
        assert_eq!(stop_timeout(&config), Duration::from_secs(20));
        assert_eq!(stop_signal(&json!({})), Signal::INT);
    }
}
