//! `smoke-check puzzle`: several agents fix one broken repository together.
//!
//! The check makes the repository itself (`puzzle/`: a Python package whose
//! tests fail on three independent bugs, one per module), serves it from a
//! git-nfsd of its own ([`crate::export`]), gives each agent its own
//! worktree of that one export and its own agent-runner, tells each (with `message`)
//! which failing test is theirs, waits for every agent to finish its turn,
//! collects each agent's commits with `git format-patch`, applies them all
//! to one fresh worktree and runs the repository's tests. It passes only
//! if every test passes; otherwise it says whose part failed. Which model
//! the agents use is not its business: their environment decides.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::client::{call, connect, http_client, step, wait_for_turn};
use crate::command;
use crate::export::{Server, Tools, Worktrees};

/// The repository, file by file.
const FILES: &[(&str, &str)] = &[
    ("README.md", include_str!("../puzzle/README.md")),
    (
        "shop/__init__.py",
        include_str!("../puzzle/shop/__init__.py"),
    ),
    ("shop/prices.py", include_str!("../puzzle/shop/prices.py")),
    ("shop/text.py", include_str!("../puzzle/shop/text.py")),
    ("shop/dates.py", include_str!("../puzzle/shop/dates.py")),
    (
        "tests/__init__.py",
        include_str!("../puzzle/tests/__init__.py"),
    ),
    (
        "tests/test_prices.py",
        include_str!("../puzzle/tests/test_prices.py"),
    ),
    (
        "tests/test_text.py",
        include_str!("../puzzle/tests/test_text.py"),
    ),
    (
        "tests/test_dates.py",
        include_str!("../puzzle/tests/test_dates.py"),
    ),
];

/// One agent's part: a failing test file and what it is about.
struct Part {
    test: &'static str,
    symptom: &'static str,
}

const PARTS: &[Part] = &[
    Part {
        test: "tests/test_prices.py",
        symptom: "order totals are wrong",
    },
    Part {
        test: "tests/test_text.py",
        symptom: "product slugs are wrong",
    },
    Part {
        test: "tests/test_dates.py",
        symptom: "leap years are wrong",
    },
];

/// How to run the agents.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the repository, worktrees and captures go.
    pub work_dir: PathBuf,
    /// The agent-runner binary.
    pub runner: PathBuf,
    /// The agent command each runner starts (codex).
    pub agent: String,
    /// Writes an agent's codex config: `SCRIPT CONFIG_TOML WORKTREE`.
    pub codex_config: Option<PathBuf>,
    pub timeout: Duration,
    /// How each worktree is made from the export.
    pub worktrees: Worktrees,
    pub tools: Tools,
}

const IDENTITY: [&str; 4] = [
    "-c",
    "user.name=smoke-check",
    "-c",
    "user.email=smoke-check@lazy-worktree.invalid",
];

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let stdout = command::output(
        Command::new("git")
            .args(IDENTITY)
            .arg("-C")
            .arg(dir)
            .args(args),
    )
    .with_context(|| format!("git {} in {}", args.join(" "), dir.display()))?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Whether `python3 -m unittest ARGS` passes in `dir`, and its report.
fn unittest(dir: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new("python3")
        .args(["-m", "unittest"])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running python3 -m unittest")?;
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok((output.status.success(), report))
}

/// Makes the broken repository and checks it is broken as designed: each
/// part's test fails.
fn make_repository(dir: &Path) -> anyhow::Result<String> {
    for (path, text) in FILES {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "."])?;
    git(
        dir,
        &["commit", "-q", "-m", "shop: three bugs, one per module"],
    )?;
    for part in PARTS {
        if unittest(dir, &[part.test])?.0 {
            bail!(
                "the puzzle is not broken: {} passes before any fix",
                part.test
            );
        }
    }
    Ok(git(dir, &["rev-parse", "HEAD"])?.trim().to_owned())
}

/// An agent-runner child process serving one worktree.
struct Runner {
    child: Child,
    url: String,
}

impl Runner {
    fn start(options: &Options, index: usize, worktree: &Path) -> anyhow::Result<Self> {
        let home = options.work_dir.join(format!("agent-{index}-home"));
        let captures = options.work_dir.join(format!("agent-{index}-captures"));
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&captures)?;
        if let Some(script) = &options.codex_config {
            let status = Command::new(script)
                .arg(home.join("config.toml"))
                .arg(worktree)
                .status()
                .with_context(|| format!("running {}", script.display()))?;
            if !status.success() {
                bail!("{} failed for agent {index}", script.display());
            }
        }
        let mut child = Command::new(&options.runner)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--command",
                &options.agent,
            ])
            .arg("--cwd")
            .arg(worktree)
            .arg("--capture-dir")
            .arg(&captures)
            .env("CODEX_HOME", &home)
            .env_remove("AGENT_RUNNER_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", options.runner.display()))?;
        let stdout = child.stdout.take().context("runner stdout")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let url = loop {
            let Some(line) = lines.next() else {
                bail!("agent-runner {index} exited before listening");
            };
            if let Some(url) = line?.strip_prefix("agent-runner listening on ") {
                break url.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, url })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // SIGTERM would be kinder, but the agents are done and their
        // captures flushed by `stop`; make sure nothing outlives the check.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drives one agent through its part; returns its patch.
