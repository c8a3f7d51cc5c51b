//! `local-fly run --spec SPEC --dir DIR`: brings a local Fly up (network,
//! Machines API, proxy, the apps' first deploys), prints one JSON line
//! saying where everything is, and runs until SIGTERM or Ctrl+C, when it
//! kills its machines and removes its network. Needs root (namespaces,
//! mounts, links).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::json;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use local_fly::app::FlyToml;
use local_fly::platform::{Platform, PlatformBackends};
use local_fly::proxy::{Proxy, ProxyConfig};
use local_fly::spec::Spec;
use local_fly::{api, deploy};

/// The Machines API's port on `_api.internal`, as on Fly.
const API_PORT: u16 = 4280;

#[derive(Debug, Parser)]
#[command(
    name = "local-fly",
    version,
    about = "A local double of Fly.io's platform"
)]
enum Cli {
    /// Runs a local Fly until SIGTERM.
    Run {
        /// The spec: region, API token, images, apps.
        #[arg(long)]
        spec: PathBuf,
        /// Where machines, volumes and logs live (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Keeps several local Flys on one host apart (bridge lfly<N>,
        /// addresses fdaa:0:<N>::/48).
        #[arg(long, default_value_t = 1)]
        instance: u16,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Cli::Run {
        spec,
        dir,
        instance,
    } = Cli::parse();
    match run(spec, dir, instance).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("local-fly: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(spec_path: PathBuf, dir: PathBuf, instance: u16) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("local-fly needs root: it makes network namespaces, links and mounts");
    }
    let spec = Spec::load(&spec_path)?;
    let base = spec_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let platform = Platform::new(&dir, instance, &spec.region)?;
    let shutdown = CancellationToken::new();

    // Every machine's /.fly/api: the API for its own calls, no token.
    {
        let platform_for_hook = Arc::downgrade(&platform);
        let shutdown = shutdown.clone();
        platform.on_machine_created(Box::new(move |app, machine, fly_dir| {
            let Some(platform) = platform_for_hook.upgrade() else {
                return;
            };
            let socket = fly_dir.join("api");
            let _ = std::fs::remove_file(&socket);
            match UnixListener::bind(&socket) {
                Ok(listener) => {
                    let router = api::machine_socket_router(platform, app, machine);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, router)
                            .with_graceful_shutdown(shutdown.cancelled_owned())
                            .await;
                    });
                }
                Err(error) => warn!(%error, socket = %socket.display(), "cannot serve /.fly/api"),
            }
        }));
    }

    for image in spec.images.clone() {
        platform.add_image(image);
    }

    let gateway = platform.network().gateway();
    let api_address = SocketAddr::new(IpAddr::V6(gateway), API_PORT);
    let api_listener = TcpListener::bind(api_address)
        .await
        .with_context(|| format!("listening for the Machines API on {api_address}"))?;
    {
        let router = api::router(Arc::clone(&platform), spec.api_token.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(api_listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
    }

    let proxy = Proxy::new(
        Arc::new(PlatformBackends(Arc::clone(&platform))),
        ProxyConfig {
            region: spec.region.clone(),
            ..ProxyConfig::default()
        },
    );
    let mut flycast = BTreeMap::new();
    for app_spec in &spec.apps {
        let path = base.join(&app_spec.fly_toml);
        let mut fly_toml = FlyToml::load(&path)?;
        fly_toml.env.extend(app_spec.env.clone());
        let ports = fly_toml.proxy_ports();
        let app = platform.add_app(fly_toml, app_spec.secrets.clone())?;
        for port in ports {
            let address = SocketAddr::new(IpAddr::V6(app.flycast), port);
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("listening for {} on {address}", app.name))?;
            tokio::spawn(Arc::clone(&proxy).serve(app.name.clone(), listener, shutdown.clone()));
        }
        flycast.insert(app.name.clone(), app.flycast.to_string());
    }

    for app_spec in &spec.apps {
        let Some(image) = &app_spec.image else {
            continue;
        };
        let app = FlyToml::load(&base.join(&app_spec.fly_toml))?.app;
        let report = deploy::deploy(&platform, &app, image).await;
        if !report.ok {
            platform.shutdown().await;
            bail!(
                "the first deploy of {app} failed: {}",
                report.error.unwrap_or_default()
            );
        }
    }

    let ready = json!({
        "api": format!("http://[{gateway}]:{API_PORT}"),
        "gateway": gateway.to_string(),
        "flycast": flycast,
        "hosts": platform.network().hosts_file(),
    });
    println!("{ready}");
    info!(%ready, "local Fly is up");

    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    platform.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = tokio::signal::ctrl_c();
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
