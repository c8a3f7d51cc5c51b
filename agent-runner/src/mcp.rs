//! The MCP face of the runner: the `start`, `message`, `key` and `stop`
//! tools.
//!
//! Runner errors are tool errors (`isError: true` with the reason as text
//! and structured content), not protocol errors: the calling agent reads
//! them and decides what to do next.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::runner::{MessageRequest, Runner, RunnerError, StartRequest};

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct StartArgs {
    /// Extra arguments appended to the runner's agent command line.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory of the agent (default: the runner's `--cwd`).
    pub cwd: Option<String>,
    /// Extra environment variables for the agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Terminal height in rows.
    pub rows: Option<u16>,
    /// Terminal width in columns.
    pub cols: Option<u16>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MessageArgs {
    /// What to type. Control keys (Ctrl+Z, Ctrl+C, ...) and escape sequences
    /// are removed; Enter is pressed after the text.
    pub text: String,
    /// Wait until the agent reports it is idle before typing, up to this
    /// many seconds (agents that emit OSC 7501 markers, such as codex).
    pub wait_idle_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct StopArgs {
    /// Seconds between SIGTERM and SIGKILL (default: the runner's
    /// `--stop-grace-secs`).
    pub grace_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct KeyArgs {
    /// The key: `ctrl-c` (interrupt the current turn), `escape` or `enter`.
    pub key: String,
}

/// One MCP connection's handler; all of them share the runner.
#[derive(Debug, Clone)]
pub struct RunnerTools {
    runner: Arc<Runner>,
    tool_router: ToolRouter<Self>,
}

impl RunnerTools {
    pub fn new(runner: Arc<Runner>) -> Self {
        Self {
            runner,
            tool_router: Self::tool_router(),
        }
    }
}

fn tool_error(error: &RunnerError) -> CallToolResult {
    let kind = match error {
        RunnerError::NotStarted => "not_started",
        RunnerError::AlreadyRunning { .. } => "already_running",
        RunnerError::Exited { .. } => "exited",
        RunnerError::EmptyText | RunnerError::OnlyKeys(_) => "empty_text",
        RunnerError::TooLong { .. } => "too_long",
        RunnerError::QueueFull { .. } => "queue_full",
        RunnerError::UnknownKey(_) => "unknown_key",
        RunnerError::NotIdle(_) => "not_idle",
        RunnerError::WriteTimeout(_) | RunnerError::Write(_) => "write_failed",
        RunnerError::Spawn(_) | RunnerError::CodexHomeOnNfs(_) => "spawn_failed",
        RunnerError::ShuttingDown => "shutting_down",
        RunnerError::NoCapture(_) | RunnerError::NoSessions | RunnerError::CaptureDir(_) => {
            "no_capture"
        }
    };
    let mut value = serde_json::json!({ "error": kind, "message": error.to_string() });
    if let RunnerError::Exited { session, exit } = error {
        value["session"] = (*session).into();
        value["exit"] = serde_json::to_value(exit).unwrap_or_default();
    }
    if let RunnerError::AlreadyRunning { session, pid } = error {
        value["session"] = (*session).into();
        value["pid"] = (*pid).into();
    }
    CallToolResult::structured_error(value)
}

fn tool_result<T: serde::Serialize>(result: Result<T, RunnerError>) -> CallToolResult {
    match result.map(|ok| serde_json::to_value(ok)) {
        Ok(Ok(value)) => CallToolResult::structured(value),
        Ok(Err(e)) => CallToolResult::structured_error(
            serde_json::json!({ "error": "internal", "message": e.to_string() }),
        ),
        Err(e) => tool_error(&e),
    }
}

#[tool_router]
impl RunnerTools {
    #[tool(
        description = "Start the agent in a pseudo-terminal. Its output is captured and served at the returned live_url. Fails while an agent is running."
    )]
    async fn start(&self, Parameters(args): Parameters<StartArgs>) -> CallToolResult {
        let request = StartRequest {
            args: args.args,
            cwd: args.cwd.map(PathBuf::from),
            env: args.env,
            rows: args.rows,
            cols: args.cols,
        };
        tool_result(self.runner.start(request).await)
    }

    #[tool(
        description = "Type a message into the running agent as a person would, then press Enter. Returns once written; watch /live or /screen for the answer."
    )]
    async fn message(&self, Parameters(args): Parameters<MessageArgs>) -> CallToolResult {
        let wait_idle = args
            .wait_idle_seconds
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
        let request = MessageRequest {
            text: args.text,
            wait_idle,
        };
        tool_result(self.runner.message(request).await)
    }

    #[tool(
        description = "Press one special key on purpose: ctrl-c interrupts the agent's current turn; escape; enter."
    )]
    async fn key(&self, Parameters(args): Parameters<KeyArgs>) -> CallToolResult {
        tool_result(self.runner.key(&args.key).await)
    }

    #[tool(
        description = "Stop the running agent (SIGTERM, then SIGKILL after the grace period). Its output stays at /live; `start` begins a new session."
    )]
    async fn stop(&self, Parameters(args): Parameters<StopArgs>) -> CallToolResult {
        let grace = args
            .grace_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
        tool_result(self.runner.stop(grace).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RunnerTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Runs one coding agent in a terminal. `start` launches it, `message` types \
                 to it, `key` sends ctrl-c/escape/enter on purpose, `stop` ends it. Its output is at GET /live \
                 (raw), /live?format=text, and /screen (the rendered screen).",
            )
    }
}
