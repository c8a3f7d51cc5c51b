//! The real codex CLI (npm `@openai/codex`) in agent-runner, against the
//! scripted Responses API mock: its full-screen TUI is driven through the
//! MCP tools only, and what it did is checked on disk, on `/live`, on
//! `/screen` and in the requests the mock received.

use std::time::{Duration, Instant};

use integration::codex::{
    MockResponses, RIGHT_DATES_FIX, codex_bin, puzzle_script, write_codex_home,
};
use integration::runner::{AgentRunner, process_state};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

async fn wait_for_screen(runner: &AgentRunner, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let screen = runner.get_text("/screen").await;
        if screen.contains(needle) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared on the screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A git worktree, the mock model with `script`, a `CODEX_HOME` pointed at
/// it and a captures folder, all in one temp dir (not under /tmp: codex
/// refuses to put its helpers in a temp dir).
struct CodexSetup {
    /// Removed with the setup.
    dir: tempfile::TempDir,
    worktree: std::path::PathBuf,
    home: std::path::PathBuf,
    captures: std::path::PathBuf,
    mock: MockResponses,
}

impl CodexSetup {
    fn new(script: serde_json::Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("codex-test-")
            .tempdir_in(integration::target_dir())
            .expect("temp dir");
        let worktree = dir.path().join("work");
        std::fs::create_dir(&worktree).expect("worktree");
        git(&worktree, &["init", "-q", "-b", "main"]);
        std::fs::write(worktree.join("README.md"), "a project\n").expect("README");
        git(&worktree, &["add", "."]);
        git(&worktree, &["commit", "-q", "-m", "start"]);
        let mock = MockResponses::start(&script, dir.path());
        let home = dir.path().join("codex-home");
        write_codex_home(&home, mock.port, &worktree);
        let captures = dir.path().join("captures");
        std::fs::create_dir(&captures).expect("captures");
        Self {
            dir,
            worktree,
            home,
            captures,
            mock,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tui_driven_through_mcp_makes_the_file_and_survives_ctrl_z() {
    let setup = CodexSetup::new(json!([
        [{"shell": ["bash", "-lc", "echo hi > made-by-codex.txt"]}],
        [{"message": "All done: created the file."}],
        [{"message": "Second answer, after the Ctrl+Z."}],
    ]));
    let (worktree, home, captures, mock) =
        (&setup.worktree, &setup.home, &setup.captures, &setup.mock);
    let runner = AgentRunner::start(
        &codex_bin(),
        captures,
        &["--cwd", worktree.to_str().unwrap()],
    );
    let mcp = runner.mcp().await;

    let info = mcp
        .call(
            "start",
            json!({"env": {"CODEX_HOME": home.to_str().unwrap()}}),
        )
        .await
        .ok();
    let pid = info["pid"].as_u64().unwrap();
    assert!(
        info["command"]
            .as_array()
            .unwrap()
            .contains(&json!("--no-daemon")),
        "{info}"
    );

    // Typed like a person (as a bracketed paste, since codex asks for it),
    // once codex says it is idle; Enter as its own keystroke.
    let typed = mcp
        .call(
            "message",
            json!({"text": "Please create made-by-codex.txt", "wait_idle_seconds": 60}),
        )
        .await
        .ok();
    assert_eq!(typed["bracketed_paste"], true, "{typed}");

    let file = worktree.join("made-by-codex.txt");
    let deadline = Instant::now() + WAIT;
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "codex never ran the shell call; screen:\n{}",
            runner.get_text("/screen").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi\n");
    wait_for_screen(&runner, "All done: created the file.").await;
    // On /live the TUI's text is interleaved with cursor movements (codex
    // scrolls its inline viewport and redraws in pieces), so the text view
    // keeps the words in order but not always the spaces between them.
    let text = runner.get_text("/live?format=text").await;
    let squeezed: String = text.split_whitespace().collect();
    assert!(
        squeezed.contains("Alldone:createdthefile."),
        "the final message is on /live:\n{text}"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let health = runner.healthz().await;
        if health["agent"]["activity"] == "done" || health["agent"]["activity"] == "idle" {
            assert_eq!(health["busy"], false);
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ctrl+Z inside a message: removed, codex neither stops nor leaves its
    // screen, and it answers the rest of the message.
    let typed = mcp
        .call(
            "message",
            json!({"text": "next\u{1a} question", "wait_idle_seconds": 60}),
        )
        .await
        .ok();
    assert_eq!(typed["dropped"].as_array().unwrap().len(), 1, "{typed}");
    wait_for_screen(&runner, "Second answer, after the Ctrl+Z.").await;
    assert_ne!(process_state(pid), Some('T'));
    let health = runner.healthz().await;
    assert_eq!(health["agent"]["state"], "running");
    assert_eq!(
        health["agent"]["resumed_after_stop"], 0,
        "no stop ever happened"
    );
    let requests = serde_json::to_string(&mock.requests()).unwrap();
    assert!(requests.contains("Please create made-by-codex.txt"));
    assert!(requests.contains("next question"), "the text arrived whole");
    assert!(!requests.contains("\\u001a"), "no Ctrl+Z reached the model");
}

/// The check Fly runs on a new image, with the real codex as the agent.
#[tokio::test(flavor = "multi_thread")]
async fn smoke_check_passes_with_codex() {
    let setup = CodexSetup::new(json!([[{"message": "Noted."}]]));
    let (worktree, home, captures, mock) =
        (&setup.worktree, &setup.home, &setup.captures, &setup.mock);
    let runner = AgentRunner::start_with_env(
        &codex_bin(),
        captures,
        &["--cwd", worktree.to_str().unwrap()],
        &[("CODEX_HOME", home.to_str().unwrap())],
    );
    let output = std::process::Command::new(integration::workspace_bin("smoke-check"))
        .args(["runner", &runner.base, "--timeout", "90"])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(log.contains("message reached the agent"), "{log}");
    let health = runner.healthz().await;
    assert_eq!(health["agent"]["state"], "exited", "{health}");
    let requests = serde_json::to_string(&mock.requests()).unwrap();
    assert!(
        requests.contains("a deployment check"),
        "codex sent the message on"
    );
}

fn run_puzzle(dates_fix: &str) -> (bool, String) {
    let setup = CodexSetup::new(puzzle_script(dates_fix));
    let output = std::process::Command::new(integration::workspace_bin("smoke-check"))
        .args(["puzzle", "--timeout", "120", "--agent"])
        .arg(codex_bin())
        .arg("--runner")
        .arg(integration::workspace_bin("agent-runner"))
        .arg("--codex-config")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fly/agent-runner/write-codex-config"),
        )
        .arg("--work-dir")
        .arg(setup.dir.path().join("puzzle"))
        .args(["--worktrees", "libnfs", "--git-nfsd"])
        .arg(integration::workspace_bin("git-nfsd"))
        .env("CODEX_MODEL", "mock-model")
        .env(
            "CODEX_PROVIDER_URL",
            format!("http://127.0.0.1:{}/v1", setup.mock.port),
        )
        .env("CODEX_API_KEY_ENV", "")
        .output()
        .expect("running smoke-check");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), log)
}

/// The smoke check's puzzle with the real codex and the mock model: three
/// agents, each in its own worktree of the check's git-nfsd export, fix one
/// bug each. The worktrees are plain folders copied out of the export
/// through libnfs, as this machine's kernel has no NFS client; the QEMU
/// guest runs the overlay variant (`kernel_smoke_check.rs`).
#[test]
fn puzzle_in_plain_directories_read_through_libnfs_passes_when_every_agent_fixes_its_bug() {
    let (passed, log) = run_puzzle(RIGHT_DATES_FIX);
    assert!(passed, "{log}");
    for n in 1..=3 {
        assert!(
            log.contains(&format!("agent {n} finished its turn")),
            "{log}"
        );
    }
    assert!(log.contains("3 worktrees of one export (Libnfs)"), "{log}");
    assert!(log.contains("Ran 7 tests") && log.contains("OK"), "{log}");
}

#[test]
fn puzzle_in_plain_directories_read_through_libnfs_fails_and_names_the_agent_with_a_wrong_fix() {
    let (passed, log) = run_puzzle(
        "sed -i 's/return year % 4 == 0$/return year % 4 == 0 and year % 100 != 0/' shop/dates.py",
    );
    assert!(!passed, "{log}");
    assert!(
        log.contains("agent 3 (tests/test_dates.py): the test still fails"),
        "{log}"
    );
    assert!(!log.contains("agent 1 (tests/test_prices.py)"), "{log}");
    assert!(!log.contains("agent 2 (tests/test_text.py)"), "{log}");
}
