//! `agent-runner` as a child process on an ephemeral 127.0.0.1 port, and
//! the clients the tests drive it with: rmcp's own streamable HTTP client,
//! plain HTTP for `/live` and friends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

/// The scripted REPL that stands in for a coding agent.
pub fn repl_agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/repl-agent")
}

pub struct AgentRunner {
    child: Child,
    pub base: String,
    pub capture_dir: PathBuf,
    token: Option<String>,
}

impl AgentRunner {
    /// Starts a runner for `command` with its captures in `capture_dir`
    /// and extra flags.
    pub fn start(command: &Path, capture_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(command, capture_dir, extra, &[])
    }

    /// [`Self::start`] with extra environment variables for the runner.
    pub fn start_with_env(
        command: &Path,
        capture_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(crate::workspace_bin("agent-runner"))
            .args(["serve", "--listen", "127.0.0.1:0", "--command"])
            .arg(command)
            .arg("--capture-dir")
            .arg(capture_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,rmcp=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting agent-runner");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("agent-runner exited before it was listening")
                .expect("reading agent-runner output");
            if let Some(url) = line.strip_prefix("agent-runner listening on ") {
                break url.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let token = extra
            .windows(2)
            .find(|w| w[0] == "--token")
            .map(|w| w[1].to_owned());
        Self {
            child,
            base,
            capture_dir: capture_dir.to_owned(),
            token,
        }
    }

    /// A runner of the scripted REPL agent with a short Enter delay.
    pub fn repl(capture_dir: &Path) -> Self {
        Self::start(&repl_agent(), capture_dir, &["--enter-delay-ms", "20"])
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An HTTP client that sends the runner's token, if it has one.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header value"),
            );
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("HTTP client")
    }

    /// An MCP client session over streamable HTTP.
    pub async fn mcp(&self) -> Mcp {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.url("/mcp"));
        if let Some(token) = &self.token {
            config = config.auth_header(token.clone());
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        let service = ClientConfig::default()
            .serve(transport)
            .await
            .expect("MCP initialize");
        Mcp { service }
    }

    /// GET `path` as text; panics on a non-success status.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http().get(self.url(path)).send().await.expect("GET");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.text().await.expect("body")
    }

    pub async fn healthz(&self) -> serde_json::Value {
        serde_json::from_str(&self.get_text("/healthz").await).expect("healthz JSON")
    }

    /// Polls `/live?format=text` until it contains `needle`.
    pub async fn wait_for_output(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.get_text("/live?format=text").await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear within {timeout:?}; output so far:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the runner outright (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the runner to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "agent-runner ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected MCP client.
pub struct Mcp {
    pub service: RunningService<RoleClient, ClientConfig>,
}

/// A tool call's outcome: its structured content and whether it is an error.
#[derive(Debug, Clone)]
pub struct ToolOutcome {
    pub is_error: bool,
    pub value: serde_json::Value,
}

impl ToolOutcome {
    fn from_result(result: CallToolResult) -> Self {
        Self {
            is_error: result.is_error == Some(true),
            value: result.structured_content.unwrap_or_default(),
        }
    }

    /// The structured content of a successful call.
    pub fn ok(self) -> serde_json::Value {
        assert!(!self.is_error, "tool failed: {}", self.value);
        self.value
    }

    /// The structured content of a failed call.
    pub fn err(self) -> serde_json::Value {
        assert!(self.is_error, "tool should have failed: {}", self.value);
        self.value
    }
}

impl Mcp {
    pub async fn call(&self, tool: &str, args: serde_json::Value) -> ToolOutcome {
        let args = match args {
            serde_json::Value::Object(map) => map,
            other => panic!("tool arguments must be an object, not {other}"),
        };
        let result = self
            .service
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
            .await
            .expect("tools/call");
        ToolOutcome::from_result(result)
    }

    pub async fn tool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .service
            .list_all_tools()
            .await
            .expect("tools/list")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        names
    }
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`...), if it exists.
pub fn process_state(pid: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}
