//! Agents and their machines: names, and the policy that maps an agent to a
//! Fly Machine of the runner app.
//!
//! The mapping lives in the Machines API itself, in each machine's config:
//!
//! | where | key | value |
//! |---|---|---|
//! | `metadata` | `agent` | the agent's name; absent once released |
//! | `metadata` | `repo`, `mode` | what the machine last served |
//! | `env` | `WORKTREE_REPO`, `WORKTREE_MODE`, `AGENT_NAME` | what the runner mounts, and for whom |
//!
//! so the coordinator keeps no state and a restart loses nothing. The
//! worktree's upper layer, the agent's work, lives on the machine's volume;
//! every change here keeps the machine's `mounts` as they are.
//!
//! Mutations ([`Agents::ensure`], [`Agents::release`]) are serialised in
//! the process, so two agents never claim the same released machine and
//! one agent never gets two; routing ([`Agents::wake`]) takes no lock. The
//! coordinator runs as one machine; a second one would need Machines API
//! leases for the same guarantee, which are not used here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::machines::{
    Api, ApiError, CreateVolumeRequest, Guest, LaunchRequest, Machine, MachineConfig, MachineState,
    MachinesClient, Mount, Restart, WaitOutcome,
};
use crate::releases::{self, ImageSource, RunnerImage};

/// Metadata key: the agent a machine belongs to.
pub const META_AGENT: &str = "agent";
/// Metadata key: the repository (`name[@rev]`) the machine serves.
pub const META_REPO: &str = "repo";
/// Metadata key: `rw` or `ro`.
pub const META_MODE: &str = "mode";
/// Runner environment: the export to mount, `name[@rev]`.
pub const ENV_REPO: &str = "WORKTREE_REPO";
/// Runner environment: `rw` or `ro`.
pub const ENV_MODE: &str = "WORKTREE_MODE";
/// Runner environment: whose work this is (keys the upper dir on the
/// volume, so a reused machine never shows one agent another's changes).
pub const ENV_AGENT: &str = "AGENT_NAME";
/// Runner environment: `suspend` or `stop`, what the runner does to its
/// machine when the agent is idle.
pub const ENV_IDLE_ACTION: &str = "AGENT_RUNNER_IDLE_ACTION";
/// Fly suspends only machines with at most this much memory; larger ones
/// are told to stop when idle, or the runner would ask forever.
pub const SUSPEND_MAX_MEMORY_MB: u32 = 2048;

/// How often a machine in transition (stopping, suspending, ...) is looked
/// at again before it can be started.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// A valid agent name: `^[a-z0-9][a-z0-9-]{0,62}$`, so it is safe in a URL
/// path, a header and a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(name: &str) -> Result<Self, AgentError> {
        let bytes = name.as_bytes();
        let valid = (1..=63).contains(&bytes.len())
            && bytes[0] != b'-'
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(AgentError::InvalidName(shorten(name)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A git-nfsd export name, `repo[@rev]` (`app@main`, `org/lib@v1.2`): what
/// the runner passes to `mount-worktree`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo(String);

impl Repo {
    pub fn parse(repo: &str) -> Result<Self, AgentError> {
        let valid = (1..=200).contains(&repo.len())
            && repo
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/@+".contains(&b))
            && !repo.starts_with(['/', '-', '.', '@'])
            && !repo
                .split(['/', '@'])
                .any(|part| part.is_empty() || part == "..");
        if valid {
            Ok(Self(repo.to_owned()))
        } else {
            Err(AgentError::InvalidRequest(format!(
                "repo {:?} is not an export name such as app@main",
                shorten(repo)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the runner mounts the worktree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An overlay with the volume's upper: the agent's changes persist.
    Rw,
    /// The export with the upper's changes, read-only.
    Ro,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rw => "rw",
            Self::Ro => "ro",
        }
    }
}

/// Fly's CPU kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CpuKind {
    Shared,
    Performance,
}

impl CpuKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Performance => "performance",
        }
    }

    fn parse(kind: &str) -> Option<Self> {
        match kind {
            "shared" => Some(Self::Shared),
            "performance" => Some(Self::Performance),
            _ => None,
        }
    }
}

/// A machine size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size {
    pub cpu_kind: CpuKind,
    pub cpus: u32,
    pub memory_mb: u32,
}

