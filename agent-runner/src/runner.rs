//! The runner: at most one agent session at a time, and what the tools and
//! endpoints may do with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::capture::{self, Capture};
use crate::keys::{self, Key};
use crate::session::{ExitInfo, Session, SpawnError, Spec};
use crate::terminal::Activity;

/// How the runner starts agents and types into them.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent command; `codex` by default.
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub capture_dir: PathBuf,
    /// Base URL that `start` reports `/live` under.
    pub public_url: String,
    pub rows: u16,
    pub cols: u16,
    /// Pause between a message's text and its Enter, so a TUI that treats a
    /// fast burst of keys as a paste has ended the paste.
    pub enter_delay: Duration,
    pub max_message_bytes: usize,
    /// Messages waiting for the typing turn (or being typed) at once; more
    /// are refused. With the Enter delay this bounds the rate of messages
    /// too: they are typed one after another.
    pub max_queued_messages: usize,
    /// How long a write may wait for an agent that does not read its input.
    pub write_timeout: Duration,
    /// Between SIGTERM and SIGKILL when stopping the agent.
    pub stop_grace: Duration,
}

/// What `start` may change for one session.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub rows: Option<u16>,
    pub cols: Option<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct MessageRequest {
    pub text: String,
    /// Wait until the agent reports it is idle before typing.
    pub wait_idle: Option<Duration>,
}

/// What typing a message did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Typed {
    pub session: u64,
    pub bytes: usize,
    /// Human-readable notes on what was removed from the text, if anything.
    pub dropped: Vec<String>,
    pub bracketed_paste: bool,
    pub activity: Activity,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("no agent has been started; call `start` first")]
    NotStarted,
    #[error(
        "agent session {session} (pid {pid}) is still running; it must exit before another starts"
    )]
    AlreadyRunning { session: u64, pid: u32 },
    #[error("the agent of session {session} has exited ({}); call `start` for a new session", exit.description)]
    Exited { session: u64, exit: ExitInfo },
    #[error("the message is empty (or only whitespace)")]
    EmptyText,
    #[error("nothing is left of the message once keys are removed ({0})")]
    OnlyKeys(String),
    #[error("the message is {len} bytes; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    #[error("{max} messages are already waiting to be typed; try again once they are")]
    QueueFull { max: usize },
    #[error("unknown key {0:?}; known keys: ctrl-c, enter, escape")]
    UnknownKey(String),
    #[error("the agent did not become idle within {0:?}")]
    NotIdle(Duration),
    #[error("the agent did not read its input within {0:?}")]
    WriteTimeout(Duration),
    #[error("cannot write to the agent's terminal: {0}")]
    Write(std::io::Error),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("no capture for session {0}")]
    NoCapture(u64),
    #[error("no session has run yet")]
    NoSessions,
    #[error("cannot read the capture directory: {0}")]
    CaptureDir(std::io::Error),
    #[error("the runner is shutting down")]
    ShuttingDown,
    #[error(
        "CODEX_HOME {0} is on NFS; codex keeps SQLite databases in WAL mode there, \
         which need local locking: set CODEX_HOME to a directory on local disk"
    )]
    CodexHomeOnNfs(PathBuf),
}

/// A session as the tools and `/healthz` describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub session: u64,
    pub pid: u32,
    pub command: Vec<String>,
    pub state: &'static str,
    pub activity: Activity,
    pub exit: Option<ExitInfo>,
    pub capture_bytes: u64,
    pub resumed_after_stop: u64,
    pub live_url: String,
}

#[derive(Debug)]
pub struct Runner {
    config: Config,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// A cheap copy for readers that must not wait behind `start`.
    latest: std::sync::RwLock<Option<Arc<Session>>>,
    followers: AtomicUsize,
    /// Requests and tool calls so far: the idle policy's sign of life.
    requests: std::sync::atomic::AtomicU64,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Runner {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            current: tokio::sync::Mutex::new(None),
            latest: std::sync::RwLock::new(None),
            followers: AtomicUsize::new(0),
            requests: std::sync::atomic::AtomicU64::new(0),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The latest session of this process, running or not.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.latest.read().ok().and_then(|s| s.clone())
    }

    fn live_url(&self, session: u64) -> String {
        format!(
            "{}/live?session={session}",
            self.config.public_url.trim_end_matches('/')
        )
    }

