//! `smoke-check`: what a new agent-runner image must pass before Fly
//! promotes it (`[[http_service.machine_checks]]` runs it against the
//! machine under test), and what CI runs here against a local runner.
//!
//! `smoke-check runner URL` proves the runner works end to end through its
//! real interfaces: `/healthz` answers, MCP lists the tools, `start`
//! launches the agent, a `message` reaches it (its text shows on the
//! rendered screen, and an agent that reports its activity finishes the
//! turn it started, so its model answered), and `stop` ends it so the
//! machine is promoted with no agent running. Every failure names the step
//! and exits 1.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check one runner: health, tools, start, message, stop.
    Runner {
        /// The runner's base URL, e.g. `http://[fdaa::3]:8080`.
        url: String,
        /// Bearer token, if the runner requires one.
        #[arg(long, env = "AGENT_RUNNER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How long each step may take, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Runner {
            url,
            token,
            timeout,
        } => check_runner(&url, token.as_deref(), Duration::from_secs(timeout)).await,
    };
    match result {
        Ok(()) => {
            println!("smoke-check: ok");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smoke-check: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One step's outcome, printed as it happens.
fn step(name: &str, started: Instant) {
    println!(
        "smoke-check: {name} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

async fn check_runner(url: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
    let url = url.trim_end_matches('/');
    let started = Instant::now();
    let http = http_client(token)?;

    let health: Value = http
        .get(format!("{url}/healthz"))
        .timeout(timeout)
        .send()
        .await
        .context("/healthz: no answer")?
        .error_for_status()
        .context("/healthz")?
        .json()
        .await
        .context("/healthz: not JSON")?;
    if health["status"] != "ok" {
        bail!("/healthz: status is {}", health["status"]);
    }
    step(
        &format!(
            "/healthz ok (machine {})",
            health["machine_id"].as_str().unwrap_or("not on Fly")
        ),
        started,
    );

    let mcp = connect(url, token).await?;
    let tools: Vec<String> = mcp
        .list_all_tools()
        .await
        .context("MCP tools/list")?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for wanted in ["start", "message", "stop"] {
        if !tools.iter().any(|t| t == wanted) {
            bail!("MCP: the runner has no `{wanted}` tool (it has {tools:?})");
        }
    }
    step("MCP tools listed", started);

    let info = call(&mcp, "start", json!({})).await.context("start")?;
    let session = info["session"].clone();
    step(&format!("agent started (session {session})"), started);

    let nonce = format!(
        "smoke-{:x}",
        std::process::id() ^ (started.elapsed().as_nanos() as u32)
    );
    let text = format!("{nonce} (a deployment check; no answer needed)");
    let seconds = timeout.as_secs_f64();
    call(
        &mcp,
        "message",
        json!({ "text": text, "wait_idle_seconds": seconds }),
    )
    .await
    .context("message")?;
    wait_for_screen(&http, url, &nonce, timeout)
        .await
        .context("the message never showed on the agent's screen")?;
    step("message reached the agent", started);
    wait_for_turn(&http, url, timeout).await?;

    let stopped = call(&mcp, "stop", json!({})).await.context("stop")?;
    step(
        &format!("agent stopped ({})", stopped["exit"]["description"]),
        started,
    );
    let _ = mcp.cancel().await;
    Ok(())
}

fn http_client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .context("the token is not a valid header value")?,
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .context("HTTP client")
}

async fn connect(
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<RunningService<RoleClient, ClientConfig>> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp"));
    if let Some(token) = token {
        config = config.auth_header(token.to_owned());
    }
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .context("MCP initialize at /mcp")
}

/// Calls a tool; a tool error becomes an error with the runner's message.
async fn call(
    mcp: &RunningService<RoleClient, ClientConfig>,
    tool: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let Value::Object(args) = args else {
        bail!("tool arguments must be an object");
    };
    let result = mcp
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .with_context(|| format!("MCP tools/call {tool}"))?;
    let value = result.structured_content.unwrap_or_default();
    if result.is_error == Some(true) {
        bail!("{}", value["message"].as_str().unwrap_or("tool error"));
    }
    Ok(value)
}

/// For agents that report their activity (codex's OSC 7501 markers): waits
/// for the turn the message started to finish, so the check proves the
/// agent acted on it (and reached its model), not only that it was typed.
async fn wait_for_turn(http: &reqwest::Client, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    loop {
        let health: Value = http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .context("/healthz")?
            .json()
            .await
            .context("/healthz: not JSON")?;
        match health["agent"]["activity"].as_str() {
            Some("unknown") | None => {
                println!("smoke-check: the agent does not report its activity; typed is enough");
                return Ok(());
            }
            Some("done") => {
                step("the agent finished its turn", started);
                return Ok(());
            }
            Some("error") => bail!("the agent's turn failed (is its model reachable?)"),
            // `idle` or `working`: the turn has not run or not finished.
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("the agent's turn did not finish within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_screen(
    http: &reqwest::Client,
    url: &str,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut screen = String::new();
    while Instant::now() < deadline {
        screen = http
            .get(format!("{url}/screen"))
            .send()
            .await
            .context("/screen")?
            .error_for_status()
            .context("/screen")?
            .text()
            .await
            .context("/screen")?;
        if screen.contains(needle) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("waited {timeout:?}; the screen shows:\n{screen}")
}
