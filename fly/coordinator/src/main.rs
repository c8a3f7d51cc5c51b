//! `fly-coordinator`: wiring only. CLI → config → Machines API client →
//! agents → router; SIGTERM or Ctrl+C → graceful shutdown.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::net::TcpListener;
use tracing::info;
use tracing_subscriber::EnvFilter;

use coordinator::agents::Agents;
use coordinator::config::{Cli, Config, EnvSecrets};
use coordinator::machines::MachinesClient;
use coordinator::routes::{self, AppState};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Fly's log pipeline shows escape codes as they are.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Plain stderr, not tracing: RUST_LOG=off must not hide why the
            // coordinator refused to start.
            eprintln!("fly-coordinator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_cli(cli, EnvSecrets::from_process())?;
    let client = MachinesClient::new(
        config.api_base.clone(),
        &config.runner_app,
        config.token.clone(),
        config.backoff,
    )
    .context("cannot set up the Machines API client")?;
    let agents = Agents::new(client, config.runner.clone(), config.timeouts);
    let app = routes::app(Arc::new(AppState {
        agents,
        admin_token: config.admin_token.clone(),
    }));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    info!(%address, runner_app = %config.runner_app, api = %config.api_base,
        image = config.runner.image.as_deref().unwrap_or("(from the runner app's deploy)"), "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .context("server failed")?;
    info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM (what Fly sends to stop a machine) or Ctrl+C.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
