//! Choosing a machine for a request or connection, and counting each
//! machine's load.
//!
//! Fly's load balancing (<https://fly.io/docs/reference/load-balancing/>):
//! "Send traffic to the least loaded, closest Machine. If multiple Machines
//! have identical load and closeness, randomly choose one." Load is
//! measured against each service's `concurrency`: at or above `hard_limit`
//! "no new traffic goes to the Machine"; at or above `soft_limit` "traffic
//! is only routed to the Machine if all Machines reach the soft limit".
//! Defaults: "a soft_limit of 20 and no hard_limit"
//! (<https://fly.io/docs/apps/concurrency/>).
//!
//! Autostart (<https://fly.io/docs/reference/fly-proxy-autostop-autostart/>):
//! "If all the running Machines are above their soft_limit setting, then
//! the proxy starts a stopped or suspended Machine [...] The proxy routes
//! the request to the newly started Machine." And "If `auto_start_machines`
//! is explicitly set to false, the proxy only routes traffic to Machines
//! that are already running. If no Machines are running, the proxy does not
//! start one and the request will fail." A machine's service without
//! `autostart` is taken as not autostarting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::StatusCode;

use crate::backends::{Backend, RouteState, Service};

/// Fly's default `soft_limit`.
const DEFAULT_SOFT_LIMIT: u32 = 20;

/// In-flight requests (or connections) per machine and service.
#[derive(Debug, Default)]
pub(super) struct Loads(Mutex<HashMap<LoadKey, u32>>);

/// A machine and its service's internal port.
type LoadKey = (String, u16);

impl Loads {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<LoadKey, u32>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The load on every service of `machine`.
    pub(super) fn of_machine(&self, machine: &str) -> u32 {
        self.lock()
            .iter()
            .filter(|((id, _), _)| id == machine)
            .map(|(_, load)| *load)
            .sum()
    }
}

/// One request's (or connection's) share of a machine's load, given back
/// when dropped.
#[derive(Debug)]
pub(crate) struct LoadGuard {
    loads: Arc<Loads>,
    key: LoadKey,
}

impl LoadGuard {
    fn take(loads: &Arc<Loads>, table: &mut HashMap<LoadKey, u32>, key: LoadKey) -> Self {
        *table.entry(key.clone()).or_insert(0) += 1;
        Self {
            loads: Arc::clone(loads),
            key,
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut table = self.loads.lock();
        if let Some(load) = table.get_mut(&self.key) {
            *load = load.saturating_sub(1);
            if *load == 0 {
                table.remove(&self.key);
            }
        }
    }
}

/// How a request is tied to a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pinning {
    /// Load balancing.
    None,
    /// `fly-force-instance-id`: this machine or an error; never started
    /// for the request.
    Force(String),
    /// A replay's `instance`: this machine or an error; started first if
    /// it is stopped or suspended and its service autostarts.
    Instance(String),
    /// `fly-prefer-instance-id` or a replay's `prefer_instance`: this
    /// machine if it can take the request, else load balancing.
    Prefer(String),
}

/// Where a request or connection goes.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) app: String,
    pub(super) port: u16,
    pub(super) pinning: Pinning,
    /// Machines load balancing must not choose (`elsewhere`, unreachable).
    pub(super) exclude: Vec<String>,
    /// Regions to choose from (a replay's `region`); `None`: any.
    pub(super) regions: Option<Vec<String>>,
}

impl Target {
    pub(super) fn new(app: &str, port: u16, pinning: Pinning) -> Self {
        Self {
            app: app.to_owned(),
            port,
            pinning,
            exclude: Vec::new(),
            regions: None,
        }
    }
}

/// A machine chosen, its load taken.
#[derive(Debug)]
pub(super) struct Chosen {
    pub(super) backend: Backend,
    pub(super) service: Service,
    pub(super) guard: LoadGuard,
    /// The machine was started for this request.
    pub(super) started: bool,
    /// The preferred machine, when another was chosen.
    pub(super) preferred_unavailable: Option<String>,
}

/// Why no machine can be chosen.
#[derive(Debug, Clone)]
pub(super) struct RouteError {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl RouteError {
    pub(super) fn unavailable(message: String) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        }
    }
}

/// What to do now.
#[derive(Debug)]
pub(super) enum Decision {
    /// Send it to this started machine.
    Route(Chosen),
    /// Start this machine, then send it there.
    Start(Chosen),
    /// Nothing can take it now, but a machine is changing state: look again
    /// shortly (the reason, should time run out).
    Wait(String),
    Fail(RouteError),
}