impl Size {
    /// Coarse bounds; the Machines API has the final word (per-kind memory
    /// per CPU), and its refusal is passed on with its reason.
    pub fn check(&self) -> Result<(), &'static str> {
        if !(1..=16).contains(&self.cpus) {
            return Err("cpus must be 1 to 16");
        }
        if !(256..=131_072).contains(&self.memory_mb) || !self.memory_mb.is_multiple_of(256) {
            return Err("memory_mb must be a multiple of 256 from 256 to 131072");
        }
        Ok(())
    }

    fn of(guest: Option<&Guest>) -> Option<Self> {
        let guest = guest?;
        Some(Self {
            cpu_kind: CpuKind::parse(&guest.cpu_kind)?,
            cpus: guest.cpus,
            memory_mb: guest.memory_mb,
        })
    }
}

/// The body of `PUT /agents/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRequest {
    /// The export to mount, `repo[@rev]`.
    pub repo: String,
    pub mode: Mode,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u32>,
    #[serde(default)]
    pub cpu_kind: Option<CpuKind>,
}

impl AgentRequest {
    /// The size asked for, each field missing from the request taken from
    /// `base`.
    fn size_over(&self, base: Size) -> Result<Size, AgentError> {
        let size = Size {
            cpu_kind: self.cpu_kind.unwrap_or(base.cpu_kind),
            cpus: self.cpus.unwrap_or(base.cpus),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
        };
        size.check()
            .map_err(|why| AgentError::InvalidRequest(why.to_owned()))?;
        Ok(size)
    }
}

/// What new agent machines look like.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The image for new machines while no deploy of the runner app is
    /// found (`RUNNER_IMAGE`); a deployed image wins (see [`releases`]).
    pub image: Option<String>,
    pub default_size: Size,
    /// Where new volumes (and so their machines) go; `None`: the app's
    /// primary region.
    pub region: Option<String>,
    pub volume_name: String,
    pub volume_size_gb: u32,
    pub mount_path: String,
    /// agent-runner's port inside the machine.
    pub internal_port: u16,
    /// The service's port on the proxy: the port replayed requests arrive on.
    pub service_port: u16,
    /// Set on every agent machine, besides the per-agent variables.
    pub extra_env: BTreeMap<String, String>,
}

/// How long operations may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a routed request's arrival to its machine being started.
    pub wake: Duration,
    /// One management operation (`ensure`, `release`, `describe`).
    pub api: Duration,
}

/// What [`Agents::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A new volume and machine.
    Created,
    /// A released machine that served the same repository.
    Reused,
    /// The agent's machine, with a new size, mode or repository.
    Updated,
    /// The agent's machine, already as asked.
    Unchanged,
}

/// An agent as the API describes it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub agent: String,
    pub machine: String,
    pub state: String,
    pub region: String,
    pub repo: Option<String>,
    pub mode: Option<String>,
    pub cpu_kind: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
    pub volume: Option<String>,
    /// The image the machine runs.
    pub image: Option<String>,
}

impl AgentView {
    pub fn new(agent: &AgentName, machine: &Machine) -> Self {
        let config = machine.config.as_ref();
        let guest = config.and_then(|c| c.guest.as_ref());
        Self {
            agent: agent.to_string(),
            machine: machine.id.clone(),
            state: machine.state.to_string(),
            region: machine.region.clone(),
            repo: machine.metadata(META_REPO).map(str::to_owned),
            mode: machine.metadata(META_MODE).map(str::to_owned),
            cpu_kind: guest.map(|g| g.cpu_kind.clone()),
            cpus: guest.map(|g| g.cpus),
            memory_mb: guest.map(|g| g.memory_mb),
            volume: config
                .and_then(|c| c.mounts.first())
                .map(|m| m.volume.clone()),
            image: config.map(|c| c.image.clone()).filter(|i| !i.is_empty()),
        }
    }
}

