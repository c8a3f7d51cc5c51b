//! One run of the agent: a process in its own pseudo-terminal, its output
//! flowing into the capture and the screen, its input written by messages.
//!
//! The agent is spawned directly (never under a shell) as the leader of a
//! new session with the pty as its controlling terminal. Its process group
//! therefore has no parent in the same session: it is orphaned, and the
//! kernel discards the stop signals (SIGTSTP, SIGTTIN, SIGTTOU) sent to it,
//! including the SIGTSTP a raw-mode TUI sends itself on reading Ctrl+Z.
//! The pty's termios has VSUSP, VQUIT and IXON off for agents that stay in
//! cooked mode. A watchdog resumes anything in the session that is stopped
//! anyway (SIGSTOP cannot be discarded).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustix::process::{Pid, Signal};
use rustix::termios::{InputModes, OptionalActions, SpecialCodeIndex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::capture::Capture;
use crate::terminal::{Activity, Terminal};

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub rows: u16,
    pub cols: u16,
}

/// How the agent ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// "exited with status 3", "killed by signal 9 (SIGKILL)".
    pub description: String,
    /// Killed by SIGKILL while the kernel's OOM kill count rose: out of
    /// memory (the machine's, or its cgroup's limit).
    pub oom_killed: bool,
}

impl ExitInfo {
    /// `oom_kills_rose`: whether the kernel's OOM kill count went up while
    /// the agent ran (see [`crate::oom`]).
    fn from_status(status: ExitStatus, oom_kills_rose: bool) -> Self {
        let code = status.code();
        let signal = status.signal();
        let oom_killed = signal == Some(9) && oom_kills_rose;
        let description = match (code, signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(9)) if oom_killed => {
                "killed by the kernel's OOM killer (signal 9, SIGKILL): out of memory".to_owned()
            }
            (None, Some(signal)) => format!("killed by signal {signal} ({})", signal_name(signal)),
            (None, None) => "ended with an unknown status".to_owned(),
        };
        Self {
            code,
            signal,
            description,
            oom_killed,
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the capture file in {dir}: {source}")]
    Capture {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open a pseudo-terminal: {0}")]
    Pty(pty_process::Error),
    #[error("cannot set the terminal's modes: {0}")]
    Termios(rustix::io::Errno),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: pty_process::Error,
    },
}

/// A running or finished agent.
#[derive(Debug)]
pub struct Session {
    id: u64,
    pid: u32,
    command: Vec<String>,
    started: SystemTime,
    capture: Arc<Capture>,
    terminal: Arc<Mutex<Terminal>>,
    writer: Arc<tokio::sync::Mutex<pty_process::OwnedWritePty>>,
    /// Serialises messages so texts and their Enters never interleave.
    typing: tokio::sync::Mutex<()>,
    /// Messages waiting for the typing turn or being typed.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    exit: watch::Receiver<Option<ExitInfo>>,
    activity: watch::Receiver<Activity>,
    resumes: Arc<AtomicU64>,
}

/// How often the watchdog looks for stopped processes.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);
/// How long the output may keep flowing after the agent exits (a child it
/// left behind can hold the pty open); then the capture is closed anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

impl Session {
    /// Starts the agent. Returns once it is running.
    pub fn spawn(id: u64, spec: &Spec, capture_dir: &Path) -> Result<Arc<Self>, SpawnError> {
        let capture =
            Arc::new(
                Capture::create(capture_dir, id).map_err(|source| SpawnError::Capture {
                    dir: capture_dir.to_owned(),
                    source,
                })?,
            );
        let (pty, pts) = pty_process::open().map_err(SpawnError::Pty)?;
        pty.resize(pty_process::Size::new(spec.rows, spec.cols))
            .map_err(SpawnError::Pty)?;
        disable_job_control_keys(&pts).map_err(SpawnError::Termios)?;

        let mut command = pty_process::Command::new(&spec.program)
            .args(&spec.args)
            .envs(&spec.env)
            .env("TERM", "xterm-256color")
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            command = command.current_dir(cwd);
        }
        let mut child = command.spawn(pts).map_err(|source| SpawnError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let oom_kills_at_start = crate::oom::kills_so_far();
        let (reader, writer) = pty.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let terminal = Arc::new(Mutex::new(Terminal::new(spec.rows, spec.cols)));
        let (exit_tx, exit) = watch::channel(None);
        let (activity_tx, activity) = watch::channel(Activity::Unknown);
        let resumes = Arc::new(AtomicU64::new(0));

        let output = tokio::spawn(pump_output(
            reader,
            capture.clone(),
            terminal.clone(),
            writer.clone(),
            activity_tx,
        ));
        tokio::spawn({
            let capture = capture.clone();
            async move {
                let status = child.wait().await;
                let oom_kills_rose = oom_kills_at_start
                    .zip(crate::oom::kills_so_far())
                    .is_some_and(|(before, now)| now > before);
                let info = match status {
                    Ok(status) => ExitInfo::from_status(status, oom_kills_rose),
                    Err(e) => ExitInfo {
                        code: None,
                        signal: None,
                        description: format!("could not be waited for: {e}"),
                        oom_killed: false,
                    },
                };
                let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, output).await;
                if drained.is_err() {
                    tracing::warn!(
                        session = id,
                        "output still open after the agent exited; closing the capture"
                    );
                }
                if let Err(e) = capture.finish() {
                    tracing::error!(session = id, "cannot flush the capture: {e}");
                }
                tracing::info!(session = id, pid, "agent {}", info.description);
                let _ = exit_tx.send(Some(info));
            }
        });
        if let Some(pid) = Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
            tokio::spawn(watchdog(id, pid, exit.clone(), resumes.clone()));
        }

