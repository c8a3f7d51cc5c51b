//! The built `fly-coordinator` binary: how it refuses to start, and that
//! the Fly API token reaches the Machines API and nothing else (not the
//! logs at their most verbose, not `--help`).

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::json;
use support::{Failure, MockApi, runner_machine};

const BINARY: &str = env!("CARGO_BIN_EXE_fly-coordinator");

/// The binary with a clean environment: nothing from the test runner's
/// shell (a real FLY_API_TOKEN, RUST_LOG, ...) leaks in.
fn coordinator() -> Command {
    let mut command = Command::new(BINARY);
    command.env_clear().stdin(Stdio::null());
    command
}

/// Waits for a child that should exit by itself, killing it after a
/// generous bound so a broken binary fails the test instead of hanging it.
fn finish(mut child: Child) -> Output {
    let limit = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() > limit {
            child.kill().expect("kill the child");
            panic!("fly-coordinator did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .expect("collect the child's output")
}

#[test]
fn refuses_to_start_without_a_token() {
    let child = coordinator()
        .args([
            "--runner-app",
            "runners",
            "--runner-image",
            "img",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no Fly API token"), "{stderr}");
    assert!(stderr.contains("FLY_API_TOKEN"), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
}

/// Without a management token anyone who reaches the coordinator could
/// create machines: it does not start.
#[test]
fn refuses_to_start_without_a_management_token() {
    let child = coordinator()
        .args([
            "--runner-app",
            "runners",
            "--runner-image",
            "img",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("FLY_API_TOKEN", "t")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no management token"), "{stderr}");
    assert!(stderr.contains("COORDINATOR_TOKEN"), "{stderr}");
}

#[test]
fn refuses_an_unreadable_token_file() {
    let child = coordinator()
        .args([
            "--runner-app",
            "runners",
            "--runner-image",
            "img",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--token-file", "/nonexistent/token"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot read the token file /nonexistent/token"),
        "{stderr}"
    );
}

#[test]
fn help_never_shows_the_token() {
    let child = coordinator()
        .arg("--help")
        .env("FLY_API_TOKEN", "help-sentinel")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish(child);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(help.contains("FLY_API_TOKEN"), "{help}");
    assert!(!help.contains("help-sentinel"), "{help}");
}

/// Kills the coordinator when the test ends, even by a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running binary, at RUST_LOG=trace, wakes, creates and retries
/// through the mock: the mock sees the token from the file; stderr holds
/// neither that token nor the one in FLY_API_TOKEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_but_never_logged() {
    let api = MockApi::start().await;
    api.add_machine(runner_machine(
        "m1",
        "stopped",
        json!({"agent": "alice", "repo": "app@main"}),
    ));
    api.fail(Failure {
        method: Method::POST,
        path_suffix: "/machines/m1/start".into(),
        status: 429,
        times: Some(1),
        retry_after: Some("0".into()),
    });
    api.fail(Failure {
        method: Method::POST,
        path_suffix: "/apps/runners/volumes".into(),
        status: 500,
        times: None,
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-sentinel-7f3a\n").unwrap();

    let mut child = Running(
        coordinator()
            .args([
                "--runner-app",
                "runners",
                "--runner-image",
                "img",
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--api-base",
                &api.base,
                "--retry-base-ms",
                "10",
                "--retry-cap-ms",
                "20",
            ])
            .arg("--token-file")
            .arg(&token_file)
            .env("FLY_API_TOKEN", "env-sentinel-91c2")
            .env("COORDINATOR_TOKEN", "admin-sentinel-5e1d")
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let address = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("fly-coordinator did not say where it listens");
        let found = line
            .contains("listening")
            .then(|| {
                line.split("address=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
            })
            .flatten()
            .map(str::to_owned);
        log.push(line);
        if let Some(address) = found {
            break address;
        }
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let woken = http
        .get(format!("http://{address}/agents/alice/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(woken.status(), 409);
    // Without the coordinator's token nothing reaches the Machines API.
    let calls_before = api.calls().len();
    let refused = http
        .put(format!("http://{address}/agents/bob"))
        .json(&json!({"repo": "app@main", "mode": "rw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(api.calls().len(), calls_before);
    let failed = http
        .put(format!("http://{address}/agents/bob"))
        .bearer_auth("admin-sentinel-5e1d")
        .json(&json!({"repo": "app@main", "mode": "rw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);

    drop(child);
    reader.join().unwrap();
    log.extend(lines.try_iter());
    let log = log.join("\n");

    assert!(
        api.calls()
            .iter()
            .all(|call| call.authorization.as_deref() == Some("Bearer file-sentinel-7f3a"))
    );
    assert!(
        log.contains("retrying"),
        "the retry path was logged:\n{log}"
    );
    assert!(
        log.contains("scripted failure"),
        "the failure was logged:\n{log}"
    );
    assert!(!log.contains("sentinel"), "a token reached the log:\n{log}");
}