/// Why an agent operation failed; returned by every method of [`Agents`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(
        "invalid agent name {0:?}: use 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("no agent named {0}: create it with PUT /agents/{0}")]
    NotFound(AgentName),
    #[error(
        "agent {agent}'s worktree is {current}: its changes were made over that commit, so it \
         cannot become {asked}; give the new worktree another agent name, or release {agent} \
         first (DELETE /agents/{agent}; its work stays on its machine's volume)"
    )]
    RepoPinned {
        agent: AgentName,
        current: String,
        asked: String,
    },
    #[error("agent {agent}'s machine {machine} is {state} and cannot serve requests")]
    Unavailable {
        agent: AgentName,
        machine: String,
        state: MachineState,
    },
    #[error(
        "agent {agent}'s machine {machine} did not reach started within {}s (last seen {state})",
        waited.as_secs()
    )]
    WakeTimeout {
        agent: AgentName,
        machine: String,
        waited: Duration,
        state: MachineState,
    },
    #[error(
        "agent {agent}'s machine {machine} has no readable config (its host may be unreachable); try again later"
    )]
    ConfigUnknown { agent: AgentName, machine: String },
    #[error(
        "no runner image: deploy the runner app (fly deploy), whose machines the coordinator \
         takes the image from, or set RUNNER_IMAGE"
    )]
    NoImage,
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// The agents of one runner app.
#[derive(Debug)]
pub struct Agents {
    api: MachinesClient,
    runner: RunnerSettings,
    timeouts: Timeouts,
    mutations: Mutex<()>,
}

impl Agents {
    pub fn new(api: MachinesClient, runner: RunnerSettings, timeouts: Timeouts) -> Self {
        Self {
            api,
            runner,
            timeouts,
            mutations: Mutex::new(()),
        }
    }

    /// The app whose machines run the agents.
    pub fn runner_app(&self) -> &str {
        self.api.app()
    }

    /// The agent's machine as it is now.
    pub async fn describe(&self, agent: &AgentName) -> Result<Machine, AgentError> {
        let api = self.api.until(Instant::now() + self.timeouts.api);
        self.machine_of(&api, agent)
            .await?
            .ok_or_else(|| AgentError::NotFound(agent.clone()))
    }

    /// Every agent with its machine, and the image agents are rolled onto.
    pub async fn list(&self) -> Result<(Option<RunnerImage>, Vec<AgentView>), AgentError> {
        let api = self.api.until(Instant::now() + self.timeouts.api);
        let machines = api.list_machines(None).await?;
        let image = self.runner_image(&machines);
        let mut agents: Vec<AgentView> = machines
            .iter()
            .filter(|machine| !machine.state.is_gone())
            .filter_map(|machine| {
                let agent = AgentName::parse(machine.metadata(META_AGENT)?).ok()?;
                // A machine another claims first is not this agent's.
                (own_machine(&machines, &agent)?.id == machine.id)
                    .then(|| AgentView::new(&agent, machine))
            })
            .collect();
        agents.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok((image, agents))
    }

    /// The image agents run: what the runner app's deploy promoted, else
    /// the configured one.
    fn runner_image(&self, machines: &[Machine]) -> Option<RunnerImage> {
        releases::promoted(machines).or_else(|| {
            self.runner.image.clone().map(|image| RunnerImage {
                image,
                release_version: None,
                source: ImageSource::Configured,
            })
        })
    }