        let mut command_line = vec![spec.program.clone()];
        command_line.extend(spec.args.iter().cloned());
        tracing::info!(session = id, pid, command = ?command_line, "agent started");
        Ok(Arc::new(Self {
            id,
            pid,
            command: command_line,
            started: SystemTime::now(),
            capture,
            terminal,
            writer,
            typing: tokio::sync::Mutex::new(()),
            queued: Arc::default(),
            exit,
            activity,
            resumes,
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn command(&self) -> &[String] {
        &self.command
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    /// `None` while running.
    pub fn exit(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    pub async fn exited(&self) -> ExitInfo {
        let mut exit = self.exit.clone();
        loop {
            if let Some(info) = exit.borrow_and_update().clone() {
                return info;
            }
            if exit.changed().await.is_err() {
                return ExitInfo {
                    code: None,
                    signal: None,
                    description: "lost track of the agent".to_owned(),
                    oom_killed: false,
                };
            }
        }
    }

    pub fn activity(&self) -> Activity {
        *self.activity.borrow()
    }

    /// Waits until the agent's markers say it is ready for input.
    pub async fn ready(&self) {
        let mut activity = self.activity.clone();
        let _ = activity.wait_for(|a| a.is_ready()).await;
    }

    /// How many times the watchdog had to resume a stopped process.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }

    pub fn screen_text(&self) -> String {
        self.terminal.lock().map(|t| t.text()).unwrap_or_default()
    }

    pub fn screen_html(&self) -> String {
        self.terminal.lock().map(|t| t.html()).unwrap_or_default()
    }

    pub fn bracketed_paste(&self) -> bool {
        self.terminal
            .lock()
            .map(|t| t.bracketed_paste())
            .unwrap_or(false)
    }

    /// A place in the message queue, or `None` when `max` messages are
    /// already waiting; the place is given back when the guard drops.
    pub fn join_queue(&self, max: usize) -> Option<QueuePlace> {
        use std::sync::atomic::Ordering;
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(QueuePlace(Arc::clone(&self.queued)))
    }

    /// Holds the typing turn: while held, no other message is typed.
    pub async fn typing_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.typing.lock().await
    }

    /// Writes bytes to the agent's terminal input.
    pub async fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        writer.write_all(bytes).await?;
        writer.flush().await
    }

    /// Asks the agent to end: SIGTERM to its process group, SIGKILL after
    /// `grace`. Returns how it ended.
    pub async fn stop(&self, grace: Duration) -> ExitInfo {
        if let Some(info) = self.exit() {
            return info;
        }
        let group = Pid::from_raw(i32::try_from(self.pid).unwrap_or(0));
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, Signal::TERM);
            let _ = rustix::process::kill_process_group(group, Signal::CONT);
        }
        match tokio::time::timeout(grace, self.exited()).await {
            Ok(info) => info,
            Err(_) => {
                tracing::warn!(
                    session = self.id,
                    "agent ignored SIGTERM for {grace:?}; killing it"
                );
                if let Some(group) = group {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
                self.exited().await
            }
        }
    }
}

/// Switches off the keys a cooked-mode terminal turns into job control or
/// flow control, so they are plain bytes if they ever get through.
fn disable_job_control_keys(pts: &pty_process::Pts) -> rustix::io::Result<()> {
    let mut termios = rustix::termios::tcgetattr(pts)?;
    // 0 is _POSIX_VDISABLE on Linux.
    termios.special_codes[SpecialCodeIndex::VSUSP] = 0;
    termios.special_codes[SpecialCodeIndex::VQUIT] = 0;
    termios.input_modes -= InputModes::IXON | InputModes::IXOFF;
    rustix::termios::tcsetattr(pts, OptionalActions::Now, &termios)
}

/// Moves the agent's output into the capture and the screen, and answers
/// the terminal queries in it.
async fn pump_output(
    mut reader: pty_process::OwnedReadPty,
    capture: Arc<Capture>,
    terminal: Arc<Mutex<Terminal>>,
    writer: Arc<tokio::sync::Mutex<pty_process::OwnedWritePty>>,
    activity: watch::Sender<Activity>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // EIO: every process holding the terminal has closed it.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => break,
            Err(e) => {
                tracing::error!("reading the agent's terminal: {e}");
                break;
            }
        };
        let chunk = &buf[..n];
        if let Err(e) = capture.append(chunk) {
            tracing::error!(path = %capture.path().display(), "cannot write the capture: {e}");
        }
        let effects = match terminal.lock() {
            Ok(mut terminal) => terminal.process(chunk),
            Err(_) => continue,
        };
        if let Some(now) = effects.activity {
            activity.send_if_modified(|a| std::mem::replace(a, now) != now);
        }
        if !effects.replies.is_empty() {
            let mut writer = writer.lock().await;
            if let Err(e) = writer.write_all(&effects.replies).await {
                tracing::debug!("cannot answer the agent's terminal query: {e}");
            }
        }
    }
}

