//! The `git-nfsd` binary: command line, wiring and signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use nfs_server::fs::{Filesystem, Owner};
use nfs_server::metrics::{self, Metrics};
use nfs_server::server::{AccessList, ExportRule, Limits, Server};
use nfs_server::store::{Spill, Store};
use tokio_util::sync::CancellationToken;

/// Serve git repositories as lazy, read-only NFSv3 worktrees.
///
/// Without a subcommand, serves the git repository around the current
/// directory and prints the mount command to use.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a store of repositories (the default command).
    Serve(ServeArgs),
    /// Relay an agent machine's NFS connections to whichever git-nfsd
    /// replica answers: the name is looked up again for every connection,
    /// so a mount carries on through another replica when its own stops.
    Relay(RelayArgs),
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Where the kernel's NFS client connects (mount port=N,mountport=N).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:2049")]
    listen: SocketAddr,

    /// git-nfsd's replicas: a name and port (on Fly `APP.internal:2049`,
    /// every started machine, each seeing this machine's own address).
    /// Repeatable: tried in order.
    #[arg(long = "upstream", value_name = "HOST:PORT", required = true)]
    upstreams: Vec<nfs_server::relay::Upstream>,

    /// How long one replica may take to accept before the next is tried.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    connect_timeout_ms: u64,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory of repositories: bare `NAME.git` and non-bare `NAME/.git`,
    /// in nested folders too (`org/app.git` exports as `/org/app`). Without
    /// it, the repository around the current directory is served.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,

    /// Address for NFS, MOUNT, NFSACL and portmapper calls (all one TCP port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:2049")]
    listen: SocketAddr,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,

    /// Owner of every exported file; give the agent's uid so it owns its worktree.
    #[arg(long, value_name = "N", default_value_t = 0)]
    uid: u32,

    /// Group of every exported file.
    #[arg(long, value_name = "N", default_value_t = 0)]
    gid: u32,

    /// Memory for caches, in bytes: decoded blobs (1/2), synthesized
    /// indexes (1/4), tree tables (1/4).
    #[arg(long, value_name = "N", default_value_t = 256 << 20)]
    cache_bytes: u64,

    /// Where blobs too large for the memory cache (over an eighth of its
    /// blob half) are decoded to, once, and read from: a folder on local
    /// disk (default: the system's temp dir). A new subfolder is made and
    /// removed on exit.
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,

    /// Disk for spilled blobs, in bytes; the least recently read go first.
    #[arg(long, value_name = "N", default_value_t = 4 << 30)]
    spill_bytes: u64,

    /// Largest RPC record a client may send, in bytes.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_record_bytes)]
    max_record_bytes: usize,

    /// Calls of one connection answered at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_in_flight)]
    max_in_flight: usize,

    /// Client address range allowed to call (repeatable), e.g. 10.0.0.0/8.
    /// Default: loopback, plus Fly's private network fdaa::/16 when
    /// FLY_APP_NAME is set. Other clients get an RPC authentication error.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<ipnet::IpNet>,

    /// Narrow which repositories a client range may use (repeatable):
    /// `CIDR=GLOB`, e.g. `10.1.0.0/16=org/*` (`*` stays within one path
    /// component, `**` spans several). With any rule, a client may mount
    /// or reach by handle only the repositories a rule covering its address
    /// names; others get MNT3ERR_ACCES or NFS3ERR_ACCES.
    #[arg(long = "export-allow", value_name = "CIDR=GLOB")]
    export_allow: Vec<ExportRule>,

    /// Refuse clients whose source port is not privileged (>= 1024), so that
    /// only root on an allowed machine can connect (like knfsd's `secure`).
    #[arg(long)]
    require_privileged_port: bool,

    /// Open client connections allowed at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,

    /// Open connections allowed from one client address at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections_per_client)]
    max_connections_per_client: usize,

    /// Seconds a connection may stay silent with no call in flight before
    /// it is closed.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,

    /// Seconds a started record may take to arrive in full.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().record_timeout.as_secs())]
    record_timeout_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Fly's log pipeline (and any file) shows escape codes as they are.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Some(Command::Serve(args)) => runtime.block_on(serve(args)),
        Some(Command::Relay(args)) => runtime.block_on(relay(args)),
        None => runtime.block_on(serve(cli.serve)),
    }
}