    /// Makes sure the agent has a machine as asked: its own, updated if its
    /// size, mode or repository differ; else a released machine that served
    /// the same repository (its image and volume are already in place);
    /// else a new volume and machine.
    ///
    /// Updating a running machine restarts it (the Machines API applies a
    /// config by rebooting); machines that are not running stay stopped.
    pub async fn ensure(
        &self,
        agent: &AgentName,
        request: &AgentRequest,
    ) -> Result<(Outcome, Machine), AgentError> {
        let repo = Repo::parse(&request.repo)?;
        let default_size = request.size_over(self.runner.default_size)?;
        let _serialised = self.mutations.lock().await;
        let api = self.api.until(Instant::now() + self.timeouts.api);
        let machines = api.list_machines(None).await?;

        if let Some(machine) = own_machine(&machines, agent) {
            let config = machine
                .config
                .clone()
                .ok_or_else(|| AgentError::ConfigUnknown {
                    agent: agent.clone(),
                    machine: machine.id.clone(),
                })?;
            // The runner pins the worktree at its first mount and lays the
            // agent's changes over exactly that commit; another repository
            // or revision would crash-loop its entrypoint.
            if let Some(current) = machine.metadata(META_REPO)
                && current != repo.as_str()
            {
                return Err(AgentError::RepoPinned {
                    agent: agent.clone(),
                    current: current.to_owned(),
                    asked: repo.as_str().to_owned(),
                });
            }
            // Fields the request leaves out keep the machine's current value.
            let size = match Size::of(config.guest.as_ref()) {
                Some(current) => request.size_over(current)?,
                None => default_size,
            };
            let mut desired = config.clone();
            self.describe_agent(&mut desired, agent, &repo, request.mode, size);
            // The update restarts the machine anyway: onto the promoted
            // image, if the runner app's deploy made one.
            if let Some(promoted) = releases::promoted(&machines) {
                desired.image = promoted.image;
            }
            if desired == config {
                debug!(%agent, machine = %machine.id, "agent already as asked");
                return Ok((Outcome::Unchanged, machine.clone()));
            }
            let update = LaunchRequest {
                config: desired,
                region: None,
                skip_launch: machine.state != MachineState::Started,
            };
            let updated = api.update_machine(&machine.id, &update).await?;
            info!(%agent, machine = %updated.id, repo = repo.as_str(), mode = request.mode.as_str(),
                cpus = size.cpus, memory_mb = size.memory_mb, "updated agent machine");
            return Ok((Outcome::Updated, updated));
        }

        if let Some(machine) = reusable_machine(&machines, &repo) {
            let mut config = machine.config.clone().unwrap_or_default();
            self.describe_agent(&mut config, agent, &repo, request.mode, default_size);
            if let Some(promoted) = releases::promoted(&machines) {
                config.image = promoted.image;
            }
            let claim = LaunchRequest {
                config,
                region: None,
                skip_launch: true,
            };
            let claimed = api.update_machine(&machine.id, &claim).await?;
            info!(%agent, machine = %claimed.id, repo = repo.as_str(), "reused a released machine");
            return Ok((Outcome::Reused, claimed));
        }

        let image = self
            .runner_image(&machines)
            .ok_or(AgentError::NoImage)?
            .image;
        let created = self
            .create(&api, agent, &repo, request.mode, default_size, image)
            .await?;
        Ok((Outcome::Created, created))
    }

    /// Releases the agent's machine: stops it and removes the `agent`
    /// metadata, keeping the machine and its volume for a later agent of
    /// the same repository.
    pub async fn release(&self, agent: &AgentName) -> Result<Machine, AgentError> {
        let _serialised = self.mutations.lock().await;
        let api = self.api.until(Instant::now() + self.timeouts.api);
        let machine = self
            .machine_of(&api, agent)
            .await?
            .ok_or_else(|| AgentError::NotFound(agent.clone()))?;
        if matches!(
            machine.state,
            MachineState::Started | MachineState::Starting
        ) {
            api.stop(&machine.id).await?;
        }
        api.delete_metadata(&machine.id, META_AGENT).await?;
        info!(%agent, machine = %machine.id, "released agent machine");
        Ok(machine)
    }

    /// Finds the agent's machine and makes sure it is started: starts a
    /// stopped, suspended or created machine and waits for it; a started
    /// machine costs one list call. Gives up at the wake timeout.
    pub async fn wake(&self, agent: &AgentName) -> Result<Machine, AgentError> {
        let deadline = Instant::now() + self.timeouts.wake;
        // Every API call and pause below already ends by the deadline; this
        // bound is a backstop, so no request can hang whatever happens.
        let backstop = deadline + Duration::from_secs(1);
        match tokio::time::timeout_at(backstop, self.wake_until(agent, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::WakeTimeout {
                agent: agent.clone(),
                machine: "(unknown)".to_owned(),
                waited: self.timeouts.wake,
                state: MachineState::Other("unknown".to_owned()),
            }),
        }
    }