/// A machine's limits for a service: (soft, hard).
fn limits(service: &Service) -> (u32, Option<u32>) {
    let Some(concurrency) = &service.concurrency else {
        return (DEFAULT_SOFT_LIMIT, None);
    };
    let hard = concurrency.hard_limit;
    let soft = concurrency.soft_limit.unwrap_or(DEFAULT_SOFT_LIMIT);
    (hard.map_or(soft, |hard| soft.min(hard)), hard)
}

fn describe(state: RouteState) -> &'static str {
    match state {
        RouteState::Started => "started",
        RouteState::Startable => "not started (stopped, suspended or created)",
        RouteState::Unavailable => "changing state (starting, stopping, replacing or destroyed)",
    }
}

/// A machine that serves the target's port, with what the choice needs.
struct Candidate<'a> {
    backend: &'a Backend,
    service: &'a Service,
    load: u32,
    soft: u32,
    hard: Option<u32>,
}

impl Candidate<'_> {
    fn below_hard(&self) -> bool {
        self.hard.is_none_or(|hard| self.load < hard)
    }

    fn below_soft(&self) -> bool {
        self.load < self.soft && self.below_hard()
    }

    fn autostarts(&self) -> bool {
        self.service.autostart == Some(true)
    }

    fn key(&self) -> LoadKey {
        (self.backend.id.clone(), self.service.internal_port)
    }
}

