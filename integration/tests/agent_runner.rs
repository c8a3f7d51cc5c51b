//! agent-runner against the scripted REPL agent, driven through its real
//! interfaces: MCP over streamable HTTP (rmcp's client), `/live`,
//! `/screen`, `/healthz`, signals.

use std::time::Duration;

use futures_util::StreamExt as _;
use integration::runner::{AgentRunner, process_state, repl_agent};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn started(runner: &AgentRunner) -> (integration::runner::Mcp, u64) {
    let mcp = runner.mcp().await;
    let info = mcp.call("start", json!({})).await.ok();
    let pid = info["pid"].as_u64().expect("pid");
    runner.wait_for_output("repl-agent ready", WAIT).await;
    (mcp, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn start_message_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let mcp = runner.mcp().await;
    assert_eq!(mcp.tool_names().await, ["key", "message", "start", "stop"]);

    let info = mcp
        .call("start", json!({"rows": 30, "cols": 100}))
        .await
        .ok();
    assert_eq!(info["session"], 1);
    assert_eq!(info["state"], "running");
    assert!(
        info["live_url"]
            .as_str()
            .unwrap()
            .ends_with("/live?session=1")
    );
    runner.wait_for_output("repl-agent ready", WAIT).await;

    let typed = mcp
        .call("message", json!({"text": "hello agent"}))
        .await
        .ok();
    assert_eq!(typed["dropped"], json!([]));
    runner.wait_for_output("got: 'hello agent'", WAIT).await;
    let screen = runner.get_text("/screen").await;
    assert!(screen.contains("got: 'hello agent'"), "{screen}");

    // The agent's own terminal: a session leader whose pty has the job
    // control keys switched off.
    let pid = info["pid"].as_u64().unwrap();
    mcp.call("message", json!({"text": "status"})).await.ok();
    let text = runner.wait_for_output("status vsusp", WAIT).await;
    assert!(
        text.contains(&format!("pid={pid} pgrp={pid} sid={pid}")),
        "{text}"
    );
    assert!(
        text.contains("status vsusp=b'\\x00' vquit=b'\\x00' ixon=False"),
        "{text}"
    );

    // The markers tell /healthz the agent answered and waits for input.
    let health = runner.healthz().await;
    assert_eq!(health["agent"]["activity"], "done", "{health}");
    assert_eq!(health["busy"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_z_in_a_message_never_suspends_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let (mcp, pid) = started(&runner).await;

    for text in [
        "a\u{1a}b",
        "c\u{1b}[122;5ud",
        "e\u{1c}\u{3}\u{4}\u{13}\u{11}f",
    ] {
        let typed = mcp.call("message", json!({ "text": text })).await.ok();
        assert!(!typed["dropped"].as_array().unwrap().is_empty(), "{typed}");
    }
    runner.wait_for_output("got: 'ef'", WAIT).await;
    let text = runner.get_text("/live?format=text").await;
    assert!(
        text.contains("got: 'ab'") && text.contains("got: 'cd'"),
        "{text}"
    );
    assert_ne!(process_state(pid), Some('T'));

    // The agent's own SIGTSTP to its process group (what codex does on
    // Ctrl+Z in raw mode) is discarded: the group is orphaned.
    mcp.call("message", json!({"text": "suspend-self"}))
        .await
        .ok();
    runner
        .wait_for_output("still running after SIGTSTP", WAIT)
        .await;

    // Raw mode, codex-style: 0x1a would make it signal itself; the byte
    // never arrives.
    mcp.call("message", json!({"text": "raw"})).await.ok();
    runner.wait_for_output("raw mode", WAIT).await;
    mcp.call("message", json!({"text": "x\u{1a}y"})).await.ok();
    runner.wait_for_output("raw got: 'xy'", WAIT).await;
    mcp.call("message", json!({"text": "cooked"})).await.ok();
    runner.wait_for_output("raw got: 'cooked'", WAIT).await;

    // SIGSTOP cannot be discarded: the watchdog resumes the agent.
    mcp.call("message", json!({"text": "stop-self"})).await.ok();
    runner.wait_for_output("resumed after SIGSTOP", WAIT).await;
    let health = runner.healthz().await;
    assert!(
        health["agent"]["resumed_after_stop"].as_u64().unwrap() >= 1,
        "{health}"
    );

    // And it still answers.
    mcp.call("message", json!({"text": "still there?"}))
        .await
        .ok();
    runner.wait_for_output("got: 'still there?'", WAIT).await;
    assert_ne!(process_state(pid), Some('T'));
}

#[tokio::test(flavor = "multi_thread")]
async fn deliberate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let (mcp, _pid) = started(&runner).await;
    let err = mcp.call("key", json!({"key": "ctrl-z"})).await.err();
    assert_eq!(err["error"], "unknown_key");
    // Ctrl+C on purpose: the cooked-mode agent gets SIGINT and dies of it.
    mcp.call("message", json!({"text": "sleep 30"})).await.ok();
    runner.wait_for_output("got: 'sleep 30'", WAIT).await;
    mcp.call("key", json!({"key": "ctrl-c"})).await.ok();
    let deadline = std::time::Instant::now() + WAIT;
    let health = loop {
        let health = runner.healthz().await;
        if health["agent"]["state"] == "exited" {
            break health;
        }
        assert!(std::time::Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Python re-raises an unhandled KeyboardInterrupt as death by SIGINT.
    let exit = &health["agent"]["exit"];
    assert!(exit["signal"] == 2 || exit["code"] == 1, "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_messages_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(
        &repl_agent(),
        dir.path(),
        &["--enter-delay-ms", "20", "--max-queued-messages", "200"],
    );
    let (mcp, _pid) = started(&runner).await;
    let mcp = std::sync::Arc::new(mcp);
    let texts: Vec<String> = (0..200)
        .map(|i| format!("message {i:03} {}", "abcdefghij".repeat(i % 7 + 1)))
        .collect();
    let calls = texts.iter().cloned().map(|text| {
        let mcp = mcp.clone();
        tokio::spawn(async move { mcp.call("message", json!({ "text": text })).await })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap().ok();
    }
    runner.wait_for_output("got: 'message", WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = runner.get_text("/live?format=text").await;
        let answers: Vec<&str> = text
            .lines()
            // The terminal echoes the next text as soon as it is typed, so
            // an answer can follow that echo on the same line.
            .filter_map(|l| l.find("got: '").map(|at| &l[at + 6..]))
            .filter_map(|l| l.strip_suffix('\''))
            .collect();
        if answers.len() == texts.len() {
            let mut answers: Vec<String> = answers.into_iter().map(str::to_owned).collect();
            answers.sort();
            assert_eq!(answers, texts, "every text arrived whole, once");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 200 answers:\n{text}",
            answers.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// More messages than `--max-queued-messages` at once: the excess is
/// refused with `queue_full` and never typed, the rest arrive whole, and
/// once the queue drains messages are taken again.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_message_queue_refuses_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(
        &repl_agent(),
        dir.path(),
        &["--enter-delay-ms", "200", "--max-queued-messages", "4"],
    );
    let (mcp, _pid) = started(&runner).await;
    let mcp = std::sync::Arc::new(mcp);
    let calls = (0..20).map(|i| {
        let mcp = mcp.clone();
        tokio::spawn(async move {
            (
                i,
                mcp.call("message", json!({ "text": format!("burst {i:02}") }))
                    .await,
            )
        })
    });
    let (mut typed, mut refused) = (Vec::new(), Vec::new());
    for call in futures_util::future::join_all(calls).await {
        let (i, outcome) = call.unwrap();
        if outcome.is_error {
            let err = outcome.err();
            assert_eq!(err["error"], "queue_full", "{err}");
            assert!(err["message"].as_str().unwrap().contains("4 messages"));
            refused.push(i);
        } else {
            typed.push(i);
        }
    }
    assert!(
        typed.len() >= 4,
        "at least the queue's worth is typed: {typed:?}"
    );
    assert!(
        !refused.is_empty(),
        "20 at once into a queue of 4: {typed:?}"
    );
    mcp.call("message", json!({ "text": "after the burst" }))
        .await
        .ok();
    runner.wait_for_output("got: 'after the burst'", WAIT).await;
    let text = runner.get_text("/live?format=text").await;
    for i in &typed {
        assert!(
            text.contains(&format!("got: 'burst {i:02}'")),
            "{i} typed but not answered"
        );
    }
    for i in &refused {
        assert!(
            !text.contains(&format!("burst {i:02}")),
            "{i} refused but typed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_clear_tool_errors() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(
        &repl_agent(),
        dir.path(),
        &["--enter-delay-ms", "20", "--max-message-bytes", "1000"],
    );
    let mcp = runner.mcp().await;
    let err = mcp.call("message", json!({"text": "hi"})).await.err();
    assert_eq!(err["error"], "not_started");
    let err = mcp.call("key", json!({"key": "ctrl-c"})).await.err();
    assert_eq!(err["error"], "not_started");
    let response = reqwest::get(runner.url("/live")).await.unwrap();
    assert_eq!(response.status(), 404);

    let first = mcp.call("start", json!({})).await.ok();
    runner.wait_for_output("repl-agent ready", WAIT).await;
    let err = mcp.call("start", json!({})).await.err();
    assert_eq!(err["error"], "already_running");
    assert_eq!(err["session"], first["session"]);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&format!("session 1 (pid {})", first["pid"])),
        "{err}"
    );
    assert_eq!(
        mcp.call("message", json!({"text": ""})).await.err()["error"],
        "empty_text"
    );
    let err = mcp
        .call("message", json!({"text": "\u{1a}\u{3}"}))
        .await
        .err();
    assert_eq!(err["error"], "empty_text");
    assert!(err["message"].as_str().unwrap().contains("Ctrl+Z"), "{err}");
    let err = mcp.call("message", json!({"text": " \n\t "})).await.err();
    assert_eq!(err["error"], "empty_text");
    assert!(
        err["message"].as_str().unwrap().contains("whitespace"),
        "{err}"
    );
    assert_eq!(
        mcp.call("message", json!({"text": "x".repeat(1001)}))
            .await
            .err()["error"],
        "too_long"
    );
    // A malformed call is refused by the protocol layer, not the runner.
    let args = serde_json::Map::new();
    let refused = mcp
        .service
        .call_tool(rmcp::model::CallToolRequestParams::new("message").with_arguments(args))
        .await;
    assert!(
        refused.is_err() || refused.as_ref().unwrap().is_error == Some(true),
        "{refused:?}"
    );

    // The agent exits: messages say how, a new start makes a new session.
    mcp.call("message", json!({"text": "exit 3"})).await.ok();
    let deadline = std::time::Instant::now() + WAIT;
    let err = loop {
        let outcome = mcp.call("message", json!({"text": "anyone?"})).await;
        if outcome.is_error {
            break outcome.value;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(err["error"], "exited", "{err}");
    assert_eq!(err["exit"]["code"], 3);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("exited with status 3")
    );

    let second = mcp.call("start", json!({})).await.ok();
    assert_eq!(second["session"], 2);
    runner.wait_for_output("repl-agent ready", WAIT).await;
    mcp.call("message", json!({"text": "second life"}))
        .await
        .ok();
    runner.wait_for_output("got: 'second life'", WAIT).await;
    // The first session's capture is still there, whole.
    let old = runner.get_text("/live?session=1&format=text").await;
    assert!(old.contains("got: 'exit 3'") && !old.contains("second life"));
    let response = reqwest::get(runner.url("/live?session=9")).await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn live_offsets_ranges_and_followers() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let (mcp, _pid) = started(&runner).await;

    // 50 followers from the start, before the output they will read.
    let followers: Vec<_> = (0..50)
        .map(|_| {
            let request = runner.http().get(runner.url("/live?follow=1"));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap()
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + WAIT;
    while runner.healthz().await["followers"] != 50 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A slow follower that reads one chunk and then stalls.
    let mut slow = runner
        .http()
        .get(runner.url("/live?follow=1"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    slow.next().await.unwrap().unwrap();

    mcp.call("message", json!({"text": "spew 20000"}))
        .await
        .ok();
    runner.wait_for_output("spewed", WAIT).await;
    mcp.call("message", json!({"text": "exit"})).await.ok();
    // Followers end when the agent's capture is finished.
    let mut bodies = Vec::new();
    for follower in followers {
        bodies.push(
            tokio::time::timeout(WAIT, follower)
                .await
                .expect("follower ends")
                .unwrap(),
        );
    }
    let whole = runner
        .http()
        .get(runner.url("/live"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(whole.len() > 20000 * 70, "{} bytes", whole.len());
    for body in &bodies {
        assert_eq!(body, &whole, "every follower saw every byte");
    }
    drop(slow);

    // Offsets and ranges.
    let get = |path: &str, range: Option<&str>| {
        let mut request = runner.http().get(runner.url(path));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_range = response
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, content_range, response.bytes().await.unwrap())
        }
    };
    let len = whole.len();
    let (status, _, body) = get("/live?offset=100", None).await;
    assert_eq!((status, &body[..]), (200, &whole[100..]));
    let (status, range, body) = get("/live", Some("bytes=10-19")).await;
    assert_eq!((status, &body[..]), (206, &whole[10..20]));
    assert_eq!(range.unwrap(), format!("bytes 10-19/{len}"));
    let (status, _, body) = get("/live", Some("bytes=-5")).await;
    assert_eq!((status, &body[..]), (206, &whole[len - 5..]));
    let (status, range, _) = get("/live", Some(&format!("bytes={len}-"))).await;
    assert_eq!((status, range.unwrap()), (416, format!("bytes */{len}")));
    let (status, _, _) = get("/live", Some("bytes=oops")).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&format!("/live?offset={}", len + 1), None).await;
    assert_eq!(status, 416);
    let (status, _, _) = get("/live?format=pdf", None).await;
    assert_eq!(status, 400);
    // Following a finished capture returns what is left and ends.
    let (status, _, body) = get(&format!("/live?follow=1&offset={}", len - 3), None).await;
    assert_eq!((status, &body[..]), (200, &whole[len - 3..]));

    // Text without escape sequences.
    let (_, _, text) = get("/live?format=text", None).await;
    assert!(!text.contains(&0x1b), "no ESC in the text view");
    assert!(String::from_utf8_lossy(&text).contains("line 00019999"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_host_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(&repl_agent(), dir.path(), &["--token", "s3cret"]);
    let plain = reqwest::Client::new();
    for path in ["/live", "/screen", "/", "/mcp", "/screen/stream"] {
        let none = plain.get(runner.url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = plain
            .get(runner.url(path))
            .bearer_auth("s3cret-not")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }
    let health = plain.get(runner.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // With the token, MCP works.
    let mcp = runner.mcp().await;
    mcp.call("start", json!({})).await.ok();
    runner.wait_for_output("repl-agent ready", WAIT).await;
    let page = plain
        .get(runner.url("/?access_token=s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // A Host outside the allowlist (DNS rebinding) is refused everywhere
    // but /healthz, MCP included.
    for path in ["/live", "/mcp"] {
        let response = runner
            .http()
            .get(runner.url(path))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
    }
    let other_dir = tempfile::tempdir().unwrap();
    let allowed = AgentRunner::start(
        &repl_agent(),
        other_dir.path(),
        &["--allowed-host", "agents.flycast"],
    );
    let response = reqwest::Client::new()
        .get(allowed.url("/healthz"))
        .header("host", "agents.flycast:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = reqwest::Client::new()
        .get(allowed.url("/live"))
        .header("host", "agents.flycast:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "allowed host reaches /live (no session yet)"
    );

    // The names a coordinator sets on its machines: a request it had the
    // proxy replay keeps the Host it was sent to the coordinator with.
    let replayed_dir = tempfile::tempdir().unwrap();
    let replayed = AgentRunner::start_with_env(
        &repl_agent(),
        replayed_dir.path(),
        &[],
        &[("AGENT_RUNNER_ALLOWED_HOSTS", "coord.flycast,coord.internal")],
    );
    for host in ["coord.flycast", "coord.internal:80"] {
        let response = reqwest::Client::new()
            .get(replayed.url("/screen"))
            .header("host", host)
            .header("fly-replay-src", "instance=c1;region=ams;t=1;state=")
            .send()
            .await
            .unwrap();
        // Past the Host check (403): no session has started yet.
        assert_eq!(response.status(), 404, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_agent_and_keeps_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = AgentRunner::repl(dir.path());
    let (mcp, pid) = started(&runner).await;
    mcp.call("message", json!({"text": "before restart"}))
        .await
        .ok();
    runner.wait_for_output("got: 'before restart'", WAIT).await;
    let before = runner.get_text("/live").await;
    drop(mcp);

    let status = runner.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(process_state(pid), None, "the agent is gone");
    let file = std::fs::read(dir.path().join("session-000001.log")).unwrap();
    assert!(file.starts_with(before.as_bytes()));

    // A new runner on the same capture dir serves the old capture and
    // starts the next session number.
    let runner = AgentRunner::repl(dir.path());
    let served = runner.get_text("/live").await;
    assert_eq!(served.as_bytes(), &file[..]);
    let mcp = runner.mcp().await;
    let info = mcp.call("start", json!({})).await.ok();
    assert_eq!(info["session"], 2);
    runner.wait_for_output("repl-agent ready", WAIT).await;
    let old = runner.get_text("/live?session=1&format=text").await;
    assert!(old.contains("got: 'before restart'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn message_waits_for_idle() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let (mcp, _pid) = started(&runner).await;
    mcp.call("message", json!({"text": "sleep 1.5"})).await.ok();
    runner.wait_for_output("got: 'sleep 1.5'", WAIT).await;
    assert_eq!(runner.healthz().await["busy"], true);
    let err = mcp
        .call(
            "message",
            json!({"text": "too soon", "wait_idle_seconds": 0.2}),
        )
        .await
        .err();
    assert_eq!(err["error"], "not_idle");
    let typed = mcp
        .call(
            "message",
            json!({"text": "after sleeping", "wait_idle_seconds": 20}),
        )
        .await
        .ok();
    assert_eq!(typed["activity"], "done", "{typed}");
    let text = runner.wait_for_output("got: 'after sleeping'", WAIT).await;
    let slept = text.find("slept").unwrap();
    let typed_at = text.find("got: 'after sleeping'").unwrap();
    assert!(slept < typed_at, "typed only once the agent was idle");
    assert!(!text.contains("too soon"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_tool_ends_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let mcp = runner.mcp().await;
    assert_eq!(
        mcp.call("stop", json!({})).await.err()["error"],
        "not_started"
    );
    let (mcp, pid) = started(&runner).await;
    let stopped = mcp.call("stop", json!({"grace_seconds": 5})).await.ok();
    assert_eq!(stopped["state"], "exited", "{stopped}");
    assert_eq!(stopped["exit"]["signal"], 15, "SIGTERM was enough");
    assert_eq!(process_state(pid), None);
    assert_eq!(mcp.call("stop", json!({})).await.err()["error"], "exited");
    let again = mcp.call("start", json!({})).await.ok();
    assert_eq!(again["session"], 2);
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Live children of a process (zombies included: they are leaks too).
fn children(pid: u32) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Many start/stop cycles leave no process, descriptor or open capture
/// behind. `RUNNER_CYCLES` raises the count for a soak (1,000 in the
/// reliability notes); CI runs 100.
#[tokio::test(flavor = "multi_thread")]
async fn start_stop_cycles_leak_nothing() {
    let cycles: usize = std::env::var("RUNNER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let mcp = runner.mcp().await;
    // Warm up: the first session allocates what every later one reuses.
    mcp.call("start", json!({})).await.ok();
    mcp.call("stop", json!({})).await.ok();
    let fds_before = open_fds(runner.pid());
    for i in 0..cycles {
        let info = mcp.call("start", json!({})).await.ok();
        assert_eq!(info["session"], i + 2);
        // Half of them exit by themselves, half are stopped.
        if i % 2 == 0 {
            mcp.call("stop", json!({"grace_seconds": 5})).await.ok();
        } else {
            mcp.call("message", json!({"text": "exit"})).await.ok();
            let deadline = std::time::Instant::now() + WAIT;
            while runner.healthz().await["agent"]["state"] != "exited" {
                assert!(std::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Exit statuses are collected as they come; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        children(runner.pid()),
        Vec::<u64>::new(),
        "no agent left behind"
    );
    let fds_after = open_fds(runner.pid());
    assert!(
        fds_after <= fds_before + 2,
        "descriptors grew from {fds_before} to {fds_after} over {cycles} cycles"
    );
    let captures = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(
        captures,
        cycles + 1,
        "one capture per session, nothing else"
    );
}

/// The runner killed outright (SIGKILL, no flushing) while its agent runs:
/// the pty closes, the agent gets SIGHUP and ends, the capture on disk has
/// everything the agent printed, and a new runner serves it and starts the
/// next session.
#[tokio::test(flavor = "multi_thread")]
async fn runner_killed_while_the_agent_runs_loses_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = AgentRunner::repl(dir.path());
    let (mcp, pid) = started(&runner).await;
    mcp.call("message", json!({"text": "written before the crash"}))
        .await
        .ok();
    runner
        .wait_for_output("got: 'written before the crash'", WAIT)
        .await;
    let served = runner.get_text("/live").await;
    drop(mcp);
    runner.kill();

    let deadline = std::time::Instant::now() + WAIT;
    while process_state(pid).is_some_and(|state| state != 'Z') {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent outlived its runner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_disk = std::fs::read(dir.path().join("session-000001.log")).unwrap();
    assert!(
        on_disk.starts_with(served.as_bytes()),
        "nothing served was lost"
    );

    let runner = AgentRunner::repl(dir.path());
    assert_eq!(runner.get_text("/live").await.as_bytes(), &on_disk[..]);
    let mcp = runner.mcp().await;
    assert_eq!(mcp.call("start", json!({})).await.ok()["session"], 2);
}

/// 500 followers and one that stops reading: the agent still prints all it
/// has to, every reading follower gets every byte, and the runner's memory
/// stays bounded (each follower holds one read chunk, not the output).
#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_followers_and_a_stalled_one() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::repl(dir.path());
    let (mcp, _pid) = started(&runner).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut stalled = client
        .get(runner.url("/live?follow=1"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    stalled.next().await.unwrap().unwrap();
    let followers: Vec<_> = (0..500)
        .map(|_| {
            let request = client.get(runner.url("/live?follow=1"));
            tokio::spawn(async move {
                let mut stream = request.send().await.unwrap().bytes_stream();
                let mut total = 0usize;
                while let Some(chunk) = stream.next().await {
                    total += chunk.unwrap().len();
                }
                total
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + WAIT;
    while runner.healthz().await["followers"].as_u64() < Some(501) {
        assert!(
            std::time::Instant::now() < deadline,
            "followers never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_before = integration::rss_kib(runner.pid());
    mcp.call("message", json!({"text": "spew 100000"}))
        .await
        .ok();
    let mut rss_peak = rss_before;
    while !runner
        .get_text("/live?format=text")
        .await
        .contains("spewed")
    {
        rss_peak = rss_peak.max(integration::rss_kib(runner.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mcp.call("message", json!({"text": "exit"})).await.ok();
    let mut totals = Vec::new();
    for follower in followers {
        rss_peak = rss_peak.max(integration::rss_kib(runner.pid()));
        totals.push(tokio::time::timeout(WAIT, follower).await.unwrap().unwrap());
    }
    let whole = runner.get_text("/live").await.len();
    assert!(whole > 100_000 * 70);
    assert!(
        totals.iter().all(|&t| t == whole),
        "every follower got every byte"
    );
    // 7 MB of output, 500 readers: far less than one copy per reader.
    let growth_mib = rss_peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "500 followers: runner RSS {} MiB before the output, {} MiB at the peak",
        rss_before / 1024,
        rss_peak / 1024
    );
    assert!(
        growth_mib < 256,
        "runner RSS grew by {growth_mib} MiB with 500 followers"
    );
    drop(stalled);
}

/// A memory cgroup with a limit, under the test's own (cgroup v1 or v2),
/// removed on drop.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn create(limit: u64) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let name = format!("lazy-worktree-oom-{}", std::process::id());
        let v1 = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_owned()));
        let (dir, limit_file) = match v1 {
            Some(path) => (
                std::path::Path::new("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join(&name),
                "memory.limit_in_bytes",
            ),
            None => {
                let path = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .expect("a cgroup v2 path");
                let root = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                    "/sys/fs/cgroup"
                } else {
                    "/sys/fs/cgroup/unified"
                };
                (
                    std::path::Path::new(root)
                        .join(path.trim_start_matches('/'))
                        .join(&name),
                    "memory.max",
                )
            }
        };
        std::fs::create_dir_all(&dir).expect("creating a memory cgroup (needs root)");
        std::fs::write(dir.join(limit_file), limit.to_string()).expect("setting its limit");
        Self { dir }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// An agent that outgrows its memory limit is killed by the kernel's OOM
/// killer, and the runner says so (not just "signal 9").
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_by_the_oom_killer_is_reported_as_such() {
    let cgroup = MemoryCgroup::create(64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let hog = dir.path().join("hog");
    std::fs::write(
        &hog,
        "#!/bin/sh\necho $$ > \"$CGROUP/cgroup.procs\"\necho hogging\n\
         exec python3 -c 'import time; b = bytearray(1 << 30); time.sleep(60)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&hog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let runner = AgentRunner::start(&hog, &dir.path().join("captures"), &[]);
    let mcp = runner.mcp().await;
    mcp.call(
        "start",
        json!({ "env": { "CGROUP": cgroup.dir.to_string_lossy() } }),
    )
    .await
    .ok();
    let deadline = std::time::Instant::now() + WAIT;
    let err = loop {
        let outcome = mcp.call("message", json!({"text": "still there?"})).await;
        if outcome.is_error && outcome.value["error"] == "exited" {
            break outcome.value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hog was never killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(err["exit"]["signal"], 9, "{err}");
    assert_eq!(err["exit"]["oom_killed"], true, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("OOM killer"),
        "{err}"
    );
    let health = runner.healthz().await;
    assert_eq!(health["agent"]["exit"]["oom_killed"], true, "{health}");
}

/// A closed stdout (its reader gone before the listening line) does not
/// take the runner down: it serves /healthz all the same.
#[test]
fn a_closed_stdout_does_not_stop_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = std::process::Command::new(integration::workspace_bin("agent-runner"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--command",
        ])
        .arg(repl_agent())
        .arg("--capture-dir")
        .arg(dir.path())
        .env_remove("AGENT_RUNNER_TOKEN")
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            let mut answer = String::new();
            write!(stream, "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .and_then(|()| stream.read_to_string(&mut answer))
                .expect("an answer to /healthz: the runner died after binding");
            break answer;
        }
        assert!(child.try_wait().unwrap().is_none(), "agent-runner exited");
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(child.try_wait().unwrap().is_none(), "agent-runner exited");
    child.kill().unwrap();
    child.wait().unwrap();
}
