//! agent-runner driven by an independent MCP client: the official MCP
//! Python SDK (`pip install mcp`), over streamable HTTP and over stdio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration::runner::{AgentRunner, repl_agent};

/// The Python with the SDK installed: `integration/run-tests` makes a venv
/// and names it in `INTEGRATION_PYTHON`.
fn python() -> Command {
    Command::new(std::env::var_os("INTEGRATION_PYTHON").unwrap_or_else(|| "python3".into()))
}

fn mcp_call() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp-client/mcp-call.py")
}

/// Runs the SDK client; returns one JSON value per printed line.
fn sdk(url: &str, token: Option<&str>, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = python();
    command.arg(mcp_call()).arg(url);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let output = command.args(args).output().expect("running python3");
    assert!(
        output.status.success(),
        "mcp-call.py {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_over_streamable_http() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(
        &repl_agent(),
        dir.path(),
        &["--enter-delay-ms", "20", "--token", "t0ken"],
    );
    let url = runner.url("/mcp");

    let listed = sdk(&url, Some("t0ken"), &["list"]);
    assert_eq!(listed[0]["server"], "agent-runner");
    let tools = listed[0]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    for name in ["start", "message", "key", "stop"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let message = tools.iter().find(|t| t["name"] == "message").unwrap();
    assert_eq!(
        message["input_schema"]["required"],
        serde_json::json!(["text"])
    );

    let results = sdk(
        &url,
        Some("t0ken"),
        &[
            "call",
            "message",
            r#"{"text": "too early"}"#,
            "start",
            "{}",
            "message",
            r#"{"text": "from python"}"#,
        ],
    );
    assert_eq!(results[0]["is_error"], true);
    assert_eq!(results[0]["structured"]["error"], "not_started");
    assert_eq!(results[1]["is_error"], false);
    assert_eq!(results[1]["structured"]["session"], 1);
    assert_eq!(results[2]["is_error"], false, "{}", results[2]);
    runner
        .wait_for_output("got: 'from python'", Duration::from_secs(20))
        .await;

    // Without the token the SDK cannot even initialize.
    let refused = python()
        .arg(mcp_call())
        .arg(&url)
        .arg("list")
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn python_sdk_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let command = format!(
        "stdio:{} stdio --command {} --capture-dir {} --enter-delay-ms 20",
        integration::workspace_bin("agent-runner").display(),
        repl_agent().display(),
        dir.path().display()
    );
    let results = sdk(
        &command,
        None,
        &[
            "call",
            "start",
            "{}",
            "message",
            r#"{"text": "over stdio"}"#,
        ],
    );
    assert_eq!(results[0]["structured"]["session"], 1, "{}", results[0]);
    assert_eq!(results[1]["is_error"], false, "{}", results[1]);
    // The client closed stdin: the runner stopped the agent and flushed
    // its capture, which holds the message (typed before the runner went).
    let capture = dir.path().join("session-000001.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&capture).unwrap_or_default();
        if text.contains("over stdio") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "capture: {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
