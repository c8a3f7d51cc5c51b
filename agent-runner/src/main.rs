//! `agent-runner`: runs a coding agent in a pty behind MCP tools.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use rmcp::ServiceExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use agent_runner::http::{self, Access};
use agent_runner::idle::{self, FLY_SUSPEND_MAX_MEMORY_MB, IdleAction, IdlePolicy, MachineApi};
use agent_runner::mcp::RunnerTools;
use agent_runner::runner::{Config, Runner};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MCP over streamable HTTP at /mcp, plus /live, /screen, / and /healthz.
    Serve(ServeArgs),
    /// MCP over stdin/stdout; with --listen, the HTTP endpoints as well.
    Stdio {
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        http: HttpArgs,
        /// Also serve HTTP (/live, /screen, /healthz, /mcp) here.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    http: HttpArgs,
    /// Address to listen on; `[::]` accepts IPv6 and IPv4.
    #[arg(long, default_value = "[::]:8080", env = "AGENT_RUNNER_LISTEN")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// The agent program.
    #[arg(long, default_value = "codex", env = "AGENT_RUNNER_COMMAND")]
    command: String,
    /// An argument for the agent (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// The agent's working directory (default: the runner's).
    #[arg(long, env = "AGENT_RUNNER_CWD")]
    cwd: Option<PathBuf>,
    /// Where captures are kept (default: a new folder in the temp dir).
    /// Keep it across restarts to serve earlier sessions' output.
    #[arg(long, env = "AGENT_RUNNER_CAPTURE_DIR")]
    capture_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 40)]
    rows: u16,
    #[arg(long, default_value_t = 120)]
    cols: u16,
    /// Pause between a message's text and its Enter, in milliseconds: a TUI
    /// that takes a fast burst of keys as a paste must see the burst end.
    #[arg(long, default_value_t = 250)]
    enter_delay_ms: u64,
    #[arg(long, default_value_t = 64 * 1024)]
    max_message_bytes: usize,
    /// Messages that may wait to be typed at once; more get a `queue_full`
    /// tool error. Messages are typed one at a time, so this also bounds
    /// how fast a client can push them.
    #[arg(long, default_value_t = 64)]
    max_queued_messages: usize,
    /// Seconds between SIGTERM and SIGKILL when stopping the agent.
    #[arg(long, default_value_t = 10)]
    stop_grace_secs: u64,
    /// Do not add codex's `--no-daemon` when the command is codex.
    #[arg(long)]
    no_codex_defaults: bool,
}

#[derive(Debug, Args)]
struct HttpArgs {
    /// Bearer token required on everything but /healthz.
    #[arg(long, env = "AGENT_RUNNER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A Host header value to accept besides the defaults (loopback, this
    /// machine's addresses and name, and on Fly `<app>.flycast`,
    /// `<app>.internal`, `<machine>.vm.<app>.internal`). Repeatable; the
    /// variable takes a comma-separated list. Requests a coordinator
    /// replays keep the Host they were sent to it with, so its names go
    /// here (the coordinator sets the variable on the machines it makes).
    #[arg(
        long = "allowed-host",
        env = "AGENT_RUNNER_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Accept any Host header (only behind a proxy that checks it).
    #[arg(long)]
    allow_any_host: bool,
    /// Base URL reported for /live (default: from the listen address).
    #[arg(long)]
    public_url: Option<String>,
    #[command(flatten)]
    idle: IdleArgs,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Give the machine back after this many seconds without work (agent
    /// not working, no /live follower, no output, no request but
    /// /healthz). Default on a Fly machine: 900; elsewhere off. 0: off.
    #[arg(long, env = "AGENT_RUNNER_IDLE_AFTER")]
    idle_after: Option<u64>,
    /// What to do with the machine when idle.
    #[arg(
        long,
        value_enum,
        default_value = "suspend",
        env = "AGENT_RUNNER_IDLE_ACTION"
    )]
    idle_action: IdleAction,
    /// The local Machines API socket.
    #[arg(
        long,
        default_value = "/.fly/api",
        env = "AGENT_RUNNER_MACHINES_API_SOCKET"
    )]
    machines_api_socket: PathBuf,
}

/// Fly's default idle time, when the runner runs on a Fly machine.
const FLY_IDLE_AFTER_SECS: u64 = 900;