    pub fn describe(&self, session: &Session) -> SessionInfo {
        let exit = session.exit();
        SessionInfo {
            session: session.id(),
            pid: session.pid(),
            command: session.command().to_vec(),
            state: if exit.is_some() { "exited" } else { "running" },
            activity: session.activity(),
            exit,
            capture_bytes: session.capture().progress().len,
            resumed_after_stop: session.resumes(),
            live_url: self.live_url(session.id()),
        }
    }

    /// Starts a new session; refuses while one runs.
    pub async fn start(&self, request: StartRequest) -> Result<SessionInfo, RunnerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(RunnerError::ShuttingDown);
        }
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref()
            && session.exit().is_none()
        {
            return Err(RunnerError::AlreadyRunning {
                session: session.id(),
                pid: session.pid(),
            });
        }
        let on_disk = capture::latest_session(&self.config.capture_dir)
            .map_err(RunnerError::CaptureDir)?
            .unwrap_or(0);
        let id = on_disk.max(current.as_ref().map_or(0, |s| s.id())) + 1;
        if is_codex(&self.config.program) {
            let home = codex_home(&request.env);
            if home.as_deref().is_some_and(on_nfs) {
                return Err(RunnerError::CodexHomeOnNfs(home.unwrap_or_default()));
            }
        }
        let mut args = self.config.args.clone();
        args.extend(request.args);
        let spec = Spec {
            program: self.config.program.clone(),
            args,
            cwd: request.cwd.or_else(|| self.config.cwd.clone()),
            env: request.env,
            rows: request.rows.unwrap_or(self.config.rows).max(2),
            cols: request.cols.unwrap_or(self.config.cols).max(10),
        };
        let session = Session::spawn(id, &spec, &self.config.capture_dir)?;
        *current = Some(session.clone());
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some(session.clone());
        }
        Ok(self.describe(&session))
    }

    fn running(&self) -> Result<Arc<Session>, RunnerError> {
        let session = self.session().ok_or(RunnerError::NotStarted)?;
        if let Some(exit) = session.exit() {
            return Err(RunnerError::Exited {
                session: session.id(),
                exit,
            });
        }
        Ok(session)
    }

    /// Types a message and presses Enter, as a person would.
    pub async fn message(&self, request: MessageRequest) -> Result<Typed, RunnerError> {
        if request.text.is_empty() {
            return Err(RunnerError::EmptyText);
        }
        if request.text.len() > self.config.max_message_bytes {
            return Err(RunnerError::TooLong {
                len: request.text.len(),
                max: self.config.max_message_bytes,
            });
        }
        let session = self.running()?;
        let sanitized = keys::sanitize(request.text.as_bytes());
        let dropped: Vec<String> = sanitized
            .dropped
            .iter()
            .map(|d| {
                format!(
                    "byte {}: {:?}: {}",
                    d.at,
                    String::from_utf8_lossy(&d.bytes),
                    d.why
                )
            })
            .collect();
        let text = sanitized
            .text
            .strip_suffix(b"\n")
            .unwrap_or(&sanitized.text);
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(if dropped.is_empty() {
                RunnerError::EmptyText
            } else {
                RunnerError::OnlyKeys(dropped.join("; "))
            });
        }
        if !dropped.is_empty() {
            tracing::warn!(session = session.id(), dropped = ?dropped, "removed keys from a message");
        }

        let Some(_queued) = session.join_queue(self.config.max_queued_messages) else {
            tracing::warn!(
                session = session.id(),
                max = self.config.max_queued_messages,
                "message queue full; refusing a message"
            );
            return Err(RunnerError::QueueFull {
                max: self.config.max_queued_messages,
            });
        };
        let _turn = session.typing_turn().await;
        if let Some(limit) = request.wait_idle {
            tokio::select! {
                _ = session.ready() => {}
                _ = tokio::time::sleep(limit) => return Err(RunnerError::NotIdle(limit)),
                info = session.exited() => {
                    return Err(RunnerError::Exited { session: session.id(), exit: info });
                }
            }
        }
        let bracketed = session.bracketed_paste();
        let payload = if bracketed {
            keys::bracketed_paste(text)
        } else {
            text.to_vec()
        };
        self.write(&session, &payload).await?;
        tokio::time::sleep(self.config.enter_delay).await;
        self.write(&session, Key::Enter.bytes()).await?;
        Ok(Typed {
            session: session.id(),
            bytes: payload.len() + 1,
            dropped,
            bracketed_paste: bracketed,
            activity: session.activity(),
        })
    }

    /// Sends one deliberate key, such as Ctrl+C to interrupt a turn.
    pub async fn key(&self, name: &str) -> Result<SessionInfo, RunnerError> {
        let key = Key::from_name(name).ok_or_else(|| RunnerError::UnknownKey(name.to_owned()))?;
        let session = self.running()?;
        let _turn = session.typing_turn().await;
        self.write(&session, key.bytes()).await?;
        tracing::info!(session = session.id(), ?key, "sent a key on request");
        Ok(self.describe(&session))
    }

    async fn write(&self, session: &Session, bytes: &[u8]) -> Result<(), RunnerError> {
        match tokio::time::timeout(self.config.write_timeout, session.write(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => match session.exit() {
                Some(exit) => Err(RunnerError::Exited {
                    session: session.id(),
                    exit,
                }),
                None => Err(RunnerError::Write(e)),
            },
            Err(_) => Err(RunnerError::WriteTimeout(self.config.write_timeout)),
        }
    }

    /// The capture of `session`, or of the latest session when `None`:
    /// this process's, or one an earlier runner left in the capture dir.
    pub fn capture(&self, session: Option<u64>) -> Result<Arc<Capture>, RunnerError> {
        let current = self.session();
        let wanted = match session {
            Some(id) => id,
            None => match &current {
                Some(s) => s.id(),
                None => capture::latest_session(&self.config.capture_dir)
                    .map_err(RunnerError::CaptureDir)?
                    .ok_or(RunnerError::NoSessions)?,
            },
        };
        if let Some(s) = current.filter(|s| s.id() == wanted) {
            return Ok(s.capture().clone());
        }
        Capture::open_finished(&self.config.capture_dir, wanted)
            .map(Arc::new)
            .map_err(|_| RunnerError::NoCapture(wanted))
    }

    /// Counts `/live?follow=1` readers while the guard lives.
    pub fn follower(self: &Arc<Self>) -> FollowerGuard {
        self.followers.fetch_add(1, Ordering::SeqCst);
        FollowerGuard(self.clone())
    }

    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::SeqCst)
    }

    /// Records that someone used the runner (not `/healthz`).
    pub fn touch(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops the running agent: SIGTERM to its process group, SIGKILL after
    /// `grace` (default: the runner's). Its capture stays.
    pub async fn stop(&self, grace: Option<Duration>) -> Result<SessionInfo, RunnerError> {
        let session = self.running()?;
        let info = session.stop(grace.unwrap_or(self.config.stop_grace)).await;
        tracing::info!(
            session = session.id(),
            "stopped on request: {}",
            info.description
        );
        Ok(self.describe(&session))
    }

    /// Stops the agent (if any) and refuses new sessions.
    pub async fn shutdown(&self) -> Option<ExitInfo> {
        self.shutting_down.store(true, Ordering::SeqCst);
        let session = self.current.lock().await.clone()?;
        let info = session.stop(self.config.stop_grace).await;
        Some(info)
    }
}

/// Whether `program` is the codex CLI (by file name).
pub fn is_codex(program: &str) -> bool {
    std::path::Path::new(program)
        .file_name()
        .is_some_and(|name| name == "codex")
}

/// The `CODEX_HOME` the agent will use: the session's environment, the
/// runner's, or codex's default `~/.codex`.
fn codex_home(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    env.get("CODEX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CODEX_HOME").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".codex")))
}

/// Whether `path` (or, before codex creates it, its nearest existing
/// ancestor) is on an NFS mount.
fn on_nfs(path: &std::path::Path) -> bool {
    path.ancestors()
        .find_map(|p| rustix::fs::statfs(p).ok())
        .is_some_and(|fs| fs.f_type == rustix::fs::NFS_SUPER_MAGIC)
}

/// Decrements the follower count when a `/live?follow=1` reader leaves.
#[derive(Debug)]
pub struct FollowerGuard(Arc<Runner>);

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.followers.fetch_sub(1, Ordering::SeqCst);
    }
}