async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let relay = nfs_server::relay::Relay::bind(
        args.listen,
        args.upstreams.clone(),
        std::time::Duration::from_millis(args.connect_timeout_ms),
    )
    .await
    .with_context(|| format!("listening on {}", args.listen))?;
    let upstreams: Vec<String> = args.upstreams.iter().map(ToString::to_string).collect();
    say(&format!(
        "git-nfsd relay listening on {}, relaying to {}\n",
        relay.local_addr()?,
        upstreams.join(", ")
    ));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
    });
    relay.run(shutdown).await;
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.cache_bytes < 1 << 20 {
        bail!("--cache-bytes must be at least 1048576 (1 MiB)");
    }
    if args.idle_timeout_secs == 0 || args.record_timeout_secs == 0 {
        bail!("--idle-timeout-secs and --record-timeout-secs must be at least 1");
    }
    if args.max_in_flight == 0
        || args.max_connections == 0
        || args.max_connections_per_client == 0
        || args.max_record_bytes < 4096
    {
        bail!(
            "--max-in-flight, --max-connections and --max-connections-per-client must be positive, --max-record-bytes at least 4096"
        );
    }
    let store = match &args.store {
        Some(dir) => {
            Store::open_dir(dir).with_context(|| format!("opening the store {}", dir.display()))?
        }
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let (name, path) = repository_around(&cwd)?;
            Store::single(name, path)?
        }
    };
    let store = Arc::new(store);
    if let (Some(dir), true) = (&args.store, store.index().is_empty()) {
        tracing::warn!(
            store = %dir.display(),
            "the store holds no repository yet (expected NAME.git or NAME/.git); \
             repositories added later are found on their first MOUNT"
        );
    }
    let exports: Vec<String> = store.index().names().map(|n| format!("/{n}")).collect();
    let metrics = Arc::new(Metrics::new());
    let spill_dir = args.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spill = Spill::in_dir(&spill_dir, args.spill_bytes)
        .with_context(|| format!("making a spill folder in {}", spill_dir.display()))?;
    let fs = Arc::new(Filesystem::new(
        Arc::clone(&store),
        Owner {
            uid: args.uid,
            gid: args.gid,
        },
        args.cache_bytes,
        spill,
        Arc::clone(&metrics),
    ));
    let limits = Limits {
        max_record_bytes: args.max_record_bytes,
        max_in_flight: args.max_in_flight,
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout_secs),
        record_timeout: std::time::Duration::from_secs(args.record_timeout_secs),
    };
    let access = if args.allow.is_empty() {
        AccessList::default_for_environment(std::env::var_os("FLY_APP_NAME").is_some())
    } else {
        AccessList::new(args.allow.clone())
    }
    .require_privileged_port(args.require_privileged_port)
    .with_export_rules(args.export_allow.clone());
    let rules: Vec<String> = access
        .export_rules()
        .iter()
        .map(|r| r.to_string())
        .collect();
    tracing::info!(allowed = ?access.ranges(), export_rules = ?rules, "access");
    let server = Server::bind(args.listen, fs, Arc::clone(&metrics), limits, access)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = server.local_addr()?;
    let shutdown = CancellationToken::new();

    if let Some(metrics_addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("listening for metrics on {metrics_addr}"))?;
        say(&format!(
            "metrics at http://{}/metrics\n",
            listener.local_addr()?
        ));
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) =
                metrics::serve(listener, metrics, async move { token.cancelled().await }).await
            {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }

    print_mount_help(addr, &exports);
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.run(shutdown).await;
    Ok(())
}

/// The repository containing `dir`, named after its folder.
fn repository_around(dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let repo = gix::discover(dir).with_context(|| {
        format!(
            "no git repository at or above {}; give --store DIR to serve a store",
            dir.display()
        )
    })?;
    let path = repo
        .workdir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo.git_dir().to_path_buf());
    let folder = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".git").unwrap_or(n).to_owned())
        .filter(|n| !n.is_empty() && !n.contains('@'))
        .unwrap_or_else(|| "repo".to_owned());
    Ok((folder, path))
}

/// Prints where the server listens and how to mount it. A closed stdout (the
/// log reader gone) must not take the server down, so errors are ignored
/// here, where `println!` would panic.
fn print_mount_help(addr: SocketAddr, exports: &[String]) {
    let host = if addr.ip().is_unspecified() {
        "SERVER".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let port = addr.port();
    let noun = if exports.len() == 1 {
        "repository"
    } else {
        "repositories"
    };
    let mut text = format!(
        "git-nfsd listening on {addr}, serving {} {noun}\n",
        exports.len()
    );
    if let Some(first) = exports.first() {
        let ipv6 = addr.is_ipv6() && !addr.ip().is_unspecified();
        text.push_str(&mount_help(&host, port, ipv6, first));
    }
    say(&text);
}

/// `ipv6`: the listening address is IPv6, so mount.nfs must be told to use
/// it (`proto=tcp` looks names and addresses up over IPv4 only).
fn mount_help(host: &str, port: u16, ipv6: bool, first: &str) -> String {
    let leaf = first.rsplit('/').next().unwrap_or("worktree");
    let proto = if ipv6 {
        "proto=tcp6,mountproto=tcp6"
    } else {
        "proto=tcp"
    };
    format!(
        "Mount a worktree (Linux, as root; add @BRANCH, @TAG or @COMMIT to pin another revision):\n\
         \x20 mkdir -p /mnt/{leaf}\n\
         \x20 mount -t nfs -o vers=3,{proto},port={port},mountport={port},nolock,ro,actimeo=3600 {host}:{first} /mnt/{leaf}\n\
         Or list it with libnfs: nfs-ls 'nfs://{host}{first}?nfsport={port}&mountport={port}&version=3'\n"
    )
}

/// Writes to stdout and flushes, ignoring a closed stdout.
fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
