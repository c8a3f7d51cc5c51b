//! Which runner image agents run: the one the runner app's last deploy
//! promoted after its machine checks passed.
//!
//! `fly deploy` updates only the app's own machines, the ones flyctl made
//! and marks with `fly_*` metadata; machines the coordinator made through
//! the Machines API keep their image until someone updates them. So the
//! coordinator reads the image off flyctl's machines and rolls agents onto
//! it. With the runner app's `canary` strategy, flyctl runs the
//! `machine_checks` against a throwaway canary and touches no machine of
//! the app unless they pass, so an image on flyctl's machines has passed
//! them. Should flyctl's machines disagree (a rolling deploy stopped
//! half-way), the oldest release wins: an image that did not reach every
//! machine was never promoted.

use serde::Serialize;

use crate::machines::Machine;

/// flyctl's metadata on the machines it deploys: the release they run.
pub const META_RELEASE_VERSION: &str = "fly_release_version";

/// An image and where the coordinator got it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerImage {
    pub image: String,
    /// The release flyctl deployed it as, when it came from a deploy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_version: Option<u64>,
    pub source: ImageSource,
}

/// Where a [`RunnerImage`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// The runner app's machines made by `fly deploy`, after its checks.
    Deploy,
    /// The coordinator's `RUNNER_IMAGE`: used for new agents only, while no
    /// deploy of the runner app is found.
    Configured,
}

/// The image the runner app's deploy put on its own machines, if it has
/// any: the oldest release among them, so a half-done rollout does not
/// count.
pub fn promoted(machines: &[Machine]) -> Option<RunnerImage> {
    machines
        .iter()
        .filter(|machine| !machine.state.is_gone())
        .filter_map(|machine| {
            let version: u64 = machine.metadata(META_RELEASE_VERSION)?.parse().ok()?;
            let image = machine.config.as_ref()?.image.clone();
            (!image.is_empty()).then_some((version, image))
        })
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
        .map(|(version, image)| RunnerImage {
            image,
            release_version: Some(version),
            source: ImageSource::Deploy,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::{MachineConfig, MachineState};

    fn machine(id: &str, state: MachineState, image: &str, release: Option<&str>) -> Machine {
        let mut config = MachineConfig {
            image: image.to_owned(),
            ..MachineConfig::default()
        };
        if let Some(release) = release {
            config
                .metadata
                .insert(META_RELEASE_VERSION.to_owned(), release.to_owned());
        }
        Machine {
            id: id.to_owned(),
            name: String::new(),
            state,
            region: "ams".to_owned(),
            instance_id: String::new(),
            created_at: String::new(),
            config: Some(config),
        }
    }

    #[test]
    fn agents_machines_do_not_count() {
        let agent = machine("a", MachineState::Started, "img:agent", None);
        assert_eq!(promoted(std::slice::from_ref(&agent)), None);
        let deployed = machine("d", MachineState::Stopped, "img:7", Some("7"));
        assert_eq!(
            promoted(&[agent, deployed]),
            Some(RunnerImage {
                image: "img:7".to_owned(),
                release_version: Some(7),
                source: ImageSource::Deploy,
            })
        );
    }

    #[test]
    fn a_half_done_rollout_keeps_the_older_release() {
        let machines = [
            machine("d1", MachineState::Started, "img:9", Some("9")),
            machine("d2", MachineState::Stopped, "img:8", Some("8")),
            machine("d3", MachineState::Destroyed, "img:3", Some("3")),
            machine("d4", MachineState::Started, "img:x", Some("not a number")),
        ];
        assert_eq!(
            promoted(&machines).map(|r| r.image),
            Some("img:8".to_owned())
        );
    }
}
