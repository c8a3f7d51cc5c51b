//! The real codex CLI for the tests: its binary (installed from npm by
//! `integration/run-tests`), a `CODEX_HOME` that runs it unattended, and the
//! scripted mock of the Responses API it talks to (`codex/mock-responses.py`).
//! See `integration/codex/README.md` for why each setting is there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The native codex binary: `$CODEX_BIN`, set by `integration/run-tests`.
pub fn codex_bin() -> PathBuf {
    let bin = std::env::var_os("CODEX_BIN")
        .map(PathBuf::from)
        .expect("CODEX_BIN is not set: run the tests with integration/run-tests, which installs @openai/codex");
    assert!(bin.exists(), "CODEX_BIN {} does not exist", bin.display());
    bin
}

/// Writes `home/config.toml` with the script the Fly image uses
/// (`fly/agent-runner/write-codex-config`), pointed at the mock: no
/// approvals, no sandbox, no network features, `worktree` trusted.
pub fn write_codex_home(home: &Path, mock_port: u16, worktree: &Path) {
    std::fs::create_dir_all(home).expect("CODEX_HOME");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fly/agent-runner/write-codex-config");
    let status = Command::new(script)
        .arg(home.join("config.toml"))
        .arg(worktree)
        .env("CODEX_MODEL", "mock-model")
        .env(
            "CODEX_PROVIDER_URL",
            format!("http://127.0.0.1:{mock_port}/v1"),
        )
        .env("CODEX_API_KEY_ENV", "")
        .status()
        .expect("running write-codex-config");
    assert!(status.success(), "write-codex-config failed");
}

/// The scripted Responses API on 127.0.0.1.
pub struct MockResponses {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl MockResponses {
    /// Starts the mock with `script` (see the top of `mock-responses.py`);
    /// its script and request log live in `dir`.
    pub fn start(script: &serde_json::Value, dir: &Path) -> Self {
        let script_path = dir.join("mock-script.json");
        std::fs::write(&script_path, script.to_string()).expect("mock script");
        let log = dir.join("mock-requests.jsonl");
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("codex/mock-responses.py"))
            .args(["--port", "0", "--script"])
            .arg(&script_path)
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mock-responses.py");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("mock exited before listening")
            .expect("mock output");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the mock: {first:?}"));
        std::thread::spawn(move || for _ in lines {});
        Self { child, port, log }
    }

    /// The request bodies codex sent, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for MockResponses {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One agent's scripted work in the puzzle: a shell call that edits and
/// commits, then a final message. `match` is the failing test it was given.
fn puzzle_agent(test: &str, edit: &str) -> serde_json::Value {
    let commit = "git -c user.name=agent -c user.email=agent@example.invalid commit -qam";
    serde_json::json!({
        "match": test,
        "responses": [
            [{"shell": ["bash", "-lc", format!("{edit} && {commit} 'Fix {test}'")]}],
            [{"message": format!("Fixed {test}.")}],
        ],
    })
}

/// The mock's script for the smoke check's puzzle (`mock-responses.py`
/// `conversations`, one per agent, matched by its failing test): the agents of the prices and text
/// tests fix theirs, the dates agent runs `dates_fix`.
pub fn puzzle_script(dates_fix: &str) -> serde_json::Value {
    serde_json::json!({"conversations": [
        puzzle_agent(
            "tests/test_prices.py",
            "sed -i 's/price + quantity/price * quantity/' shop/prices.py",
        ),
        puzzle_agent(
            "tests/test_text.py",
            "sed -i 's/\"_\".join/\"-\".join/' shop/text.py",
        ),
        puzzle_agent("tests/test_dates.py", dates_fix),
    ]})
}

/// The dates agent's right fix.
pub const RIGHT_DATES_FIX: &str = "sed -i 's/return year % 4 == 0$/return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)/' shop/dates.py";