impl IdleArgs {
    /// The policy, if it applies: it needs the app and machine ids Fly sets.
    fn policy(&self) -> anyhow::Result<Option<IdlePolicy>> {
        let app = std::env::var("FLY_APP_NAME").ok().filter(|v| !v.is_empty());
        let machine = std::env::var("FLY_MACHINE_ID")
            .ok()
            .filter(|v| !v.is_empty());
        let after = match (self.idle_after, &app) {
            (Some(0), _) | (None, None) => return Ok(None),
            (Some(secs), _) => secs,
            (None, Some(_)) => FLY_IDLE_AFTER_SECS,
        };
        let (Some(app), Some(machine)) = (app, machine) else {
            anyhow::bail!(
                "--idle-after needs FLY_APP_NAME and FLY_MACHINE_ID (set on every Fly machine)"
            );
        };
        let memory_mb = std::env::var("FLY_VM_MEMORY_MB")
            .ok()
            .and_then(|mb| mb.trim().parse().ok());
        let action = self.idle_action.for_memory(memory_mb);
        if action != self.idle_action {
            tracing::warn!(
                memory_mb,
                "Fly suspends only machines of at most {FLY_SUSPEND_MAX_MEMORY_MB} MB: \
                 this one will be stopped when idle instead"
            );
        }
        Ok(Some(IdlePolicy {
            after: Duration::from_secs(after),
            action,
            api: MachineApi {
                socket: self.machines_api_socket.clone(),
                app,
                machine,
            },
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn")),
        )
        .with_writer(std::io::stderr)
        // Fly's log pipeline (and any file) shows escape codes as they are.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args.agent, args.http, Some(args.listen), false).await,
        Command::Stdio {
            agent,
            http,
            listen,
        } => serve(agent, http, listen, true).await,
    }
}

fn runner_config(agent: AgentArgs, public_url: String) -> anyhow::Result<Config> {
    let capture_dir = match agent.capture_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("agent-runner-{}", std::process::id())),
    };
    std::fs::create_dir_all(&capture_dir)
        .with_context(|| format!("creating the capture dir {}", capture_dir.display()))?;
    let mut args = agent.args;
    if agent_runner::runner::is_codex(&agent.command)
        && !agent.no_codex_defaults
        && !args.iter().any(|a| a == "--no-daemon")
    {
        // Otherwise codex leaves a background server running outside the pty.
        args.insert(0, "--no-daemon".to_owned());
    }
    Ok(Config {
        program: agent.command,
        args,
        cwd: agent.cwd,
        capture_dir,
        public_url,
        rows: agent.rows,
        cols: agent.cols,
        enter_delay: Duration::from_millis(agent.enter_delay_ms),
        max_message_bytes: agent.max_message_bytes,
        max_queued_messages: agent.max_queued_messages,
        write_timeout: Duration::from_secs(10),
        stop_grace: Duration::from_secs(agent.stop_grace_secs),
    })
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        // No IPv6 in this container: fall back to IPv4 on the same port.
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            tracing::warn!("cannot listen on {addr} ({e}); trying IPv4");
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            TcpListener::bind(v4)
                .await
                .with_context(|| format!("listening on {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("listening on {addr}")),
    }
}

fn default_public_url(local: SocketAddr) -> String {
    if local.ip().is_unspecified() {
        if let (Ok(app), Ok(machine)) = (
            std::env::var("FLY_APP_NAME"),
            std::env::var("FLY_MACHINE_ID"),
        ) {
            return format!("http://{machine}.vm.{app}.internal:{}", local.port());
        }
        return format!("http://localhost:{}", local.port());
    }
    format!("http://{local}")
}

async fn serve(
    agent: AgentArgs,
    http_args: HttpArgs,
    listen: Option<SocketAddr>,
    stdio: bool,
) -> anyhow::Result<()> {
    let listener = match listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let local = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let public_url = http_args
        .public_url
        .clone()
        .or_else(|| local.map(default_public_url))
        .unwrap_or_default();
    let idle_policy = http_args.idle.policy()?;
    let config = runner_config(agent, public_url)?;
    tracing::info!(capture_dir = %config.capture_dir.display(), command = %config.program, "agent-runner ready");
    let runner = Arc::new(Runner::new(config));
    let shutdown = CancellationToken::new();

    let mut allowed_hosts = if http_args.allow_any_host {
        Vec::new()
    } else {
        let mut hosts = agent_runner::config::default_allowed_hosts();
        hosts.extend(http_args.allowed_hosts);
        hosts
    };
    allowed_hosts.dedup();
    let access = Access {
        token: http_args.token.filter(|t| !t.is_empty()),
        allowed_hosts,
    };

    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(listener), Some(local)) = (listener, local) {
        let app = http::router(runner.clone(), access, shutdown.clone());
        let stop = shutdown.clone();
        // Not println!: a closed stdout (its reader gone) would panic here
        // and take the runner down with it.
        let _ = writeln!(
            std::io::stdout(),
            "agent-runner listening on http://{local}"
        )
        .and_then(|()| std::io::stdout().flush());
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .context("HTTP server")
        });
    }
    if let Some(policy) = idle_policy {
        let (runner, stop) = (runner.clone(), shutdown.clone());
        tasks.spawn(async move {
            idle::run(runner, policy, stop).await;
            Ok(())
        });
    }
    if stdio {
        let tools = RunnerTools::new(runner.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let service = tools
                .serve(rmcp::transport::stdio())
                .await
                .context("starting MCP over stdio")?;
            tokio::select! {
                r = service.waiting() => { r.context("MCP over stdio")?; }
                () = stop.cancelled() => {}
            }
            // stdin closed: the client is gone, so is the runner.
            stop.cancel();
            Ok(())
        });
    }

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping the agent"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping the agent"),
        () = shutdown.cancelled() => {}
        Some(result) = tasks.join_next() => {
            result.context("server task")??;
        }
    }
    if let Some(info) = runner.shutdown().await {
        tracing::info!("agent {}", info.description);
    }
    shutdown.cancel();
    // Followers of /live end when the capture is finished; give the rest a
    // moment to close cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
