//! `fly deploy` of a new image, as flyctl does it for the project's apps:
//!
//! - the first deploy creates the app's machines (one, as `--ha=false`),
//!   each with a new volume if `fly.toml` has `[mounts]`, and runs no
//!   machine checks (flyctl checks only machines it updates);
//! - `canary` (refused for apps with `[mounts]`, as flyctl refuses it):
//!   a new canary machine of the new image, the machine checks against it,
//!   the canary destroyed; only if they pass, the rolling update below;
//! - `rolling` (the default): each machine updated in turn (a stopped one
//!   stays stopped), and the checks run against each started one after
//!   its update; a failure stops the deploy there;
//! - `immediate`: every machine updated, no checks.
//!
//! A machine check runs in a throwaway machine of the new image (or the
//! check's own), with the app's environment, the tested machine's, and
//! `FLY_TEST_MACHINE_IP` set to the tested machine's private address; its
//! exit status decides. The machine destroys itself when it ends.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::app::MachineCheck;
use crate::platform::{MachineState, Platform, PlatformError};

/// How long one machine check may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a machine may take to reach `started`.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What a deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub app: String,
    pub image: String,
    pub release: u64,
    pub strategy: String,
    pub ok: bool,
    pub error: Option<String>,
    /// What was done, in order, for the reader of a failed test.
    pub steps: Vec<String>,
    pub checks: Vec<CheckRun>,
}

/// One machine check's run.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRun {
    pub tested_machine: String,
    pub check_machine: String,
    pub exit_code: Option<i32>,
    /// The end of the check machine's output.
    pub output: String,
}

/// Deploys `image` to `app`; the report says whether it got through.
pub async fn deploy(platform: &Arc<Platform>, app: &str, image: &str) -> DeployReport {
    let mut report = DeployReport {
        app: app.to_owned(),
        image: image.to_owned(),
        release: 0,
        strategy: String::new(),
        ok: false,
        error: None,
        steps: Vec::new(),
        checks: Vec::new(),
    };
    match run(platform, app, image, &mut report).await {
        Ok(()) => report.ok = true,
        Err(error) => {
            warn!(app, image, %error, "deploy failed");
            report.error = Some(error);
        }
    }
    info!(
        app,
        image,
        ok = report.ok,
        release = report.release,
        "deploy finished"
    );
    report
}

async fn run(
    platform: &Arc<Platform>,
    app_name: &str,
    image: &str,
    report: &mut DeployReport,
) -> Result<(), String> {
    let app = platform
        .app(app_name)
        .ok_or_else(|| format!("no app {app_name}"))?;
    report.strategy = app.fly_toml.strategy();
    report.release = platform.next_release(app_name).map_err(|e| e.to_string())?;
    let config = app
        .fly_toml
        .machine_config(image, report.release)
        .map_err(|e| e.to_string())?;
    let checks = app.fly_toml.machine_checks();
    let machines: Vec<Value> = platform
        .list_machines(
            app_name,
            &[
                ("fly_platform_version".to_owned(), "v2".to_owned()),
                ("fly_process_group".to_owned(), "app".to_owned()),
            ],
        )
        .into_iter()
        .collect();

    if machines.is_empty() {
        let mut config = config;
        if let Some(mounts) = &app.fly_toml.mounts {
            let volume = platform
                .create_volume(app_name, &mounts.source, 1)
                .map_err(|e| e.to_string())?;
            config["mounts"] = json!([{
                "volume": volume["id"],
                "path": mounts.destination,
            }]);
        }
        let machine = platform
            .create_machine(app_name, config, false)
            .map_err(|e| e.to_string())?;
        let id = machine["id"].as_str().unwrap_or_default().to_owned();
        report.steps.push(format!("created machine {id}"));
        wait_started(platform, &id).await?;
        return Ok(());
    }

    match report.strategy.as_str() {
        "immediate" => {
            for machine in &machines {
                update_one(platform, machine, &config, report).await?;
            }
            Ok(())
        }
        "canary" => {
            if app.fly_toml.mounts.is_some() {
                return Err(
                    "canary deployment strategy is not supported for machines with volumes"
                        .to_owned(),
                );
            }
            let canary = platform
                .create_machine(app_name, config.clone(), false)
                .map_err(|e| e.to_string())?;
            let canary_id = canary["id"].as_str().unwrap_or_default().to_owned();
            report.steps.push(format!("created canary {canary_id}"));
            let checked = async {
                wait_started(platform, &canary_id).await?;
                run_checks(platform, app_name, &canary_id, image, &checks, report).await
            }
            .await;
            let _ = platform.destroy(&canary_id, true).await;
            report.steps.push(format!("destroyed canary {canary_id}"));
            checked?;
            rolling(
                platform, app_name, image, &machines, &config, &checks, report,
            )
            .await
        }
        _ => {
            rolling(
                platform, app_name, image, &machines, &config, &checks, report,
            )
            .await
        }
    }
}