/// Resumes any process of the agent's session that is stopped.
async fn watchdog(
    session: u64,
    leader: Pid,
    mut exit: watch::Receiver<Option<ExitInfo>>,
    resumes: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = exit.changed() => return,
        }
        if exit.borrow().is_some() {
            return;
        }
        let stopped = tokio::task::spawn_blocking(move || stopped_in_session(leader))
            .await
            .unwrap_or_default();
        for pid in stopped {
            tracing::warn!(
                session,
                pid = pid.as_raw_nonzero().get(),
                "agent process was stopped; resuming it with SIGCONT"
            );
            if rustix::process::kill_process(pid, Signal::CONT).is_ok() {
                resumes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The processes in `leader`'s session whose state is stopped (`T`).
fn stopped_in_session(leader: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let leader = leader.as_raw_nonzero().get();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, sid)| state == 'T' && sid == leader)
        })
        .filter_map(Pid::from_raw)
        .collect()
}

/// State and session id from `/proc/PID/stat`; the command name in
/// parentheses may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let _pgrp = fields.next()?;
    let session = fields.next()?.parse().ok()?;
    Some((state, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let stat = "1234 (a (weird) name) T 1 1234 1234 34817 1234 4194560 0";
        assert_eq!(parse_stat(stat), Some(('T', 1234)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn exit_descriptions_name_the_cause() {
        let killed = ExitInfo::from_status(ExitStatus::from_raw(9), false);
        assert_eq!(killed.signal, Some(9));
        assert_eq!(killed.description, "killed by signal 9 (SIGKILL)");
        assert!(!killed.oom_killed);
        let oom = ExitInfo::from_status(ExitStatus::from_raw(9), true);
        assert!(oom.oom_killed);
        assert!(oom.description.contains("OOM killer"));
        let terminated = ExitInfo::from_status(ExitStatus::from_raw(15), true);
        assert!(!terminated.oom_killed, "only SIGKILL is the OOM killer's");
        let exited = ExitInfo::from_status(ExitStatus::from_raw(3 << 8), true);
        assert_eq!(exited.code, Some(3));
        assert_eq!(exited.description, "exited with status 3");
    }
}

/// A message's place in its session's queue; see [`Session::join_queue`].
#[derive(Debug)]
pub struct QueuePlace(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
