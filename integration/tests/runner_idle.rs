//! The runner's idle policy against a stand-in for Fly's local Machines API:
//! a Unix socket served by the test, recording every request. The runner
//! must ask to suspend its machine once idle, and never while the agent is
//! working or `/live` is followed.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::runner::{AgentRunner, repl_agent};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Requests the fake Machines API received: (request line, Host header).
type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// Serves HTTP/1.1 on `socket`: records each request, answers 200 `{}`.
fn fake_machines_api(socket: &Path) -> Calls {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the fake API socket");
    let calls = Calls::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let host = head
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                recorded.lock().expect("calls").push((line, host));
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            });
        }
    });
    calls
}

fn start_runner(dir: &Path, socket: &Path, action: &str) -> AgentRunner {
    start_runner_of(dir, socket, action, "2048")
}

/// A runner on a Fly machine of `memory_mb` (Fly's `FLY_VM_MEMORY_MB`).
fn start_runner_of(dir: &Path, socket: &Path, action: &str, memory_mb: &str) -> AgentRunner {
    // The ids Fly sets on every machine.
    AgentRunner::start_with_env(
        &repl_agent(),
        dir,
        &[
            "--enter-delay-ms",
            "20",
            "--idle-after",
            "1",
            "--idle-action",
            action,
            "--machines-api-socket",
            socket.to_str().expect("UTF-8 socket path"),
        ],
        &[
            ("FLY_APP_NAME", "agents"),
            ("FLY_MACHINE_ID", "m-1"),
            ("FLY_VM_MEMORY_MB", memory_mb),
        ],
    )
}

fn count(calls: &Calls) -> usize {
    calls.lock().expect("calls").len()
}

async fn wait_for_call(calls: &Calls, within: Duration) {
    let deadline = Instant::now() + within;
    while count(calls) == 0 {
        assert!(Instant::now() < deadline, "no call to the Machines API");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keeps polling `/healthz` (as Fly's checks do) for `period`; fails if the
/// runner called the API meanwhile.
async fn assert_no_call_for(runner: &AgentRunner, calls: &Calls, period: Duration, why: &str) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        runner.healthz().await;
        assert_eq!(count(calls), 0, "suspended although {why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn suspends_when_idle_but_not_while_working_or_followed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let calls = fake_machines_api(&socket);
    let captures = dir.path().join("captures");
    std::fs::create_dir(&captures).unwrap();
    let runner = start_runner(&captures, &socket, "suspend");

    // Working: the agent's markers say so for 4 s, far past the idle time.
    let mcp = runner.mcp().await;
    mcp.call("start", json!({})).await.ok();
    runner
        .wait_for_output("repl-agent ready", Duration::from_secs(20))
        .await;
    mcp.call("message", json!({"text": "sleep 4"})).await.ok();
    runner
        .wait_for_output("got: 'sleep 4'", Duration::from_secs(20))
        .await;
    assert_no_call_for(
        &runner,
        &calls,
        Duration::from_secs(3),
        "the agent was working",
    )
    .await;
    runner
        .wait_for_output("slept", Duration::from_secs(20))
        .await;

    // Followed: a reader of /live holds the machine.
    let follower = runner
        .http()
        .get(runner.url("/live?follow=1"))
        .send()
        .await
        .unwrap();
    assert_no_call_for(
        &runner,
        &calls,
        Duration::from_secs(3),
        "/live was followed",
    )
    .await;
    drop(follower);

    // Idle (the /healthz polls above do not count): suspended.
    wait_for_call(&calls, Duration::from_secs(20)).await;
    let (line, host) = calls.lock().unwrap()[0].clone();
    assert_eq!(line, "POST /v1/apps/agents/machines/m-1/suspend HTTP/1.1");
    assert_eq!(host, "flaps");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_action_and_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let calls = fake_machines_api(&socket);
    let _runner = start_runner(dir.path(), &socket, "stop");
    wait_for_call(&calls, Duration::from_secs(20)).await;
    assert_eq!(
        calls.lock().unwrap()[0].0,
        "POST /v1/apps/agents/machines/m-1/stop HTTP/1.1"
    );

    // Fly refuses to suspend a machine of more than 2 GB: one that large is
    // stopped instead of being asked to suspend forever.
    let socket = dir.path().join("large.sock");
    let calls = fake_machines_api(&socket);
    let large = dir.path().join("large");
    std::fs::create_dir(&large).unwrap();
    let _runner = start_runner_of(&large, &socket, "suspend", "4096");
    wait_for_call(&calls, Duration::from_secs(20)).await;
    assert_eq!(
        calls.lock().unwrap()[0].0,
        "POST /v1/apps/agents/machines/m-1/stop HTTP/1.1"
    );

    // Off Fly, asking for the policy without the machine's ids is an error.
    let output = Command::new(integration::workspace_bin("agent-runner"))
        .args(["serve", "--listen", "127.0.0.1:0", "--idle-after", "5"])
        .env_remove("FLY_APP_NAME")
        .env_remove("FLY_MACHINE_ID")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FLY_APP_NAME"), "{stderr}");
}