async fn rolling(
    platform: &Arc<Platform>,
    app: &str,
    image: &str,
    machines: &[Value],
    config: &Value,
    checks: &[MachineCheck],
    report: &mut DeployReport,
) -> Result<(), String> {
    for machine in machines {
        let id = update_one(platform, machine, config, report).await?;
        if platform.state_of(&id) == Some(MachineState::Started) {
            run_checks(platform, app, &id, image, checks, report).await?;
        }
    }
    Ok(())
}

/// Updates one machine onto `config`, keeping its volume; a machine that
/// is not running stays so (flyctl's `skip_launch`).
async fn update_one(
    platform: &Arc<Platform>,
    machine: &Value,
    config: &Value,
    report: &mut DeployReport,
) -> Result<String, String> {
    let id = machine["id"].as_str().unwrap_or_default().to_owned();
    let running = machine["state"] == "started";
    let mut config = config.clone();
    if let Some(mounts) = machine["config"].get("mounts") {
        config["mounts"] = mounts.clone();
    }
    platform
        .update(&id, config, !running)
        .await
        .map_err(|e| e.to_string())?;
    report.steps.push(format!("updated machine {id}"));
    if running {
        wait_started(platform, &id).await?;
    }
    Ok(id)
}

/// Waits for the machine to be started and its services to listen, as
/// flyctl waits for a machine to reach a good state before it moves on.
async fn wait_started(platform: &Platform, id: &str) -> Result<(), String> {
    match platform
        .wait(id, MachineState::Started, START_TIMEOUT)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(format!("machine {id} did not start")),
        Err(error) => return Err(error.to_string()),
    }
    let view = platform.machine_view(id).map_err(|e| e.to_string())?;
    let Some(ip) = view["private_ip"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok())
    else {
        return Ok(());
    };
    let ports: Vec<u16> = view["config"]["services"]
        .as_array()
        .map(|services| {
            services
                .iter()
                .filter_map(|s| s["internal_port"].as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    for port in ports {
        let address = std::net::SocketAddr::new(ip.into(), port);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "machine {id} started but nothing listens on {address}:\n{}",
                    platform.log(id).unwrap_or_default()
                ));
            }
            if platform.state_of(id) != Some(MachineState::Started) {
                return Err(format!(
                    "machine {id} stopped before it listened on {address}:\n{}",
                    platform.log(id).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Runs every check against `tested`; the first failure ends the deploy.
async fn run_checks(
    platform: &Arc<Platform>,
    app: &str,
    tested: &str,
    image: &str,
    checks: &[MachineCheck],
    report: &mut DeployReport,
) -> Result<(), String> {
    for check in checks {
        let run = run_check(platform, app, tested, image, check)
            .await
            .map_err(|e| e.to_string())?;
        let passed = run.exit_code == Some(0);
        report.steps.push(format!(
            "machine check against {tested}: exit {:?}",
            run.exit_code
        ));
        report.checks.push(run);
        if !passed {
            return Err(format!(
                "machine check failed against {tested}; the deploy stops here"
            ));
        }
    }
    Ok(())
}

async fn run_check(
    platform: &Arc<Platform>,
    app_name: &str,
    tested: &str,
    image: &str,
    check: &MachineCheck,
) -> Result<CheckRun, PlatformError> {
    let app = platform
        .app(app_name)
        .ok_or_else(|| PlatformError::NotFound(format!("app {app_name}")))?;
    let tested_view = platform.machine_view(tested)?;
    let mut env = serde_json::Map::new();
    for (key, value) in &app.fly_toml.env {
        env.insert(key.clone(), json!(value));
    }
    if let Some(tested_env) = tested_view["config"]["env"].as_object() {
        env.extend(tested_env.clone());
    }
    env.insert(
        "FLY_TEST_MACHINE_IP".to_owned(),
        tested_view["private_ip"].clone(),
    );
    env.insert("FLY_TEST_COMMAND".to_owned(), json!("1"));
    env.insert(
        "FLY_PROCESS_GROUP".to_owned(),
        json!("fly_app_test_machine_command"),
    );
    let mut init = json!({ "cmd": check.command });
    if let Some(entrypoint) = &check.entrypoint {
        init["entrypoint"] = json!(entrypoint);
    }
    let config = json!({
        "image": check.image.as_deref().unwrap_or(image),
        "env": env,
        "guest": tested_view["config"]["guest"],
        "init": init,
        "restart": {"policy": "no"},
        "auto_destroy": true,
        "metadata": {
            "fly_platform_version": "v2",
            "fly_process_group": "fly_app_test_machine_command",
        },
    });
    let machine = platform.create_machine(app_name, config, false)?;
    let id = machine["id"].as_str().unwrap_or_default().to_owned();
    info!(app = app_name, tested, check = %id, "running a machine check");
    let ended = platform
        .wait(&id, MachineState::Destroyed, CHECK_TIMEOUT)
        .await?;
    if !ended {
        let _ = platform.destroy(&id, true).await;
    }
    let log = platform.log(&id).unwrap_or_default();
    let tail_start = log.len().saturating_sub(4096);
    let output = log
        .get(tail_start..)
        .map_or_else(|| log.clone(), str::to_owned);
    Ok(CheckRun {
        tested_machine: tested.to_owned(),
        check_machine: id.clone(),
        exit_code: if ended { platform.exit_code(&id) } else { None },
        output,
    })
}
