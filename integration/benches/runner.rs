//! agent-runner figures, printed as a table (`cargo bench -p integration
//! --bench runner`):
//!
//! - message → answer: from the `message` tool call returning to the
//!   agent's answer arriving on a `/live?follow=1` stream, against the same
//!   agent driven through a bare pty by Python's `pty` module (the peer:
//!   what a terminal with nothing in between would see);
//! - start → first byte of the agent on a follower;
//! - `/live` download throughput of a large capture, against reading the
//!   capture file from disk;
//! - runner RSS idle, and with 50 followers while the agent prints;
//! - the agent's own output rate with no follower, and with 500 followers
//!   and one that never reads (none may slow it down).
//!
//! The agent is the scripted REPL in `integration/agents/repl-agent`.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use integration::report::{Table, percentile};
use integration::runner::{AgentRunner, Mcp};
use serde_json::json;

const ROUND_TRIPS: usize = 200;
const STARTS: usize = 20;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A follower of the current session that reports when `needle` arrives.
struct Follower {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    seen: Vec<u8>,
}

impl Follower {
    async fn open(runner: &AgentRunner, query: &str) -> Self {
        let response = runner
            .http()
            .get(runner.url(&format!("/live?follow=1{query}")))
            .send()
            .await
            .expect("follow");
        Self {
            stream: Box::pin(response.bytes_stream()),
            seen: Vec::new(),
        }
    }

    /// Reads until `needle` has arrived; keeps only what follows it. Holds
    /// at most one chunk plus a needle's length, however much streams by.
    async fn wait_for(&mut self, needle: &[u8]) {
        loop {
            if let Some(at) = self.seen.windows(needle.len()).position(|w| w == needle) {
                self.seen.drain(..at + needle.len());
                return;
            }
            let keep = needle.len().saturating_sub(1).min(self.seen.len());
            self.seen.drain(..self.seen.len() - keep);
            self.read_chunk().await;
        }
    }

    /// Reads until `end` has arrived and returns what came before it.
    async fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.seen.windows(end.len()).position(|w| w == end) {
                let before = self.seen[..at].to_vec();
                self.seen.drain(..at + end.len());
                return before;
            }
            self.read_chunk().await;
        }
    }

    async fn read_chunk(&mut self) {
        let chunk = self
            .stream
            .next()
            .await
            .expect("stream open")
            .expect("chunk");
        self.seen.extend_from_slice(&chunk);
    }

    async fn first_byte(&mut self) {
        while self.seen.is_empty() {
            self.read_chunk().await;
        }
    }
}

async fn message(mcp: &Mcp, text: &str) {
    mcp.call("message", json!({ "text": text })).await.ok();
}

/// Per round trip: (call → answer, returned → answer).
async fn message_round_trips(runner: &AgentRunner, mcp: &Mcp) -> (Vec<Duration>, Vec<Duration>) {
    let mut follower = Follower::open(runner, "").await;
    follower.wait_for(b"repl-agent ready").await;
    let mut whole = Vec::with_capacity(ROUND_TRIPS);
    let mut after_return = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let token = format!("ping-{i:05}");
        let called = Instant::now();
        message(mcp, &token).await;
        let returned = Instant::now();
        follower
            .wait_for(format!("got: '{token}'").as_bytes())
            .await;
        whole.push(called.elapsed());
        after_return.push(returned.elapsed());
    }
    whole.sort();
    after_return.sort();
    (whole, after_return)
}

/// Runs a Python peer script and returns the durations (ns) it prints.
fn python_peer(script: &str) -> Vec<Duration> {
    // A version manager's `python3` (pyenv) puts its own bin first on the
    // PATH of what it runs; the agent must find the same Python the
    // runner's agent finds, so the peer restores the bench's PATH.
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PEER_PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut times: Vec<Duration> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .map(Duration::from_nanos)
        .collect();
    times.sort();
    times
}