/// Decides where `target` goes among `machines` (the app's), taking the
/// chosen machine's load. `failed` lists machines that failed to start for
/// this request, with why.
pub(super) fn decide(
    loads: &Arc<Loads>,
    machines: &[Backend],
    target: &Target,
    failed: &[(String, String)],
) -> Decision {
    let mut table = loads.lock();
    let app = &target.app;
    let port = target.port;
    let candidates: Vec<Candidate<'_>> = machines
        .iter()
        .filter_map(|backend| {
            let service = backend.service_on(port)?;
            let (soft, hard) = limits(service);
            let load = table
                .get(&(backend.id.clone(), service.internal_port))
                .copied()
                .unwrap_or(0);
            Some(Candidate {
                backend,
                service,
                load,
                soft,
                hard,
            })
        })
        .collect();

    let chosen =
        |table: &mut HashMap<LoadKey, u32>, c: &Candidate<'_>, preferred: Option<&str>| Chosen {
            backend: c.backend.clone(),
            service: c.service.clone(),
            guard: LoadGuard::take(loads, table, c.key()),
            started: false,
            preferred_unavailable: preferred.filter(|p| *p != c.backend.id).map(str::to_owned),
        };

    let pinned = |id: &str, wake: bool, table: &mut HashMap<LoadKey, u32>| -> Decision {
        let Some(c) = candidates.iter().find(|c| c.backend.id == id) else {
            let message = if machines.iter().any(|m| m.id == id) {
                format!("machine {id} of app {app} has no service on port {port}")
            } else {
                format!("app {app} has no machine {id}")
            };
            return Decision::Fail(RouteError::unavailable(message));
        };
        match c.backend.state {
            RouteState::Started if c.below_hard() => Decision::Route(chosen(table, c, None)),
            RouteState::Started => Decision::Fail(RouteError::unavailable(format!(
                "machine {id} of app {app} is at its hard_limit ({} in flight)",
                c.load
            ))),
            RouteState::Startable if !wake => Decision::Fail(RouteError::unavailable(format!(
                "machine {id} of app {app} is {}: fly-force-instance-id does not start machines",
                describe(c.backend.state)
            ))),
            RouteState::Startable if !c.autostarts() => {
                Decision::Fail(RouteError::unavailable(format!(
                    "machine {id} of app {app} is {}, and its service on port {port} does not autostart",
                    describe(c.backend.state)
                )))
            }
            RouteState::Startable => {
                if let Some((_, why)) = failed.iter().find(|(m, _)| m == id) {
                    return Decision::Fail(RouteError::unavailable(format!(
                        "machine {id} of app {app} could not be started: {why}"
                    )));
                }
                Decision::Start(chosen(table, c, None))
            }
            RouteState::Unavailable if wake => Decision::Wait(format!(
                "machine {id} of app {app} is {}",
                describe(c.backend.state)
            )),
            RouteState::Unavailable => Decision::Fail(RouteError::unavailable(format!(
                "machine {id} of app {app} is {}: fly-force-instance-id does not wait for it",
                describe(c.backend.state)
            ))),
        }
    };

    let preferred = match &target.pinning {
        Pinning::Force(id) => return pinned(id, false, &mut table),
        Pinning::Instance(id) => return pinned(id, true, &mut table),
        Pinning::Prefer(id) => {
            if let Some(c) = candidates.iter().find(|c| &c.backend.id == id)
                && !target.exclude.contains(id)
                && c.backend.state == RouteState::Started
                && c.below_hard()
            {
                return Decision::Route(chosen(&mut table, c, None));
            }
            Some(id.as_str())
        }
        Pinning::None => None,
    };

    // Load balancing.
    let in_region = |c: &&Candidate<'_>| {
        target.regions.as_ref().is_none_or(|regions| {
            regions
                .iter()
                .any(|r| r == "any" || r.eq_ignore_ascii_case(&c.backend.region))
        })
    };
    let eligible: Vec<&Candidate<'_>> = candidates
        .iter()
        .filter(in_region)
        .filter(|c| !target.exclude.contains(&c.backend.id))
        .collect();
    let started: Vec<&Candidate<'_>> = eligible
        .iter()
        .copied()
        .filter(|c| c.backend.state == RouteState::Started && c.below_hard())
        .collect();
    let below_soft: Vec<&Candidate<'_>> =
        started.iter().copied().filter(|c| c.below_soft()).collect();
    if let Some(c) = least_loaded(&below_soft) {
        return Decision::Route(chosen(&mut table, c, preferred));
    }
    let startable: Vec<&Candidate<'_>> = eligible
        .iter()
        .copied()
        .filter(|c| {
            c.backend.state == RouteState::Startable
                && c.autostarts()
                && c.below_hard()
                && !failed.iter().any(|(m, _)| *m == c.backend.id)
        })
        .collect();
    let to_start = preferred
        .and_then(|p| startable.iter().copied().find(|c| c.backend.id == p))
        .or_else(|| least_loaded(&startable));
    if let Some(c) = to_start {
        return Decision::Start(chosen(&mut table, c, preferred));
    }
    if let Some(c) = least_loaded(&started) {
        return Decision::Route(chosen(&mut table, c, preferred));
    }

    // Nothing can take it: say why.
    let region_note = target
        .regions
        .as_ref()
        .map(|r| format!(" in region(s) {}", r.join(",")))
        .unwrap_or_default();
    if machines.is_empty() {
        return Decision::Fail(RouteError::unavailable(format!(
            "app {app} has no machines"
        )));
    }
    if candidates.is_empty() {
        return Decision::Fail(RouteError::unavailable(format!(
            "app {app} has no machine with a service on port {port}"
        )));
    }
    if eligible.is_empty() && target.regions.is_some() && !candidates.iter().any(|c| in_region(&c))
    {
        return Decision::Fail(RouteError::unavailable(format!(
            "app {app} has no machine{region_note} (the local Fly's machines are in {})",
            candidates
                .iter()
                .map(|c| c.backend.region.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    let count = |f: &dyn Fn(&Candidate<'_>) -> bool| eligible.iter().filter(|c| f(c)).count();
    let changing = count(&|c| c.backend.state == RouteState::Unavailable);
    let mut reasons = Vec::new();
    let full = count(&|c| c.backend.state == RouteState::Started && !c.below_hard());
    if full > 0 {
        reasons.push(format!("{full} started at its hard_limit"));
    }
    let asleep = count(&|c| c.backend.state == RouteState::Startable && !c.autostarts());
    if asleep > 0 {
        reasons.push(format!(
            "{asleep} stopped or suspended, and the service on port {port} does not autostart"
        ));
    }
    let startable_full =
        count(&|c| c.backend.state == RouteState::Startable && c.autostarts() && !c.below_hard());
    if startable_full > 0 {
        reasons.push(format!(
            "{startable_full} being started for other requests, at its hard_limit"
        ));
    }
    for (machine, why) in failed {
        reasons.push(format!("{machine} could not be started: {why}"));
    }
    if changing > 0 {
        reasons.push(format!("{changing} changing state"));
    }
    let excluded = candidates.len() - eligible.len();
    if excluded > 0 {
        reasons.push(format!(
            "{excluded} excluded (elsewhere=true, unreachable or in another region)"
        ));
    }
    let message = format!(
        "app {app} has no machine{region_note} that can take this request on port {port}: {}",
        reasons.join("; ")
    );
    if changing > 0 {
        Decision::Wait(message)
    } else {
        Decision::Fail(RouteError::unavailable(message))
    }
}

/// The least loaded of `candidates`, ties broken at random.
fn least_loaded<'a, 'b>(candidates: &[&'a Candidate<'b>]) -> Option<&'a Candidate<'b>> {
    let least = candidates.iter().map(|c| c.load).min()?;
    let tied: Vec<&'a Candidate<'b>> = candidates
        .iter()
        .copied()
        .filter(|c| c.load == least)
        .collect();
    tied.get(fastrand::usize(..tied.len())).copied()
}
