//! The coordinator's configuration: the command line and the environment,
//! checked once at startup into a [`Config`].
//!
//! Two credentials, each read from the environment or from a file, never
//! from the command line (where `ps` would show them), and each held in a
//! [`Secret`] whose `Debug` output is redacted, so no log line or error
//! message that prints the configuration can leak them: the Fly API token
//! the coordinator sends to the Machines API (`FLY_API_TOKEN`,
//! `--token-file`), and the token management calls must bring
//! (`COORDINATOR_TOKEN`, `--admin-token-file`). Without the second anyone on
//! the private network (or the internet, while a first deploy still has a
//! public address) could create machines.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use reqwest::Url;

use crate::agents::{CpuKind, ENV_AGENT, ENV_MODE, ENV_REPO, RunnerSettings, Size, Timeouts};
use crate::backoff::Backoff;

/// Where the coordinator listens unless told otherwise; `fly.toml`'s
/// `internal_port` must match (a test checks it).
pub const DEFAULT_LISTEN: &str = "[::]:8080";
/// The public Machines API.
pub const DEFAULT_API_BASE: &str = "https://api.machines.dev";

/// A credential. `Debug` shows `Secret(***)`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `fly-coordinator`'s command line; every option can also come from the
/// environment variable named in `--help`.
#[derive(Debug, Parser)]
#[command(
    name = "fly-coordinator",
    version,
    args_override_self = true,
    about = "Routes requests for a named agent to its Fly Machine, waking it first",
    after_help = "The Fly API token comes from FLY_API_TOKEN or --token-file, never from the \
                  command line. A deploy token for the runner app is enough: \
                  fly tokens create deploy -a RUNNER_APP. Management calls (PUT, GET and \
                  DELETE /agents/NAME) need Authorization: Bearer with COORDINATOR_TOKEN \
                  (or --admin-token-file); routed requests are checked by the runner."
)]
pub struct Cli {
    /// The Fly app whose machines run agent-runner.
    #[arg(long, env = "RUNNER_APP")]
    pub runner_app: String,
    /// The image new agent machines run while no deploy of the runner app
    /// is found (registry.fly.io/RUNNER_APP:TAG). Once `fly deploy` of the
    /// runner app has made machines, their image is used, and agents are
    /// moved onto each newly deployed one while they sleep.
    #[arg(long, env = "RUNNER_IMAGE")]
    pub runner_image: Option<String>,
    /// The Machines API; from inside Fly's network http://_api.internal:4280
    /// works too.
    #[arg(long, env = "FLY_API_BASE", default_value = DEFAULT_API_BASE)]
    pub api_base: Url,
    /// A file holding the Fly API token; takes precedence over FLY_API_TOKEN.
    #[arg(long, env = "FLY_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A file holding the token management calls must bring; takes
    /// precedence over COORDINATOR_TOKEN.
    #[arg(long, env = "COORDINATOR_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The coordinator's own Fly app (Fly sets FLY_APP_NAME). Requests it
    /// replays reach the runner with the Host they were sent with,
    /// `APP.flycast` or `APP.internal`, so the runner is told to accept
    /// those names.
    #[arg(long, env = "FLY_APP_NAME")]
    pub app_name: Option<String>,
    /// Address to listen on; `[::]` accepts IPv6 (Flycast, 6PN) and IPv4.
    #[arg(long, env = "COORDINATOR_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Region for new agents' volumes and machines (default: the runner
    /// app's primary region).
    #[arg(long, env = "RUNNER_REGION")]
    pub region: Option<String>,
    /// Default CPU kind of an agent's machine.
    #[arg(long, env = "RUNNER_CPU_KIND", value_enum, default_value_t = CpuKind::Shared)]
    pub cpu_kind: CpuKind,
    /// Default CPU count of an agent's machine.
    #[arg(long, env = "RUNNER_CPUS", default_value_t = 2)]
    pub cpus: u32,
    /// Default memory of an agent's machine, in MB (a multiple of 256).
    #[arg(long, env = "RUNNER_MEMORY_MB", default_value_t = 2048)]
    pub memory_mb: u32,
    /// Name of the volume each agent machine gets (one volume per machine,
    /// all with this name: the runner app's `[mounts] source`).
    #[arg(long, env = "RUNNER_VOLUME_NAME", default_value = "agent_data")]
    pub volume_name: String,
    #[arg(long, env = "RUNNER_VOLUME_SIZE_GB", default_value_t = 5)]
    pub volume_size_gb: u32,
    /// Where the volume is mounted in the runner (the worktrees' uppers).
    #[arg(long, env = "RUNNER_MOUNT_PATH", default_value = "/data")]
    pub mount_path: String,
    /// The port agent-runner listens on inside its machine.
    #[arg(long, env = "RUNNER_INTERNAL_PORT", default_value_t = 8080)]
    pub runner_port: u16,
    /// The runner service's port on the proxy. A replay is delivered to the
    /// service on the port the original request came in on, so this must be
    /// the port clients reach the coordinator on.
    #[arg(long, env = "RUNNER_SERVICE_PORT", default_value_t = 80)]
    pub service_port: u16,
    /// Extra environment for agent machines, KEY=VALUE (repeatable; in the
    /// environment variable, separated by ';'). Machines made through the
    /// Machines API get none of the runner's fly.toml [env]: pass it here.
    #[arg(long = "runner-env", env = "RUNNER_ENV", value_delimiter = ';', value_parser = parse_env_pair)]
    pub runner_env: Vec<(String, String)>,
    /// How long a routed request may wait for its agent's machine to start.
    #[arg(long, env = "COORDINATOR_WAKE_TIMEOUT_SECS", default_value_t = 60)]
    pub wake_timeout_secs: u64,
    /// How long one management operation (create, update, release) may take.
    #[arg(long, env = "COORDINATOR_API_TIMEOUT_SECS", default_value_t = 120)]
    pub api_timeout_secs: u64,
    /// Retries of a failed Machines API call (429, 5xx, connection errors).
    #[arg(long, env = "COORDINATOR_API_RETRIES", default_value_t = 4)]
    pub api_retries: u32,
    /// The first retry's pause before jitter, in milliseconds; it doubles
    /// with each retry.
    #[arg(long, env = "COORDINATOR_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
    /// The longest pause between retries, in milliseconds (a longer
    /// Retry-After from the API is honoured).
    #[arg(long, env = "COORDINATOR_RETRY_CAP_MS", default_value_t = 5000)]
    pub retry_cap_ms: u64,
}

