//! The idle policy: on Fly, the runner suspends (or stops) its own machine
//! once nobody needs it.
//!
//! Fly's proxy stops a machine when it sees no open connections, but an
//! agent working after `start` returned holds none, and a `/live` follower
//! holds one while the agent may be idle for hours. So the runner decides:
//! the machine is idle when the agent is not working (its OSC 7501 markers),
//! nobody follows `/live`, and neither output nor requests (other than
//! `/healthz`, which Fly's health checks call forever) arrived for the
//! configured time. Then it asks the local Machines API (`/.fly/api`, a
//! Unix socket that needs no token) to suspend the machine: suspend keeps
//! RAM, so a running codex carries on where it was when the proxy starts the
//! machine again for the next request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::runner::Runner;
use crate::terminal::Activity;

/// What the runner does to its machine when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdleAction {
    /// Keep memory: the agent resumes where it was.
    Suspend,
    /// Free everything: the agent is killed; the capture dir on a volume
    /// survives.
    Stop,
}

/// Fly suspends only machines with at most this much memory; a suspend of a
/// larger one is refused, and would be asked for again every idle period.
pub const FLY_SUSPEND_MAX_MEMORY_MB: u64 = 2048;

impl IdleAction {
    /// The action a machine of `memory_mb` (Fly's `FLY_VM_MEMORY_MB`) can
    /// take: suspend becomes stop above [`FLY_SUSPEND_MAX_MEMORY_MB`].
    pub fn for_memory(self, memory_mb: Option<u64>) -> Self {
        match (self, memory_mb) {
            (Self::Suspend, Some(mb)) if mb > FLY_SUSPEND_MAX_MEMORY_MB => Self::Stop,
            (action, _) => action,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Stop => "stop",
        }
    }
}

/// The machine's own entry in the Machines API, reached over a Unix socket.
#[derive(Debug, Clone)]
pub struct MachineApi {
    pub socket: PathBuf,
    pub app: String,
    pub machine: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP over {socket}: {source}")]
    Http {
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("{method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: hyper::StatusCode,
        body: String,
    },
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
}

impl MachineApi {
    /// `POST /v1/apps/{app}/machines/{id}/{verb}`.
    pub async fn post(&self, verb: &str) -> Result<(), ApiError> {
        let path = format!("/v1/apps/{}/machines/{}/{verb}", self.app, self.machine);
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ApiError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let http_error = |source| ApiError::Http {
            socket: self.socket.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        tokio::spawn(connection);
        let request = hyper::Request::post(&path)
            .header(hyper::header::HOST, "flaps")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(200)
                    .collect()
            })
            .unwrap_or_default();
        Err(ApiError::Status {
            method: "POST",
            path,
            status,
            body,
        })
    }
}

/// When and how the runner gives its machine back.
#[derive(Debug, Clone)]
pub struct IdlePolicy {
    pub after: Duration,
    pub action: IdleAction,
    pub api: MachineApi,
}

/// How often idleness is sampled.
const TICK: Duration = Duration::from_millis(500);

/// What the policy compares between ticks: any change is activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    session: Option<u64>,
    output: u64,
    requests: u64,
}

fn snapshot(runner: &Runner) -> Snapshot {
    let session = runner.session();
    Snapshot {
        session: session.as_ref().map(|s| s.id()),
        output: session.map_or(0, |s| s.capture().progress().len),
        requests: runner.requests(),
    }
}

/// Whether something holds the machine regardless of time.
fn held(runner: &Runner) -> bool {
    runner.followers() > 0
        || runner
            .session()
            .is_some_and(|s| s.exit().is_none() && s.activity() == Activity::Working)
}

/// Runs the policy until `shutdown`.
pub async fn run(runner: Arc<Runner>, policy: IdlePolicy, shutdown: CancellationToken) {
    tracing::info!(
        after = ?policy.after,
        action = policy.action.verb(),
        "idle policy: the machine is given back after this long without work"
    );
    let mut last = snapshot(&runner);
    let mut idle_since = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = snapshot(&runner);
        if now != last || held(&runner) {
            last = now;
            idle_since = Instant::now();
            continue;
        }
        if idle_since.elapsed() < policy.after {
            continue;
        }
        tracing::info!(
            idle = ?idle_since.elapsed(),
            "idle: asking the Machines API to {} this machine",
            policy.action.verb()
        );
        if let Err(e) = policy.api.post(policy.action.verb()).await {
            tracing::warn!("cannot {} the machine: {e}", policy.action.verb());
        }
        // Whether it worked (and we are resuming now) or not, wait a whole
        // idle period before asking again.
        idle_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_too_large_to_suspend_stop() {
        assert_eq!(
            IdleAction::Suspend.for_memory(Some(2048)),
            IdleAction::Suspend
        );
        assert_eq!(IdleAction::Suspend.for_memory(None), IdleAction::Suspend);
        assert_eq!(IdleAction::Suspend.for_memory(Some(4096)), IdleAction::Stop);
        assert_eq!(IdleAction::Stop.for_memory(Some(256)), IdleAction::Stop);
    }
}
