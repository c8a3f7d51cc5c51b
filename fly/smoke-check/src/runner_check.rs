//! `smoke-check runner URL`: one runner, end to end through its
//! interfaces: health, tools, start, a message the agent acts on, stop.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::client::{call, connect, http_client, step, wait_for_screen, wait_for_turn};

pub async fn check_runner(url: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
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
    step("the agent finished its turn", started);

    let stopped = call(&mcp, "stop", json!({})).await.context("stop")?;
    step(
        &format!("agent stopped ({})", stopped["exit"]["description"]),
        started,
    );
    let _ = mcp.cancel().await;
    Ok(())
}
