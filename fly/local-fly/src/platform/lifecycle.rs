//! A machine's life: created, booted (a new generation of processes),
//! started, stopped, suspended and resumed, updated, destroyed; the restart
//! policy when a boot ends by itself; waiting for a state.

use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use super::json::{new_instance_id, now_rfc3339, random_hex, view};
use super::volumes::attach_volume;
use super::{
    DEFAULT_KILL_TIMEOUT, MachineRecord, MachineState, Platform, PlatformError,
    SUSPEND_MAX_MEMORY_MB, State,
};
use crate::runtime::{Boot, BootSpec};

impl Platform {
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

/// Whether Fly would suspend the machine: started, and at most 2 GB.
fn suspendable(machine: &MachineRecord) -> Result<(), PlatformError> {
    let id = &machine.id;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_config() {
        let config = json!({"stop_config": {"signal": "SIGTERM", "timeout": "20s"}});
        assert_eq!(stop_signal(&config), Signal::TERM);
        assert_eq!(stop_timeout(&config), Duration::from_secs(20));
        assert_eq!(stop_signal(&json!({})), Signal::INT);
    }
}