    async fn wake_until(
        &self,
        agent: &AgentName,
        deadline: Instant,
    ) -> Result<Machine, AgentError> {
        let api = self.api.until(deadline);
        let mut machine = self
            .machine_of(&api, agent)
            .await?
            .ok_or_else(|| AgentError::NotFound(agent.clone()))?;
        let timed_out = |machine: &Machine| AgentError::WakeTimeout {
            agent: agent.clone(),
            machine: machine.id.clone(),
            waited: self.timeouts.wake,
            state: machine.state.clone(),
        };
        loop {
            match &machine.state {
                MachineState::Started => return Ok(machine),
                MachineState::Starting => break,
                MachineState::Stopped | MachineState::Suspended | MachineState::Created => {
                    // Asleep, so nothing working is lost: the moment to
                    // move it onto a newly promoted image (the update
                    // starts it).
                    match self
                        .roll_while_asleep(&api, agent, &machine, deadline)
                        .await
                    {
                        Ok(true) => {
                            machine.state = MachineState::Starting;
                            break;
                        }
                        Ok(false) => {}
                        Err(AgentError::Api(ApiError::Deadline { .. })) => {
                            return Err(timed_out(&machine));
                        }
                        Err(error) => {
                            warn!(%agent, machine = %machine.id, %error,
                                "cannot move the machine onto the promoted image; starting it as it is");
                        }
                    }
                    info!(%agent, machine = %machine.id, state = %machine.state, "waking agent machine");
                    match api.start(&machine.id).await {
                        Ok(()) => {}
                        // Someone else (the proxy, a parallel request) started
                        // it first: waiting is all that is left to do.
                        Err(error)
                            if matches!(
                                error.status(),
                                Some(StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED)
                            ) =>
                        {
                            debug!(%agent, %error, "start refused; waiting for the machine instead");
                        }
                        Err(ApiError::Deadline { .. }) => return Err(timed_out(&machine)),
                        Err(error) => return Err(error.into()),
                    }
                    machine.state = MachineState::Starting;
                    break;
                }
                state if state.is_gone() => {
                    return Err(AgentError::Unavailable {
                        agent: agent.clone(),
                        machine: machine.id.clone(),
                        state: state.clone(),
                    });
                }
                // Stopping, suspending, replacing, ...: let it settle first.
                _ => {
                    if Instant::now() + SETTLE_POLL >= deadline {
                        return Err(timed_out(&machine));
                    }
                    tokio::time::sleep(SETTLE_POLL).await;
                    machine = match api.get_machine(&machine.id).await {
                        Ok(machine) => machine,
                        Err(ApiError::Deadline { .. }) => return Err(timed_out(&machine)),
                        Err(error) => return Err(error.into()),
                    };
                }
            }
        }
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out(&machine));
            }
            match api.wait_for_state(&machine.id, "started", remaining).await {
                Ok(WaitOutcome::Reached) => {
                    machine.state = MachineState::Started;
                    return Ok(machine);
                }
                Ok(WaitOutcome::TimedOut) => continue,
                Err(ApiError::Deadline { .. }) => return Err(timed_out(&machine)),
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Updates a sleeping agent machine onto the image the runner app's
    /// deploy promoted, if it runs another; the update starts it. `false`:
    /// nothing to do (or the machine woke meanwhile), start it as it is.
    /// Serialised with the other mutations, so it never sends back a config
    /// an `ensure` has just changed; a wake that cannot get the lock in
    /// time starts the machine as it is.
    async fn roll_while_asleep(
        &self,
        api: &Api<'_>,
        agent: &AgentName,
        machine: &Machine,
        deadline: Instant,
    ) -> Result<bool, AgentError> {
        let Ok(_serialised) = tokio::time::timeout_at(deadline, self.mutations.lock()).await else {
            return Ok(false);
        };
        let machines = api.list_machines(None).await?;
        let Some(promoted) = releases::promoted(&machines) else {
            return Ok(false);
        };
        let Some(current) = machines.iter().find(|m| m.id == machine.id) else {
            return Ok(false);
        };
        let asleep = matches!(
            current.state,
            MachineState::Stopped | MachineState::Suspended | MachineState::Created
        );
        let Some(mut config) = current.config.clone().filter(|_| asleep) else {
            return Ok(false);
        };
        if config.image == promoted.image {
            return Ok(false);
        }
        let previous = std::mem::replace(&mut config.image, promoted.image.clone());
        let update = LaunchRequest {
            config,
            region: None,
            skip_launch: false,
        };
        api.update_machine(&machine.id, &update).await?;
        info!(%agent, machine = %machine.id, from = %previous, to = %promoted.image,
            release = ?promoted.release_version, "moved a sleeping agent onto the promoted runner image");
        Ok(true)
    }

    /// The agent's machine, if it has one. The list is filtered by the API
    /// and again here: the filter is a convenience of the API, not a promise
    /// this code relies on.
    async fn machine_of(
        &self,
        api: &Api<'_>,
        agent: &AgentName,
    ) -> Result<Option<Machine>, ApiError> {
        let machines = api
            .list_machines(Some((META_AGENT, agent.as_str())))
            .await?;
        Ok(own_machine(&machines, agent).cloned())
    }

    /// A new volume, then a machine that mounts it, in the volume's region.
    async fn create(
        &self,
        api: &Api<'_>,
        agent: &AgentName,
        repo: &Repo,
        mode: Mode,
        size: Size,
        image: String,
    ) -> Result<Machine, AgentError> {
        let settings = &self.runner;
        let volume = api
            .create_volume(&CreateVolumeRequest {
                name: settings.volume_name.clone(),
                region: settings.region.clone(),
                size_gb: settings.volume_size_gb,
                require_unique_zone: false,
            })
            .await?;
        let mut config = MachineConfig {
            image,
            mounts: vec![Mount {
                volume: volume.id.clone(),
                path: settings.mount_path.clone(),
                ..Mount::default()
            }],
            restart: Some(Restart {
                policy: "on-failure".to_owned(),
                ..Restart::default()
            }),
            auto_destroy: false,
            ..MachineConfig::default()
        };
        // Machines made through the API get nothing from the runner's
        // fly.toml. Without a service the proxy could neither start the
        // machine nor replay a request to it; the runner suspends itself
        // when idle, so the proxy only starts it (as in that fly.toml).
        config.rest.insert(
            "services".to_owned(),
            json!([{
                "protocol": "tcp",
                "internal_port": settings.internal_port,
                "ports": [{"port": settings.service_port, "handlers": ["http"]}],
                "autostart": true,
                "autostop": "off",
                "concurrency": {"type": "requests", "soft_limit": 200, "hard_limit": 250},
                "checks": [{"type": "http", "method": "GET", "path": "/healthz",
                            "interval": "15s", "timeout": "2s", "grace_period": "20s"}],
            }]),
        );
        // agent-runner stops the agent and flushes its capture on SIGTERM;
        // a machine's default stop signal is SIGINT.
        config
            .rest
            .insert("stop_config".to_owned(), json!({"signal": "SIGTERM"}));
        self.describe_agent(&mut config, agent, repo, mode, size);
        let region = Some(volume.region.clone())
            .filter(|region| !region.is_empty())
            .or_else(|| settings.region.clone());
        let request = LaunchRequest {
            config,
            region,
            skip_launch: false,
        };
        match api.create_machine(&request).await {
            Ok(machine) => {
                info!(%agent, machine = %machine.id, volume = %volume.id, region = %machine.region,
                    repo = repo.as_str(), "created agent machine");
                Ok(machine)
            }
            Err(error) => {
                // Nothing else would ever mount this volume. If the machine
                // was made after all, the API refuses to delete its volume.
                let cleanup = self.api.until(Instant::now() + Duration::from_secs(15));
                if let Err(cleanup_error) = cleanup.delete_volume(&volume.id).await {
                    warn!(%agent, volume = %volume.id, error = %cleanup_error,
                        "could not delete the volume of a machine that was not created");
                }
                Err(error.into())
            }
        }
    }

    /// Writes who the machine serves into its config: metadata for the
    /// coordinator, env for the runner, and the guest size.
    fn describe_agent(
        &self,
        config: &mut MachineConfig,
        agent: &AgentName,
        repo: &Repo,
        mode: Mode,
        size: Size,
    ) {
        config.env.extend(
            self.runner
                .extra_env
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        );
        config
            .env
            .insert(ENV_REPO.to_owned(), repo.as_str().to_owned());
        config
            .env
            .insert(ENV_MODE.to_owned(), mode.as_str().to_owned());
        config.env.insert(ENV_AGENT.to_owned(), agent.to_string());
        if size.memory_mb > SUSPEND_MAX_MEMORY_MB {
            config
                .env
                .insert(ENV_IDLE_ACTION.to_owned(), "stop".to_owned());
        } else if !self.runner.extra_env.contains_key(ENV_IDLE_ACTION) {
            // Back under the limit: the runner's own default (suspend).
            config.env.remove(ENV_IDLE_ACTION);
        }
        config
            .metadata
            .insert(META_AGENT.to_owned(), agent.to_string());
        config
            .metadata
            .insert(META_REPO.to_owned(), repo.as_str().to_owned());
        config
            .metadata
            .insert(META_MODE.to_owned(), mode.as_str().to_owned());
        let guest = config.guest.get_or_insert_with(Guest::default);
        guest.cpu_kind = size.cpu_kind.as_str().to_owned();
        guest.cpus = size.cpus;
        guest.memory_mb = size.memory_mb;
    }
}

