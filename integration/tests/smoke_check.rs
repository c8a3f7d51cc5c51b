//! `smoke-check runner`, the check Fly runs on a new agent-runner image,
//! against local runners: one that works, one behind a token, one whose
//! agent cannot start. (With the real codex: `tests/codex.rs`.)

use std::process::{Command, Output};

use integration::runner::{AgentRunner, repl_agent};

fn smoke_check(args: &[&str]) -> Output {
    Command::new(integration::workspace_bin("smoke-check"))
        .args(args)
        .env_remove("AGENT_RUNNER_TOKEN")
        .output()
        .expect("running smoke-check")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn passes_against_a_working_runner_and_leaves_no_agent_running() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(
        &repl_agent(),
        dir.path(),
        &["--enter-delay-ms", "20", "--token", "tok"],
    );
    let output = smoke_check(&["runner", &runner.base, "--token", "tok", "--timeout", "30"]);
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    for step in [
        "/healthz ok",
        "MCP tools listed",
        "agent started (session 1)",
        "message reached the agent",
        "agent stopped",
        "smoke-check: ok",
    ] {
        assert!(log.contains(step), "missing {step:?} in:\n{log}");
    }
    let capture = std::fs::read_to_string(dir.path().join("session-000001.log")).unwrap();
    assert!(capture.contains("got: 'smoke-"), "{capture}");

    // Without the token the check fails, and says where.
    let output = smoke_check(&["runner", &runner.base, "--timeout", "30"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("MCP initialize"),
        "{}",
        text(&output)
    );
}

#[test]
fn fails_when_the_agent_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(std::path::Path::new("/nonexistent/agent"), dir.path(), &[]);
    let output = smoke_check(&["runner", &runner.base, "--timeout", "30"]);
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("FAILED: start: cannot start"), "{log}");

    // Nobody listening: a clear failure at the first step.
    let output = smoke_check(&["runner", "http://127.0.0.1:9", "--timeout", "5"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("/healthz: no answer"),
        "{}",
        text(&output)
    );
}
