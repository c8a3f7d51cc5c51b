//! `smoke-check`: what a new agent-runner image must pass before Fly
//! promotes it, and what CI runs here.
//!
//! - `smoke-check runner URL` ([`runner_check`]) checks one runner through
//!   its interfaces; `[[http_service.machine_checks]]` runs it against the
//!   machine under test.
//! - `smoke-check puzzle` ([`puzzle`]) has several agents fix one broken
//!   repository, each in its own worktree of one git-nfsd export
//!   ([`export`]), and passes only if the repository's tests pass with all
//!   their work applied.
//!
//! Every failure names the step and exits 1.

mod client;
mod command;
mod export;
mod puzzle;
mod runner_check;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check one runner: health, tools, start, message, stop.
    Runner {
        /// The runner's base URL, e.g. `http://[fdaa::3]:8080`.
        url: String,
        /// Bearer token, if the runner requires one.
        #[arg(long, env = "AGENT_RUNNER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How long each step may take, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Three agents fix three bugs of one repository; its tests must pass.
    Puzzle {
        /// Where the repository, worktrees, patches and captures go.
        #[arg(long)]
        work_dir: PathBuf,
        /// The agent-runner binary.
        #[arg(long, default_value = "agent-runner")]
        runner: PathBuf,
        /// The agent each runner starts.
        #[arg(long, default_value = "codex")]
        agent: String,
        /// Writes each agent's codex config (`SCRIPT CONFIG_TOML WORKTREE`;
        /// the image's `write-codex-config`, which reads the model settings
        /// from the environment).
        #[arg(long)]
        codex_config: Option<PathBuf>,
        /// How long each agent may take, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// How each agent's worktree is made from the export: an overlay
        /// mount (root, kernel NFS client), or a folder copied through
        /// libnfs where the kernel has no NFS client.
        #[arg(long, value_enum, default_value_t = export::Worktrees::Overlay)]
        worktrees: export::Worktrees,
        /// The git-nfsd binary that serves the repository.
        #[arg(long, default_value = "git-nfsd")]
        git_nfsd: PathBuf,
        /// The overlay script (`umount-worktree` must sit beside it).
        #[arg(long, default_value = "mount-worktree")]
        mount_worktree: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Runner {
            url,
            token,
            timeout,
        } => runner_check::check_runner(&url, token.as_deref(), Duration::from_secs(timeout))
            .await
            .map(|()| true),
        Command::Puzzle {
            work_dir,
            runner,
            agent,
            codex_config,
            timeout,
            worktrees,
            git_nfsd,
            mount_worktree,
        } => {
            let options = puzzle::Options {
                work_dir,
                runner,
                agent,
                codex_config,
                timeout: Duration::from_secs(timeout),
                worktrees,
                tools: export::Tools {
                    git_nfsd,
                    mount_worktree,
                },
            };
            puzzle::run(&options).await
        }
    };
    match result {
        Ok(true) => {
            println!("smoke-check: ok");
            std::process::ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("smoke-check: FAILED: the agents' work does not pass the tests");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("smoke-check: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
