//! The watch page at `/` in a real browser: Debian's headless Chromium,
//! driven over the W3C WebDriver protocol by `chromedriver` on 127.0.0.1.
//! The page is loaded before the agent prints the text, so the text can
//! only appear through the page's live updates.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::runner::AgentRunner;
use serde_json::{Value, json};

struct ChromeDriver {
    child: Child,
    base: String,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn webdriver(client: &reqwest::Client, url: String, body: Value) -> Value {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("WebDriver call");
    let status = response.status();
    let value: Value = response.json().await.expect("WebDriver JSON");
    assert!(status.is_success(), "WebDriver {status}: {value}");
    value["value"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_page_shows_the_agent_live_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::start(
        &integration::runner::repl_agent(),
        dir.path(),
        &["--enter-delay-ms", "20", "--token", "page-token"],
    );
    let mcp = runner.mcp().await;
    mcp.call("start", json!({})).await.ok();
    runner
        .wait_for_output("repl-agent ready", Duration::from_secs(20))
        .await;

    let driver = ChromeDriver::start();
    let client = reqwest::Client::new();
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }}}
    });
    // chromedriver takes a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(20);
    let session = loop {
        match client
            .post(format!("{}/session", driver.base))
            .json(&capabilities)
            .send()
            .await
        {
            Ok(response) => {
                let value: Value = response.json().await.expect("session JSON");
                break value["value"]["sessionId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no session: {value}"))
                    .to_owned();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let session_url = format!("{}/session/{session}", driver.base);
    webdriver(
        &client,
        format!("{session_url}/url"),
        json!({ "url": runner.url("/?access_token=page-token") }),
    )
    .await;
    let screen_text = |client: reqwest::Client, url: String| async move {
        webdriver(
            &client,
            format!("{url}/execute/sync"),
            json!({"script": "return document.getElementById('screen').textContent + '\\n' + document.getElementById('status').textContent", "args": []}),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    };
    let initial = screen_text(client.clone(), session_url.clone()).await;
    assert!(initial.contains("repl-agent ready"), "{initial}");
    assert!(!initial.contains("seen in a browser"));

    mcp.call("message", json!({"text": "seen in a browser"}))
        .await
        .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = screen_text(client.clone(), session_url.clone()).await;
        if text.contains("got: 'seen in a browser'") {
            break text;
        }
        assert!(Instant::now() < deadline, "page never updated:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("live ·"),
        "updated by the event stream: {text}"
    );
    // Colours are styled spans rendered on the server: the agent prints
    // its banner in green.
    let html = webdriver(
        &client,
        format!("{session_url}/execute/sync"),
        json!({"script": "return document.getElementById('screen').innerHTML", "args": []}),
    )
    .await;
    assert!(
        html.as_str()
            .unwrap_or_default()
            .contains("<span style=\"color:#00cd00;\">repl-agent ready</span>"),
        "{html}"
    );
    let _ = client.delete(session_url).send().await;
}