async fn solve(
    index: usize,
    part: &Part,
    runner: &Runner,
    worktree: &Path,
    base: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let http = http_client(None)?;
    let mcp = connect(&runner.url, None).await?;
    call(&mcp, "start", json!({})).await.context("start")?;
    let task = format!(
        "You are agent {n} of {total}, each working in its own worktree of this repository. \
         The test {test} fails ({symptom}). Fix the code, not the test, until \
         `python3 -m unittest {test}` passes, then commit your fix with git. \
         The other failing tests belong to the other agents: leave them alone.",
        n = index + 1,
        total = PARTS.len(),
        test = part.test,
        symptom = part.symptom,
    );
    call(
        &mcp,
        "message",
        json!({ "text": task, "wait_idle_seconds": timeout.as_secs_f64() }),
    )
    .await
    .context("message")?;
    wait_for_turn(&http, &runner.url, timeout).await?;
    step(&format!("agent {} finished its turn", index + 1), started);
    let _ = call(&mcp, "stop", json!({})).await;
    let _ = mcp.cancel().await;
    let commits = git(worktree, &["rev-list", "--count", &format!("{base}..HEAD")])?;
    if commits.trim() == "0" {
        bail!("made no commit");
    }
    git(worktree, &["format-patch", "--stdout", base])
}

/// Runs the puzzle; `Ok(false)` when the agents' work does not pass.
pub async fn run(options: &Options) -> anyhow::Result<bool> {
    let started = Instant::now();
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    // Absolute, since git runs in several folders.
    let options = &Options {
        work_dir: std::fs::canonicalize(&options.work_dir)?,
        ..options.clone()
    };
    let origin = options.work_dir.join("origin");
    std::fs::create_dir_all(&origin)?;
    let base = make_repository(&origin)?;
    step(
        &format!(
            "made the broken repository ({} failing test files)",
            PARTS.len()
        ),
        started,
    );

    let server = Server::start(
        options.worktrees,
        options.tools.clone(),
        &options.work_dir,
        &origin,
    )?;
    step(&format!("git-nfsd serves it on {}", server.addr()), started);
    // Declared before the runners, so they are dropped (killed) first and
    // no agent's cwd is still in a worktree when it is unmounted.
    let mut worktrees = Vec::new();
    let mut runners = Vec::new();
    for index in 0..PARTS.len() {
        let dir = options.work_dir.join(format!("agent-{index}"));
        let worktree = server
            .worktree(&base, &dir)
            .with_context(|| format!("agent {}'s worktree", index + 1))?;
        runners.push(Runner::start(options, index, worktree.path())?);
        worktrees.push(worktree);
    }
    step(
        &format!(
            "{} worktrees of one export ({:?}), {} runners up",
            worktrees.len(),
            options.worktrees,
            runners.len()
        ),
        started,
    );

    let solving = PARTS.iter().enumerate().map(|(index, part)| {
        solve(
            index,
            part,
            &runners[index],
            worktrees[index].path(),
            &base,
            options.timeout,
        )
    });
    let patches = futures_util::future::join_all(solving).await;

    let final_worktree = server
        .worktree(&base, &options.work_dir.join("final"))
        .context("the worktree where every patch goes")?;
    let final_tree = final_worktree.path();
    let mut failed = Vec::new();
    for (index, patch) in patches.into_iter().enumerate() {
        let part = &PARTS[index];
        let patch = match patch {
            Ok(patch) => patch,
            Err(e) => {
                failed.push(format!("agent {} ({}): {e:#}", index + 1, part.test));
                continue;
            }
        };
        let file = options.work_dir.join(format!("agent-{index}.patch"));
        std::fs::write(&file, &patch)?;
        if let Err(e) = git(
            final_tree,
            &["am", "-q", "--3way", file.to_str().context("UTF-8 path")?],
        ) {
            let _ = git(final_tree, &["am", "--abort"]);
            failed.push(format!(
                "agent {} ({}): its patch does not apply: {e:#}",
                index + 1,
                part.test
            ));
        }
    }
    step("applied every patch that applies to one worktree", started);

    for (index, part) in PARTS.iter().enumerate() {
        let (passed, report) = unittest(final_tree, &[part.test])?;
        if !passed {
            let last = report.lines().rev().take(12).collect::<Vec<_>>();
            let last: Vec<&str> = last.into_iter().rev().collect();
            failed.push(format!(
                "agent {} ({}): the test still fails:\n{}",
                index + 1,
                part.test,
                last.join("\n")
            ));
        }
    }
    let (all_pass, report) = unittest(final_tree, &["discover", "-s", "tests", "-t", "."])?;
    println!(
        "smoke-check: the repository's tests with every agent's work:\n{}",
        report.trim_end()
    );
    if !all_pass && failed.is_empty() {
        failed.push("the whole suite fails although each part passes alone".to_owned());
    }
    for failure in &failed {
        eprintln!("smoke-check: {failure}");
    }
    Ok(failed.is_empty() && all_pass)
}