/// The credentials the environment holds, read once by `main` (a value so
/// tests need not touch the process environment).
#[derive(Debug, Default, Clone)]
pub struct EnvSecrets {
    /// `FLY_API_TOKEN`.
    pub fly_api_token: Option<String>,
    /// `COORDINATOR_TOKEN`.
    pub admin_token: Option<String>,
}

impl EnvSecrets {
    pub fn from_process() -> Self {
        Self {
            fly_api_token: std::env::var("FLY_API_TOKEN").ok(),
            admin_token: std::env::var("COORDINATOR_TOKEN").ok(),
        }
    }
}

/// The runner's variable listing the extra Host names it accepts.
pub const ENV_RUNNER_ALLOWED_HOSTS: &str = "AGENT_RUNNER_ALLOWED_HOSTS";

/// Everything the coordinator needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub api_base: Url,
    pub runner_app: String,
    pub token: Secret,
    /// What management calls must bring as `Authorization: Bearer`.
    pub admin_token: Secret,
    pub backoff: Backoff,
    pub runner: RunnerSettings,
    pub timeouts: Timeouts,
}

/// Why the configuration was refused; returned by [`Config::from_cli`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("no Fly API token: set FLY_API_TOKEN or pass --token-file")]
    NoToken,
    #[error(
        "no management token: set COORDINATOR_TOKEN (fly secrets set COORDINATOR_TOKEN=...) \
         or pass --admin-token-file; without one anyone who reaches the coordinator could \
         create machines"
    )]
    NoAdminToken,
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

