//! The images `fly/images/build` makes, booted as local-fly machines (their
//! root filesystems, entrypoints, environment and users), on this host:
//! git-nfsd as two machines over the same upstream, seeded by their
//! entrypoints from `STORE_REPOS` on a fresh volume each, serving NFS on
//! their private addresses and through Flycast; a relay in front of both
//! carrying a client through the loss of the one it used; the coordinator
//! image answering as its `USER`; the agent-runner image as the runner
//! app's release machine (no worktree: mounting one needs a kernel NFS
//! client, which this host's kernel lacks).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::fixture::{self, git};
use integration::local_fly::{LocalFly, built_image, fly_toml};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "images-api-token";
const NFSD: &str = "lazy-worktree-nfsd";
const COORDINATOR: &str = "lazy-worktree-coordinator";
const AGENTS: &str = "lazy-worktree-agents";

/// `git daemon` serving a folder of bare repositories on every address.
struct GitDaemon(Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `machine` answers NFS on its private address, then MOUNTs.
fn mount_when_serving(address: std::net::SocketAddr, export: &str) -> RpcClient {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok() {
            let mut client = RpcClient::connect(address);
            if client.mount(export).is_ok() {
                return RpcClient::connect(address);
            }
        }
        assert!(
            Instant::now() < deadline,
            "git-nfsd at {address} never served {export}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_boot_as_machines() {
    let nfsd_image = built_image(
        "git-nfsd",
        "registry.fly.io/lazy-worktree-nfsd:deployment-1",
    );
    let coordinator_image = built_image(
        "coordinator",
        "registry.fly.io/lazy-worktree-coordinator:deployment-1",
    );
    let agents_image = built_image(
        "agent-runner",
        "registry.fly.io/lazy-worktree-agents:deployment-1",
    );

    // The upstream the store mirrors, served by git daemon on the host,
    // which machines reach as _api.internal (the host's private address).
    let upstream_root = tempfile::tempdir_in(integration::target_dir()).expect("tempdir");
    let upstream = upstream_root.path().join("app.git");
    git(
        upstream_root.path(),
        &[
            "clone",
            "--quiet",
            "--bare",
            &fixture::store().join("app.git").display().to_string(),
            &upstream.display().to_string(),
        ],
    );
    let port = free_port();
    let daemon = GitDaemon(
        Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=::"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", upstream_root.path().display()))
            .arg(upstream_root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon"),
    );

    let spec = format!(
        "api_token = \"{TOKEN}\"\n\n{nfsd_image}{coordinator_image}{agents_image}\
         [[apps]]\nfly_toml = {nfsd_toml}\nimage = \"registry.fly.io/lazy-worktree-nfsd:deployment-1\"\n\
         secrets = {{ STORE_REPOS = \"app=git://_api.internal:{port}/app.git\" }}\n\
         env = {{ STORE_SYNC_INTERVAL = \"0\" }}\n\n\
         [[apps]]\nfly_toml = {coordinator_toml}\nimage = \"registry.fly.io/lazy-worktree-coordinator:deployment-1\"\n\
         secrets = {{ FLY_API_TOKEN = \"{TOKEN}\", COORDINATOR_TOKEN = \"admin\" }}\n\
         env = {{ FLY_API_BASE = \"http://_api.internal:4280\" }}\n\n\
         [[apps]]\nfly_toml = {agents_toml}\nimage = \"registry.fly.io/lazy-worktree-agents:deployment-1\"\n\
         secrets = {{ AGENT_RUNNER_TOKEN = \"runner-token\" }}\n\
         env = {{ AGENT_RUNNER_IDLE_AFTER = \"0\", CODEX_API_KEY_ENV = \"\" }}\n",
        nfsd_toml = fly_toml("git-nfsd"),
        coordinator_toml = fly_toml("coordinator"),
        agents_toml = fly_toml("agent-runner"),
    );
    let fly = LocalFly::start(&spec, TOKEN);

    // The first deploy made one git-nfsd machine with its own volume; its
    // entrypoint mirrored the upstream into it and serves it.
    let machines = fly.machines(NFSD).await;
    assert_eq!(machines.len(), 1);
    let first = machines[0].clone();
    // A second machine like it, with a volume of its own (what `fly scale
    // count 2` does), seeded the same way.
    let (status, volume) = fly
        .api(
            Method::POST,
            &format!("/v1/apps/{NFSD}/volumes"),
            Some(json!({"name": "store", "size_gb": 1})),
        )
        .await;
    assert_eq!(status, 200, "{volume}");
    let mut config = first["config"].clone();
    config["mounts"][0]["volume"] = volume["id"].clone();
    let (status, second) = fly
        .api(
            Method::POST,
            &format!("/v1/apps/{NFSD}/machines"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(status, 200, "{second}");

    let address = |machine: &Value| -> std::net::SocketAddr {
        let ip: std::net::Ipv6Addr = machine["private_ip"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .expect("a private address");
        std::net::SocketAddr::new(ip.into(), 2049)
    };
    let (first_address, second_address) = (address(&first), address(&second));
    let reads = tokio::task::spawn_blocking(move || {
        let mut readme = Vec::new();
        for address in [first_address, second_address] {
            let mut client = mount_when_serving(address, "/app@main");
            let root = client.mount("/app@main").expect("mount");
            let file = client.walk(&root, "README.md").expect("walk");
            readme.push((
                root,
                file.clone(),
                client.read_all(&file, 4096).expect("read"),
            ));
        }
        readme
    })
    .await
    .expect("reads");
    assert_eq!(reads[0].2, reads[1].2, "both replicas serve the same file");
    assert_eq!(
        reads[0].0.data, reads[1].0.data,
        "handles agree across replicas"
    );
    drop(daemon);

    // Flycast reaches them too (raw TCP through the proxy).
    let flycast = std::net::SocketAddr::new(fly.flycast[NFSD].into(), 2049);
    let via_proxy = tokio::task::spawn_blocking(move || {
        let mut client = RpcClient::connect(flycast);
        client.mount("/app@main").is_ok()
    })
    .await
    .expect("flycast");
    assert!(via_proxy, "git-nfsd through its Flycast address");

    // A relay in front of both: the client carries on when its replica
    // (the first) is stopped.
    let relay = Command::new(integration::workspace_bin("git-nfsd"))
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--connect-timeout-ms",
            "500",
        ])
        .args(["--upstream", &first_address.to_string()])
        .args(["--upstream", &second_address.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("relay");
    let mut relay = RelayChild(relay);
    let relay_address = {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(relay.0.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("banner");
        line.strip_prefix("git-nfsd relay listening on ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .expect("the relay's address")
    };
    let (_, file, bytes) = reads[0].clone();
    let first_id = first["id"].as_str().expect("id").to_owned();
    let before = tokio::task::spawn_blocking(move || {
        let mut client = RpcClient::connect(relay_address);
        client
            .read_all(&file, 4096)
            .expect("read through the relay")
    })
    .await
    .expect("read");
    assert_eq!(before, bytes);
    let (status, body) = fly
        .api(
            Method::POST,
            &format!("/v1/apps/{NFSD}/machines/{first_id}/stop"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    fly.wait_state(NFSD, &first_id, "stopped", Duration::from_secs(60))
        .await;
    let (_, file, bytes) = reads[0].clone();
    let after = tokio::task::spawn_blocking(move || {
        let mut client = RpcClient::connect(relay_address);
        client.read_all(&file, 4096).expect("read after the stop")
    })
    .await
    .expect("read");
    assert_eq!(after, bytes, "the same handle, served by the other replica");

    // The coordinator image: it runs as its USER, answers its health
    // check, and refuses management without its token.
    let coordinator = fly.machines(COORDINATOR).await;
    let coordinator_id = coordinator[0]["id"].as_str().expect("id").to_owned();
    let http = fly.http();
    let health = http
        .get(format!("http://{COORDINATOR}.flycast/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let refused = http
        .put(format!("http://{COORDINATOR}.flycast/agents/a"))
        .json(&json!({"repo": "app@main", "mode": "rw"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(refused.status(), 401);
    let log = fly.machine_log(&coordinator_id).await;
    assert!(log.contains("listening"), "{log}");
    let user = Command::new("sh")
        .arg("-c")
        .arg("ps -o user= -C fly-coordinator | sort -u; true")
        .output()
        .expect("ps");
    let users = String::from_utf8_lossy(&user.stdout).into_owned();
    assert!(
        users
            .lines()
            .any(|u| u.trim() == "nobody" || u.trim() == "65534"),
        "the coordinator does not run as nobody: {users:?}"
    );

    release_machine_runs_the_runner(&fly).await;
}

/// The runner app's release machine runs the agent-runner image's
/// entrypoint: the runner answers on its private address through the
/// proxy, names its machine, and keeps its token.
async fn release_machine_runs_the_runner(fly: &LocalFly) {
    let machines = fly.machines(AGENTS).await;
    assert_eq!(machines.len(), 1);
    let id = machines[0]["id"].as_str().expect("id").to_owned();
    let http = fly.http();
    let health: Value = http
        .get(format!("http://{AGENTS}.flycast/healthz"))
        .header("fly-force-instance-id", &id)
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health["machine_id"], id.as_str(), "{health}");
    let unauthenticated = http
        .get(format!("http://{AGENTS}.flycast/live"))
        .header("fly-force-instance-id", &id)
        .send()
        .await
        .expect("live");
    assert_eq!(
        unauthenticated.status(),
        401,
        "the runner's token is required"
    );
    let screen = http
        .get(format!("http://{AGENTS}.flycast/screen"))
        .header("fly-force-instance-id", &id)
        .bearer_auth("runner-token")
        .send()
        .await
        .expect("screen");
    assert!(
        ![401, 403].contains(&screen.status().as_u16()),
        "the runner refused its token or its app's Flycast name: {}",
        screen.status()
    );
}

struct RelayChild(Child);

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