/// The peer: the same agent in a bare pty, typed to and read by Python.
fn pty_peer_round_trips() -> Vec<Duration> {
    python_peer(&format!(
        r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execve("{agent}", ["{agent}"], {{**os.environ, "PATH": os.environ["PEER_PATH"]}})
buf = b""
def wait_for(needle):
    global buf
    while needle not in buf:
        buf += os.read(fd, 65536)
    buf = buf[buf.index(needle) + len(needle):]
wait_for(b"repl-agent ready")
for i in range({n}):
    token = "ping-%05d" % i
    t = time.perf_counter()
    os.write(fd, token.encode())
    time.sleep(0.02)
    os.write(fd, b"\r")
    wait_for(("got: '%s'" % token).encode())
    print(int((time.perf_counter() - t) * 1e9))
os.write(fd, b"exit\r")
"#,
        agent = integration::runner::repl_agent().display(),
        n = ROUND_TRIPS
    ))
}

/// The peer of a start: fork the agent onto a bare pty, read its first byte.
fn pty_peer_starts() -> Vec<Duration> {
    python_peer(&format!(
        r#"
import os, pty, time
for _ in range({n}):
    t = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.execve("{agent}", ["{agent}"], {{**os.environ, "PATH": os.environ["PEER_PATH"]}})
    os.read(fd, 1)
    print(int((time.perf_counter() - t) * 1e9))
    os.write(fd, b"exit\r")
    os.waitpid(pid, 0)
    os.close(fd)
"#,
        agent = integration::runner::repl_agent().display(),
        n = STARTS
    ))
}