impl Config {
    /// Checks the command line and the credentials.
    pub fn from_cli(cli: Cli, secrets: EnvSecrets) -> Result<Self, ConfigError> {
        let token = read_secret(cli.token_file.as_deref(), secrets.fly_api_token)?
            .ok_or(ConfigError::NoToken)?;
        let admin_token = read_secret(cli.admin_token_file.as_deref(), secrets.admin_token)?
            .ok_or(ConfigError::NoAdminToken)?;
        // The app name goes into Machines API paths and the fly-replay header.
        check(
            "runner app",
            &cli.runner_app,
            is_app_name(&cli.runner_app),
            "use 1 to 63 of a-z, 0-9 and '-'",
        )?;
        let runner_image = cli.runner_image.filter(|image| !image.is_empty());
        if let Some(image) = &runner_image {
            check(
                "runner image",
                image,
                !image.chars().any(char::is_whitespace),
                "must be an image reference without spaces",
            )?;
        }
        if let Some(region) = &cli.region {
            check(
                "region",
                region,
                !region.is_empty()
                    && region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "use a Fly region code such as ams",
            )?;
        }
        check(
            "volume name",
            &cli.volume_name,
            (1..=30).contains(&cli.volume_name.len())
                && cli
                    .volume_name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "Fly volume names are 1 to 30 of a-z, 0-9 and '_'",
        )?;
        check(
            "mount path",
            &cli.mount_path,
            cli.mount_path.starts_with('/') && cli.mount_path.len() > 1,
            "must be an absolute path other than /",
        )?;
        let default_size = Size {
            cpu_kind: cli.cpu_kind,
            cpus: cli.cpus,
            memory_mb: cli.memory_mb,
        };
        if let Err(why) = default_size.check() {
            return Err(ConfigError::Invalid {
                what: "default machine size",
                value: format!("{} cpus, {} MB", cli.cpus, cli.memory_mb),
                why,
            });
        }
        let mut extra_env = BTreeMap::new();
        for (key, value) in cli.runner_env {
            check(
                "runner env name",
                &key,
                ![ENV_REPO, ENV_MODE, ENV_AGENT].contains(&key.as_str()),
                "set by the coordinator for each agent",
            )?;
            extra_env.insert(key, value);
        }
        if let Some(app) = cli.app_name.filter(|app| !app.is_empty()) {
            check(
                "coordinator app",
                &app,
                is_app_name(&app),
                "use 1 to 63 of a-z, 0-9 and '-'",
            )?;
            let hosts = extra_env
                .entry(ENV_RUNNER_ALLOWED_HOSTS.to_owned())
                .or_default();
            for name in [format!("{app}.flycast"), format!("{app}.internal")] {
                if !hosts.split(',').any(|host| host == name) {
                    if !hosts.is_empty() {
                        hosts.push(',');
                    }
                    hosts.push_str(&name);
                }
            }
        }
        check(
            "wake timeout",
            &cli.wake_timeout_secs.to_string(),
            cli.wake_timeout_secs >= 1,
            "must be at least 1 second",
        )?;
        check(
            "API timeout",
            &cli.api_timeout_secs.to_string(),
            cli.api_timeout_secs >= 1,
            "must be at least 1 second",
        )?;
        Ok(Self {
            listen: cli.listen,
            api_base: cli.api_base,
            runner_app: cli.runner_app,
            token,
            admin_token,
            backoff: Backoff {
                retries: cli.api_retries,
                base: Duration::from_millis(cli.retry_base_ms),
                cap: Duration::from_millis(cli.retry_cap_ms.max(cli.retry_base_ms)),
            },
            runner: RunnerSettings {
                image: runner_image,
                default_size,
                region: cli.region,
                volume_name: cli.volume_name,
                volume_size_gb: cli.volume_size_gb.max(1),
                mount_path: cli.mount_path,
                internal_port: cli.runner_port,
                service_port: cli.service_port,
                extra_env,
            },
            timeouts: Timeouts {
                wake: Duration::from_secs(cli.wake_timeout_secs),
                api: Duration::from_secs(cli.api_timeout_secs),
            },
        })
    }
}

/// A credential from its file if one is named, else from the environment;
/// `None` when neither holds one. Surrounding whitespace is not part of it.
fn read_secret(
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
                path: path.to_path_buf(),
                source,
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(ConfigError::EmptyTokenFile(path.to_path_buf()));
            }
            Ok(Some(Secret::new(token)))
        }
        None => Ok(env
            .map(|token| token.trim().to_owned())
            .filter(|token| !token.is_empty())
            .map(Secret::new)),
    }
}

fn check(what: &'static str, value: &str, ok: bool, why: &'static str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            what,
            value: value.to_owned(),
            why,
        })
    }
}

