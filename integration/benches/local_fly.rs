//! Figures of the deploy path on a local Fly on this host (`local-fly`,
//! needs root), printed as a table:
//! `cargo build --release --bins && sudo cargo bench -p integration --bench local_fly`.
//!
//! - create -> `start` answered: `PUT /agents/NAME` through the coordinator
//!   (volume, machine, boot) until MCP `start` through the coordinator's
//!   replay has answered;
//! - wake -> first byte of `/live`: a suspended agent's `/live` through the
//!   coordinator (wake, replay);
//! - the replay's cost: `GET /healthz` of one runner through the
//!   coordinator's replay vs straight to the runner app's Flycast address
//!   pinned with `fly-force-instance-id` (the same proxy, no coordinator);
//! - how agents reach git-nfsd: NFS GETATTR round trips and a whole-file
//!   READ through git-nfsd's Flycast address (the proxy's TCP passthrough)
//!   vs its machine's own address (`.internal`).
//!
//! Host-mode machines (the host's own files as their images): the figures
//! are the platform's and the apps', not an image pull's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration::client::RpcClient;
use integration::fixture;
use integration::local_fly::{LocalFly, fly_toml, toml_string};
use integration::report::{Table, median, percentile};
use integration::runner::repl_agent;
use reqwest::Method;
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const API_TOKEN: &str = "bench-api-token";
const ADMIN: &str = "bench-admin";
const COORDINATOR: &str = "lazy-worktree-coordinator";
const AGENTS: &str = "lazy-worktree-agents";
const NFSD: &str = "lazy-worktree-nfsd";
const RUNS: usize = 9;
const REQUESTS: usize = 300;

fn spec() -> String {
    let bin = integration::workspace_bin("agent-runner");
    let bin_dir = bin.parent().expect("target dir").display().to_string();
    let runner = format!(
        "mkdir -p /data/captures && exec agent-runner serve --listen '[::]:8080' --cwd /tmp \
         --capture-dir /data/captures --enter-delay-ms 20 --command {}",
        repl_agent().display()
    );
    let nfsd = format!(
        "exec git-nfsd serve --store {} --listen '[::]:2049' --allow fdaa::/16",
        fixture::store().display()
    );
    let path = format!("{bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    format!(
        "api_token = \"{API_TOKEN}\"\n\n\
         [[images]]\nreference = \"coordinator:1\"\nroot = \"/\"\nentrypoint = [{coordinator}]\n\n\
         [[images]]\nreference = \"agents:1\"\nroot = \"/\"\nentrypoint = [\"/bin/sh\", \"-c\", {runner}]\nenv = {{ PATH = {path} }}\n\n\
         [[images]]\nreference = \"nfsd:1\"\nroot = \"/\"\nentrypoint = [\"/bin/sh\", \"-c\", {nfsd}]\nenv = {{ PATH = {path} }}\n\n\
         [[apps]]\nfly_toml = {coordinator_toml}\nimage = \"coordinator:1\"\n\
         secrets = {{ FLY_API_TOKEN = \"{API_TOKEN}\", COORDINATOR_TOKEN = \"{ADMIN}\" }}\n\
         env = {{ FLY_API_BASE = \"http://_api.internal:4280\", RUNNER_ENV = \"AGENT_RUNNER_IDLE_AFTER=0;RUST_LOG=warn\", RUST_LOG = \"warn\" }}\n\n\
         [[apps]]\nfly_toml = {agents_toml}\nimage = \"agents:1\"\nenv = {{ AGENT_RUNNER_IDLE_AFTER = \"0\", RUST_LOG = \"warn\" }}\n\n\
         [[apps]]\nfly_toml = {nfsd_toml}\nimage = \"nfsd:1\"\n",
        coordinator = toml_string(
            &integration::workspace_bin("fly-coordinator")
                .display()
                .to_string()
        ),
        runner = toml_string(&runner),
        nfsd = toml_string(&nfsd),
        path = toml_string(&path),
        coordinator_toml = fly_toml("coordinator"),
        agents_toml = fly_toml("agent-runner"),
        nfsd_toml = fly_toml("git-nfsd"),
    )
}

fn url(path: &str) -> String {
    format!("http://{COORDINATOR}.flycast{path}")
}