async fn start_to_first_byte(runner: &AgentRunner, mcp: &Mcp) -> Vec<Duration> {
    let mut times = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let began = Instant::now();
        let info = mcp.call("start", json!({})).await.ok();
        let session = info["session"].as_u64().expect("session id");
        let mut follower = Follower::open(runner, &format!("&session={session}")).await;
        follower.first_byte().await;
        times.push(began.elapsed());
        message(mcp, "exit").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while runner.healthz().await["agent"]["state"] != "exited" {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    times.sort();
    times
}

/// Lines per burst in the follower comparison (~3.8 MB).
const BURST_LINES: usize = 50_000;

/// The agent's own time for one burst, as it reports it.
async fn burst_ms(runner: &AgentRunner, mcp: &Mcp) -> f64 {
    let at = runner.healthz().await["agent"]["capture_bytes"]
        .as_u64()
        .expect("capture_bytes");
    let mut follower = Follower::open(runner, &format!("&offset={at}")).await;
    message(mcp, &format!("spew {BURST_LINES}")).await;
    follower.wait_for(b"spewed in ").await;
    let ms = follower.read_until(b" ms").await;
    String::from_utf8_lossy(&ms)
        .parse()
        .expect("the agent's time")
}

/// Median burst time over 5 bursts.
async fn median_burst_ms(runner: &AgentRunner, mcp: &Mcp) -> f64 {
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(burst_ms(runner, mcp).await);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runner = AgentRunner::repl(dir.path());
    let mcp = runner.mcp().await;
    let rss_idle = integration::rss_kib(runner.pid());

    mcp.call("start", json!({})).await.ok();
    let (ours, after_return) = message_round_trips(&runner, &mcp).await;
    let peer = pty_peer_round_trips();

    // Throughput and RSS with 50 followers while the agent prints ~28 MB.
    let mut followers = Vec::new();
    for _ in 0..50 {
        let mut follower = Follower::open(&runner, "").await;
        followers.push(tokio::spawn(async move {
            follower.wait_for(b"spewed").await;
        }));
    }
    message(&mcp, "spew 400000").await;
    let mut rss_followers = 0;
    while !followers.iter().all(|f| f.is_finished()) {
        rss_followers = rss_followers.max(integration::rss_kib(runner.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in followers {
        f.await.expect("follower");
    }
    // The agent's own output rate, alone and with 500 followers reading
    // everything plus one that reads nothing.
    let alone = median_burst_ms(&runner, &mcp).await;
    let stalled = runner
        .http()
        .get(runner.url("/live?follow=1"))
        .send()
        .await
        .expect("stalled follower");
    let with_stalled = median_burst_ms(&runner, &mcp).await;
    let mut crowd = Vec::new();
    for _ in 0..500 {
        let mut follower = Follower::open(&runner, "").await;
        crowd.push(tokio::spawn(async move {
            follower.wait_for(b"crowd done").await;
        }));
    }
    let crowded = median_burst_ms(&runner, &mcp).await;
    message(&mcp, "crowd done").await;
    for f in crowd {
        f.await.expect("follower");
    }
    drop(stalled);
    let capture = dir.path().join("session-000001.log");
    let mut downloads = Vec::new();
    let mut reads = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let began = Instant::now();
        let body = runner
            .http()
            .get(runner.url("/live?session=1"))
            .send()
            .await
            .expect("GET /live")
            .bytes()
            .await
            .expect("body");
        downloads.push(began.elapsed());
        size = body.len();
        let began = Instant::now();
        let file = std::fs::read(&capture).expect("capture");
        reads.push(began.elapsed());
        assert!(file.len() >= size);
    }
    downloads.sort();
    reads.sort();
    message(&mcp, "exit").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let starts = start_to_first_byte(&runner, &mcp).await;
    let peer_starts = pty_peer_starts();

    let mb = size as f64 / 1e6;
    let rate = |d: Duration| format!("{:.0} MB/s", mb / d.as_secs_f64());
    let mut table = Table::new(
        &format!("agent-runner ({ROUND_TRIPS} round trips, {STARTS} starts, {mb:.1} MB capture)"),
        &["measure", "agent-runner", "peer", "ratio"],
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile(&ours, p), percentile(&peer, p));
        table.markdown_row(&format!(
            "| message called → answer on /live?follow=1 (20 ms Enter delay included), {name} | {} | {} (bare pty: write, 20 ms, Enter, read) | {:.2}x |",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64()
        ));
    }
    table.markdown_row(&format!(
        "| message returned → answer on the follower, p50 (p99) | {} ({}) | | |",
        ms(percentile(&after_return, 0.5)),
        ms(percentile(&after_return, 0.99))
    ));
    let (a, b) = (percentile(&starts, 0.5), percentile(&peer_starts, 0.5));
    table.markdown_row(&format!(
        "| start → agent's first byte on a follower, p50 (p99) | {} ({}) | {} ({}) (fork onto a bare pty, Python) | {:.2}x |",
        ms(a),
        ms(percentile(&starts, 0.99)),
        ms(b),
        ms(percentile(&peer_starts, 0.99)),
        a.as_secs_f64() / b.as_secs_f64()
    ));
    let (d, r) = (percentile(&downloads, 0.5), percentile(&reads, 0.5));
    table.markdown_row(&format!(
        "| GET /live of the whole capture, median of 5 | {} | {} (read the file) | {:.2}x |",
        rate(d),
        rate(r),
        r.as_secs_f64() / d.as_secs_f64()
    ));
    table.markdown_row(&format!(
        "| the agent's own time to print {BURST_LINES} lines, median of 5, with one follower that never reads | {with_stalled:.0} ms | {alone:.0} ms (no follower) | {:.2}x |",
        with_stalled / alone
    ));
    table.markdown_row(&format!(
        "| the same with 500 reading followers and the stalled one (all on the same 2 cores) | {crowded:.0} ms | {alone:.0} ms (no follower) | {:.2}x |",
        crowded / alone
    ));
    table.markdown_row(&format!(
        "| runner RSS, idle | {} MiB | | |",
        rss_idle / 1024
    ));
    table.markdown_row(&format!(
        "| runner RSS, peak with 50 followers during the {mb:.0} MB burst | {} MiB | | |",
        rss_followers / 1024
    ));
    table.print();
}