fn is_app_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_env_pair(pair: &str) -> Result<(String, String), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
    let mut bytes = key.bytes();
    let valid = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!("{key:?} is not an environment variable name"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGS: [&str; 5] = [
        "fly-coordinator",
        "--runner-app",
        "runners",
        "--runner-image",
        "registry.fly.io/runners:1",
    ];

    fn cli(extra: &[&str]) -> Cli {
        Cli::try_parse_from(ARGS.iter().chain(extra)).unwrap()
    }

    fn secrets(api: Option<&str>, admin: Option<&str>) -> EnvSecrets {
        EnvSecrets {
            fly_api_token: api.map(str::to_owned),
            admin_token: admin.map(str::to_owned),
        }
    }

    fn both() -> EnvSecrets {
        secrets(Some("t"), Some("admin"))
    }

    #[test]
    fn debug_output_never_shows_the_tokens() {
        let config = Config::from_cli(
            cli(&[]),
            secrets(Some("fo1_sentinel-token"), Some("admin-sentinel")),
        )
        .unwrap();
        let debug = format!("{config:?} {:?}", config.token);
        assert!(!debug.contains("sentinel"), "{debug}");
        assert!(debug.contains("Secret(***)"));
        assert_eq!(config.token.expose(), "fo1_sentinel-token");
        assert_eq!(config.admin_token.expose(), "admin-sentinel");
    }

    #[test]
    fn both_tokens_are_required() {
        for token in [None, Some(""), Some("  \n")] {
            let error = Config::from_cli(cli(&[]), secrets(token, Some("admin"))).unwrap_err();
            assert!(matches!(error, ConfigError::NoToken), "{error}");
            assert!(error.to_string().contains("FLY_API_TOKEN"));
            let error = Config::from_cli(cli(&[]), secrets(Some("t"), token)).unwrap_err();
            assert!(matches!(error, ConfigError::NoAdminToken), "{error}");
            assert!(error.to_string().contains("COORDINATOR_TOKEN"));
        }
    }

    #[test]
    fn token_files_win_and_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let path = path.to_str().unwrap();
        let config = Config::from_cli(cli(&["--token-file", path]), both()).unwrap();
        assert_eq!(config.token.expose(), "from-file");
        let config = Config::from_cli(cli(&["--admin-token-file", path]), both()).unwrap();
        assert_eq!(config.admin_token.expose(), "from-file");
        std::fs::write(dir.path().join("token"), "\n").unwrap();
        let error = Config::from_cli(cli(&["--token-file", path]), both()).unwrap_err();
        assert!(matches!(error, ConfigError::EmptyTokenFile(_)), "{error}");
        let error = Config::from_cli(cli(&["--admin-token-file", path]), both()).unwrap_err();
        assert!(matches!(error, ConfigError::EmptyTokenFile(_)), "{error}");
    }

    /// A replayed request keeps the Host it was sent to the coordinator
    /// with, so the runner must accept the coordinator's private names.
    #[test]
    fn runners_accept_the_coordinators_names() {
        let config = Config::from_cli(cli(&["--app-name", "coord"]), both()).unwrap();
        assert_eq!(
            config.runner.extra_env[ENV_RUNNER_ALLOWED_HOSTS],
            "coord.flycast,coord.internal"
        );
        let config = Config::from_cli(
            cli(&[
                "--app-name",
                "coord",
                "--runner-env",
                "AGENT_RUNNER_ALLOWED_HOSTS=agents.example,coord.flycast",
            ]),
            both(),
        )
        .unwrap();
        assert_eq!(
            config.runner.extra_env[ENV_RUNNER_ALLOWED_HOSTS],
            "agents.example,coord.flycast,coord.internal"
        );
        let config = Config::from_cli(cli(&[]), both()).unwrap();
        assert!(
            !config
                .runner
                .extra_env
                .contains_key(ENV_RUNNER_ALLOWED_HOSTS)
        );
        assert!(Config::from_cli(cli(&["--app-name", "Coord/x"]), both()).is_err());
    }

    #[test]
    fn values_that_reach_urls_and_headers_are_checked() {
        let token = both;
        let bad_app = Cli::try_parse_from([
            "fly-coordinator",
            "--runner-app",
            "Runners/../x",
            "--runner-image",
            "img",
        ])
        .unwrap();
        assert!(Config::from_cli(bad_app, token()).is_err());
        assert!(Config::from_cli(cli(&["--volume-name", "work-tree"]), token()).is_err());
        assert!(Config::from_cli(cli(&["--memory-mb", "1000"]), token()).is_err());
        assert!(Config::from_cli(cli(&["--runner-env", "WORKTREE_REPO=x"]), token()).is_err());
        assert!(Cli::try_parse_from(ARGS.iter().chain(&["--runner-env", "1X=y"])).is_err());
        let config = Config::from_cli(cli(&["--runner-env", "A=1;B=x=y,z"]), token()).unwrap();
        assert_eq!(config.runner.extra_env["A"], "1");
        assert_eq!(config.runner.extra_env["B"], "x=y,z");
    }

    /// fly.toml's service must point at the port the coordinator listens on,
    /// and the Dockerfile it deploys must exist.
    #[test]
    fn fly_toml_matches_the_defaults() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(dir.join("fly.toml")).unwrap();
        let fly: toml::Table = toml::from_str(&text).unwrap();
        let service = fly["http_service"].as_table().unwrap();
        let listen: SocketAddr = DEFAULT_LISTEN.parse().unwrap();
        assert_eq!(
            service["internal_port"].as_integer(),
            Some(i64::from(listen.port()))
        );
        assert_eq!(service["auto_stop_machines"].as_str(), Some("off"));
        assert!(service["min_machines_running"].as_integer() >= Some(1));
        // Flycast is plain HTTP: force_https would refuse every request.
        assert_ne!(
            service.get("force_https").and_then(toml::Value::as_bool),
            Some(true)
        );
        // The image: fly.toml's [build] names the Dockerfile (relative to
        // fly.toml, as flyctl resolves it) and its target.
        let build = fly["build"].as_table().unwrap();
        let dockerfile =
            std::fs::read_to_string(dir.join(build["dockerfile"].as_str().unwrap())).unwrap();
        assert!(dockerfile.contains("-p coordinator --bin fly-coordinator"));
        let target = build["build-target"].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!("AS {target}")),
            "no stage {target}"
        );
    }
}