async fn mcp(
    fly: &LocalFly,
    agent: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ClientConfig> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(url(&format!("/agents/{agent}/mcp")));
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::with_client(
            fly.http(),
            config,
        ))
        .await
        .expect("MCP through the coordinator")
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fly = LocalFly::start(&spec(), API_TOKEN);
    let http = fly.http();
    let mut table = Table::new(
        "The deploy path on a local Fly (host-mode machines; medians)",
        &["what", "median", "p99 / note"],
    );

    // create -> start answered.
    let mut creates = Vec::new();
    for run in 0..RUNS {
        let agent = format!("bench-{run}");
        let started = Instant::now();
        let response = http
            .put(url(&format!("/agents/{agent}")))
            .bearer_auth(ADMIN)
            .json(&json!({"repo": "app@main", "mode": "rw"}))
            .send()
            .await
            .expect("PUT");
        assert_eq!(response.status(), 201, "{}", fly.log());
        let service = mcp(&fly, &agent).await;
        let result = service
            .call_tool(CallToolRequestParams::new("start"))
            .await
            .expect("start");
        assert_ne!(result.is_error, Some(true), "{result:?}");
        creates.push(started.elapsed());
        drop(service);
    }
    table.row(vec![
        "create -> `start` answered".into(),
        secs(median(creates)),
        format!("{RUNS} agents"),
    ]);

    // wake -> first byte of /live.
    let machine = |agent: &str| {
        let http = http.clone();
        let agent = agent.to_owned();
        async move {
            let described: Value = http
                .get(url(&format!("/agents/{agent}")))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("describe")
                .json()
                .await
                .expect("JSON");
            described["machine"].as_str().expect("machine").to_owned()
        }
    };
    let mut wakes = Vec::new();
    for run in 0..RUNS {
        let agent = format!("bench-{run}");
        let id = machine(&agent).await;
        let (status, body) = fly
            .api(
                Method::POST,
                &format!("/v1/apps/{AGENTS}/machines/{id}/suspend"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        fly.wait_state(AGENTS, &id, "suspended", Duration::from_secs(30))
            .await;
        let started = Instant::now();
        let mut response = http
            .get(url(&format!("/agents/{agent}/live")))
            .send()
            .await
            .expect("live");
        assert_eq!(response.status(), 200);
        let _ = response.chunk().await.expect("first bytes");
        wakes.push(started.elapsed());
    }
    table.row(vec![
        "wake (suspended) -> first byte of `/live`".into(),
        secs(median(wakes)),
        format!("{RUNS} agents"),
    ]);

    // The replay's cost per request.
    let id = machine("bench-0").await;
    let time_requests = async |pinned: bool| {
        let mut times = Vec::new();
        for _ in 0..REQUESTS {
            let request = if pinned {
                http.get(format!("http://{AGENTS}.flycast/healthz"))
                    .header("fly-force-instance-id", &id)
            } else {
                http.get(url("/agents/bench-0/healthz"))
            };
            let started = Instant::now();
            let response = request.send().await.expect("healthz");
            assert_eq!(response.status(), 200);
            let _ = response.bytes().await;
            times.push(started.elapsed());
        }
        times.sort();
        times
    };
    let direct = time_requests(true).await;
    let replayed = time_requests(false).await;
    let (direct_median, replayed_median) = (median(direct.clone()), median(replayed.clone()));
    table.row(vec![
        "`GET /healthz` pinned with fly-force-instance-id".into(),
        ms(direct_median),
        ms(percentile(&direct, 0.99)),
    ]);
    table.row(vec![
        "`GET /healthz` through the coordinator's replay".into(),
        ms(replayed_median),
        ms(percentile(&replayed, 0.99)),
    ]);
    table.row(vec![
        "the replay's cost per request".into(),
        ms(replayed_median.saturating_sub(direct_median)),
        format!(
            "{:.1}x the pinned request",
            replayed_median.as_secs_f64() / direct_median.as_secs_f64()
        ),
    ]);

    // Flycast vs .internal for NFS.
    let nfsd_machines = fly.machines(NFSD).await;
    let nfsd_ip: std::net::Ipv6Addr = nfsd_machines[0]["private_ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("git-nfsd's address");
    let flycast = SocketAddr::new(fly.flycast[NFSD].into(), 2049);
    let internal = SocketAddr::new(nfsd_ip.into(), 2049);
    let nfs = |address: SocketAddr| {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = loop {
                if std::net::TcpStream::connect(address).is_ok() {
                    break RpcClient::connect(address);
                }
                assert!(Instant::now() < deadline, "git-nfsd never listened");
                std::thread::sleep(Duration::from_millis(100));
            };
            let root = client.mount("/app@main").expect("mount");
            let file = client.walk(&root, "README.md").expect("walk");
            let mut calls = Vec::new();
            for _ in 0..2000 {
                let started = Instant::now();
                client.getattr(&file).expect("getattr");
                calls.push(started.elapsed());
            }
            calls.sort();
            let big = client.walk(&root, "big/random.bin").ok();
            let read = big.map(|big| {
                let started = Instant::now();
                let bytes = client.read_all(&big, 1 << 20).expect("read").len();
                (bytes, started.elapsed())
            });
            (calls, read)
        })
    };
    let (through_proxy, proxy_read) = nfs(flycast).await.expect("flycast");
    let (direct_nfs, direct_read) = nfs(internal).await.expect("internal");
    for (what, calls, read) in [
        (
            "NFS GETATTR via Flycast (proxy TCP)",
            &through_proxy,
            proxy_read,
        ),
        (
            "NFS GETATTR via .internal (direct)",
            &direct_nfs,
            direct_read,
        ),
    ] {
        let note = match read {
            Some((bytes, took)) => format!(
                "p99 {}; READ of {} MB at {:.0} MB/s",
                ms(percentile(calls, 0.99)),
                bytes >> 20,
                bytes as f64 / 1e6 / took.as_secs_f64()
            ),
            None => format!("p99 {}", ms(percentile(calls, 0.99))),
        };
        table.row(vec![what.into(), ms(median(calls.clone())), note]);
    }
    table.row(vec![
        "Flycast / .internal GETATTR".into(),
        format!(
            "{:.2}x",
            median(through_proxy).as_secs_f64() / median(direct_nfs).as_secs_f64()
        ),
        "the proxy's hop; and every agent is one client to git-nfsd".into(),
    ]);
    table.print();
}