/// The agent's machine among `machines`. Should a failed create have left
/// two, the choice is stable: the most awake, then the oldest.
fn own_machine<'a>(machines: &'a [Machine], agent: &AgentName) -> Option<&'a Machine> {
    let mut own: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.metadata(META_AGENT) == Some(agent.as_str()) && !m.state.is_gone())
        .collect();
    if own.len() > 1 {
        let ids: Vec<&str> = own.iter().map(|m| m.id.as_str()).collect();
        warn!(%agent, machines = ?ids, "more than one machine claims this agent");
    }
    own.sort_by(|a, b| {
        wakefulness(&a.state)
            .cmp(&wakefulness(&b.state))
            .then_with(|| a.created_at.cmp(&b.created_at))
            .then_with(|| a.id.cmp(&b.id))
    });
    own.first().copied()
}

/// A released machine that served `repo` and is at rest: suspended ones
/// first (their memory is warm), then stopped.
fn reusable_machine<'a>(machines: &'a [Machine], repo: &Repo) -> Option<&'a Machine> {
    machines
        .iter()
        .filter(|m| matches!(m.state, MachineState::Stopped | MachineState::Suspended))
        .filter(|m| m.metadata(META_REPO) == Some(repo.as_str()))
        .filter(|m| m.metadata(META_AGENT).is_none_or(str::is_empty))
        .filter(|m| m.config.as_ref().is_some_and(|c| !c.mounts.is_empty()))
        .min_by(|a, b| {
            wakefulness(&a.state)
                .cmp(&wakefulness(&b.state))
                .then_with(|| a.id.cmp(&b.id))
        })
}

