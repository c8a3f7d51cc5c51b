//! Volumes: folders under the platform's directory, each held by at most
//! one live machine.

use serde_json::Value;

use super::json::{now_rfc3339, random_hex};
use super::{MachineState, Platform, PlatformError, State, VolumeRecord};

impl Platform {
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
}

/// Attaches the config's volume to machine `id`; a volume attached to
/// another live machine is refused.
pub(super) fn attach_volume(
    state: &mut State,
    config: &Value,
    id: &str,
) -> Result<(), PlatformError> {
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
