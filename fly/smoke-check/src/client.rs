//! The runner's interfaces as the smoke check uses them: MCP over
//! streamable HTTP (rmcp's client) and plain HTTP for `/healthz` and
//! `/screen`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;

pub type Mcp = RunningService<RoleClient, ClientConfig>;

/// One step's outcome, printed as it happens.
pub fn step(name: &str, started: Instant) {
    println!(
        "smoke-check: {name} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

pub fn http_client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
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

pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<Mcp> {
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
pub async fn call(mcp: &Mcp, tool: &str, args: Value) -> anyhow::Result<Value> {
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
pub async fn wait_for_turn(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
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
            Some("done") => return Ok(()),
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

pub async fn wait_for_screen(
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