fn wakefulness(state: &MachineState) -> u8 {
    match state {
        MachineState::Started => 0,
        MachineState::Starting => 1,
        MachineState::Suspended => 2,
        MachineState::Stopped => 3,
        _ => 4,
    }
}

/// Client input quoted in an error, cut to a readable length.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for good in ["a", "0", "agent-7", "a-", &"a".repeat(63)] {
            assert!(AgentName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a/b",
            "..",
            "a b",
            "a\r\nx: y",
            "é",
            &"a".repeat(64),
        ] {
            assert!(AgentName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repos() {
        for good in [
            "app",
            "app@main",
            "org/lib@feature/x",
            "app@v1.2+build",
            "a@0123abc",
        ] {
            assert!(Repo::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/app", "app@", "a//b", "a/../b", "..", "app main", "-x", "a\nb", "@main",
        ] {
            assert!(Repo::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        let size = |cpus, memory_mb| Size {
            cpu_kind: CpuKind::Shared,
            cpus,
            memory_mb,
        };
        assert!(size(1, 256).check().is_ok());
        assert!(size(0, 256).check().is_err());
        assert!(size(17, 2048).check().is_err());
        assert!(size(1, 300).check().is_err());
        assert!(size(1, 128).check().is_err());
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let typo = serde_json::from_str::<AgentRequest>(r#"{"repo":"a","mode":"rw","memory":512}"#);
        assert!(typo.is_err());
        let mode = serde_json::from_str::<AgentRequest>(r#"{"repo":"a","mode":"rwx"}"#);
        assert!(mode.is_err());
    }
}
