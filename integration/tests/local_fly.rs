//! The coordinator and the runner across machines, on a local Fly on this
//! host (`local-fly`: network namespaces on an IPv6-only bridge, the
//! Machines API, the proxy with Fly's replay, deploys with machine checks),
//! configured from the apps' own `fly.toml` files and run with the real
//! `fly-coordinator` and `agent-runner` binaries.
//!
//! This host's kernel has no NFS client, so the agent images here run the
//! runner without a worktree (their entrypoint is `agent-runner` itself);
//! `kernel_local_fly` runs the images' real entrypoints, worktrees
//! mounted, in the QEMU guest.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::local_fly::{LocalFly, fly_toml, toml_string};
use integration::runner::repl_agent;
use reqwest::Method;
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const API_TOKEN: &str = "local-api-token";
const ADMIN_TOKEN: &str = "coordinator-admin-token";
const COORDINATOR: &str = "lazy-worktree-coordinator";
const AGENTS: &str = "lazy-worktree-agents";

/// A folder on the PATH of an agent image holding a `smoke-check` stand-in
/// that `ok`s or fails the deploy's machine check. The real check needs
/// codex and the kernel NFS client (the guest test runs it); this one
/// checks what a check machine can check here: that it reaches the
/// machine under test over the private network at FLY_TEST_MACHINE_IP.
fn smoke_check_stand_in(dir: &Path, passes: bool) -> String {
    let bin = dir.join(if passes {
        "check-passes"
    } else {
        "check-fails"
    });
    std::fs::create_dir_all(&bin).expect("stand-in folder");
    let script = if passes {
        r#"#!/bin/sh
# smoke-check stand-in: `runner URL` GETs URL/healthz; `puzzle` is the
# guest test's.
case "$1" in
runner) exec python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=10).read().decode())' "$2" ;;
*) echo "smoke-check stand-in: $1 runs in the guest test"; exit 0 ;;
esac
"#
    } else {
        "#!/bin/sh\necho 'smoke-check stand-in: this image is broken' >&2\nexit 1\n"
    };
    let path = bin.join("smoke-check");
    std::fs::write(&path, script).expect("write the stand-in");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    bin.display().to_string()
}

/// The spec: both apps from their fly.toml, the host's own files as their
/// images, the agents image in three versions (the first deployed, one
/// whose check fails, one whose check passes).
fn spec(dir: &Path) -> String {
    let bin = integration::workspace_bin("agent-runner");
    let bin_dir = bin.parent().expect("target dir").display().to_string();
    let path = |extra: &str| {
        format!("{extra}:{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    };
    let runner_command = format!(
        "mkdir -p /data/captures && exec agent-runner serve --listen '[::]:8080' --cwd /tmp \
         --capture-dir /data/captures --enter-delay-ms 20 --command {}",
        repl_agent().display()
    );
    let agent_image = |tag: &str, stand_in: &str| {
        format!(
            "[[images]]\nreference = \"registry.fly.io/{AGENTS}:{tag}\"\nroot = \"/\"\n\
             entrypoint = [\"/bin/sh\", \"-c\", {}]\nenv = {{ PATH = {} }}\n\n",
            toml_string(&runner_command),
            toml_string(&path(stand_in)),
        )
    };
    let passes = smoke_check_stand_in(dir, true);
    let fails = smoke_check_stand_in(dir, false);
    let runner_env = "WORKTREE_DIR=/workspace;DATA_DIR=/data;AGENT_RUNNER_IDLE_AFTER=3;\
                      AGENT_RUNNER_IDLE_ACTION=suspend;RUST_LOG=info,rmcp=warn";
    format!(
        "region = \"ams\"\napi_token = \"{API_TOKEN}\"\n\n\
         [[images]]\nreference = \"registry.fly.io/{COORDINATOR}:deployment-1\"\nroot = \"/\"\n\
         entrypoint = [{coordinator}]\n\n\
         {v1}{v2}{v3}\
         [[apps]]\nfly_toml = {coordinator_toml}\nimage = \"registry.fly.io/{COORDINATOR}:deployment-1\"\n\
         secrets = {{ FLY_API_TOKEN = \"{API_TOKEN}\", COORDINATOR_TOKEN = \"{ADMIN_TOKEN}\" }}\n\
         env = {{ FLY_API_BASE = \"http://_api.internal:4280\", RUNNER_ENV = {runner_env} }}\n\n\
         [[apps]]\nfly_toml = {agents_toml}\nimage = \"registry.fly.io/{AGENTS}:deployment-1\"\n\
         env = {{ AGENT_RUNNER_IDLE_AFTER = \"0\" }}\n",
        coordinator = toml_string(
            &integration::workspace_bin("fly-coordinator")
                .display()
                .to_string()
        ),
        v1 = agent_image("deployment-1", &passes),
        v2 = agent_image("deployment-2-broken", &fails),
        v3 = agent_image("deployment-3", &passes),
        coordinator_toml = fly_toml("coordinator"),
        agents_toml = fly_toml("agent-runner"),
        runner_env = toml_string(runner_env),
    )
}

fn coordinator_url(path: &str) -> String {
    format!("http://{COORDINATOR}.flycast{path}")
}

async fn manage(fly: &LocalFly, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = fly
        .http()
        .request(method, coordinator_url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("management call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An MCP session with the agent's runner through the coordinator's
/// replay: `http://<coordinator>.flycast/agents/NAME/mcp`.
async fn mcp_through_coordinator(
    fly: &LocalFly,
    agent: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ClientConfig> {
    let config = StreamableHttpClientTransportConfig::with_uri(coordinator_url(&format!(
        "/agents/{agent}/mcp"
    )));
    let transport = StreamableHttpClientTransport::with_client(fly.http(), config);
    ClientConfig::default()
        .serve(transport)
        .await
        .expect("MCP initialize through the coordinator")
}

async fn call(
    service: &rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>,
    tool: &str,
    args: Value,
) -> Value {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let result = service
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .expect("tools/call");
    assert_ne!(result.is_error, Some(true), "{tool} failed: {result:?}");
    result.structured_content.unwrap_or_default()
}

async fn live_text(fly: &LocalFly, agent: &str) -> (u16, String) {
    let response = fly
        .http()
        .get(coordinator_url(&format!(
            "/agents/{agent}/live?format=text"
        )))
        .send()
        .await
        .expect("GET /live through the coordinator");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn wait_for_live(fly: &LocalFly, agent: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = live_text(fly, agent).await;
        if status == 200 && text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached /live of {agent} ({status}):\n{text}\n{}",
            fly.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn agent_machine(body: &Value) -> String {
    body["machine"].as_str().expect("a machine id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_and_runners_across_machines() {
    let work = tempfile::tempdir_in(integration::target_dir()).expect("tempdir");
    let fly = LocalFly::start(&spec(work.path()), API_TOKEN);

    // Unauthenticated management is refused before any machine exists.
    let response = fly
        .http()
        .put(coordinator_url("/agents/alice"))
        .json(&json!({"repo": "app@main", "mode": "rw"}))
        .send()
        .await
        .expect("PUT");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let coordinators = fly.machines(COORDINATOR).await;
    let coordinator_log = match coordinators.first().and_then(|m| m["id"].as_str()) {
        Some(id) => fly.machine_log(id).await,
        None => "no coordinator machine".to_owned(),
    };
    assert_eq!(status, 401, "{body}\n{coordinator_log}\n{}", fly.log());
    assert_eq!(
        fly.machines(AGENTS).await.len(),
        1,
        "only the release machine"
    );

    // Two agents, made by the coordinator through the Machines API.
    let started = Instant::now();
    let (status, alice) = manage(
        &fly,
        Method::PUT,
        "/agents/alice",
        Some(json!({"repo": "app@main", "mode": "rw"})),
    )
    .await;
    assert_eq!(status, 201, "{alice}\n{}", fly.log());
    assert_eq!(
        alice["image"],
        format!("registry.fly.io/{AGENTS}:deployment-1")
    );
    let alice_machine = agent_machine(&alice);
    let (status, bob) = manage(
        &fly,
        Method::PUT,
        "/agents/bob",
        Some(json!({"repo": "lib@main", "mode": "rw", "memory_mb": 4096})),
    )
    .await;
    assert_eq!(status, 201, "{bob}");

    // start and message through the coordinator's replay: the runner
    // accepts the replayed request's Host (the coordinator's name).
    let service = mcp_through_coordinator(&fly, "alice").await;
    call(&service, "start", json!({})).await;
    let start_answered = started.elapsed();
    call(
        &service,
        "message",
        json!({"text": "hello across machines"}),
    )
    .await;
    wait_for_live(&fly, "alice", "got: 'hello across machines'").await;
    drop(service);

    // The Host the runner saw was the coordinator's; it refuses others.
    let response = fly
        .http()
        .get(format!(
            "http://[{}]:8080/screen",
            machine_ip(&fly, &alice_machine).await
        ))
        .header("host", "evil.example")
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 403);
    }

    // Idle, nobody following: the runner suspends its own machine through
    // /.fly/api; the next request through the coordinator wakes it, and
    // the same agent process carries on.
    fly.wait_state(AGENTS, &alice_machine, "suspended", Duration::from_secs(60))
        .await;
    let woke = Instant::now();
    let text = wait_for_live(&fly, "alice", "got: 'hello across machines'").await;
    let wake_to_live = woke.elapsed();
    assert!(text.contains("repl-agent ready"), "{text}");
    fly.wait_state(AGENTS, &alice_machine, "started", Duration::from_secs(5))
        .await;

    // bob is too large to suspend (4 GB): his runner stops his machine.
    fly.wait_state(
        AGENTS,
        &agent_machine(&bob),
        "stopped",
        Duration::from_secs(60),
    )
    .await;

    // A pinned request to a stopped machine fails and does not wake it.
    let response = fly
        .http()
        .get(format!("http://{AGENTS}.flycast/healthz"))
        .header("fly-force-instance-id", agent_machine(&bob))
        .send()
        .await
        .expect("pinned request");
    assert!(!response.status().is_success(), "{}", response.status());
    let bob_state = fly
        .api(
            Method::GET,
            &format!("/v1/apps/{AGENTS}/machines/{}", agent_machine(&bob)),
            None,
        )
        .await
        .1["state"]
        .clone();
    assert_eq!(bob_state, "stopped");

    // A runner image whose machine check fails never reaches an agent.
    let (status, report) = fly
        .deploy(
            AGENTS,
            &format!("registry.fly.io/{AGENTS}:deployment-2-broken"),
        )
        .await;
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["checks"][0]["exit_code"], 1, "{report}");
    let (_, listed) = manage(&fly, Method::GET, "/agents", None).await;
    assert_eq!(
        listed["runner_image"]["image"],
        format!("registry.fly.io/{AGENTS}:deployment-1"),
        "{listed}"
    );

    // One whose check passes is promoted, and sleeping agents wake onto
    // it; the agent's volume (its captures) comes along.
    let (status, report) = fly
        .deploy(AGENTS, &format!("registry.fly.io/{AGENTS}:deployment-3"))
        .await;
    assert_eq!(status, 200, "{report}");
    fly.wait_state(AGENTS, &alice_machine, "suspended", Duration::from_secs(60))
        .await;
    let (status, _) = live_text(&fly, "alice").await;
    assert_eq!(status, 200);
    let (_, listed) = manage(&fly, Method::GET, "/agents", None).await;
    let images: Vec<(String, String)> = listed["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            (
                a["agent"].as_str().unwrap_or_default().to_owned(),
                a["image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        images.contains(&(
            "alice".to_owned(),
            format!("registry.fly.io/{AGENTS}:deployment-3")
        )),
        "{listed}"
    );
    // The agent's earlier session is still on its volume.
    let (status, earlier) = {
        let response = fly
            .http()
            .get(coordinator_url("/agents/alice/live?session=1&format=text"))
            .send()
            .await
            .expect("earlier session");
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    };
    assert_eq!(status, 200);
    assert!(
        earlier.contains("got: 'hello across machines'"),
        "{earlier}"
    );

    // A repository change is refused, the machine untouched.
    let (status, body) = manage(
        &fly,
        Method::PUT,
        "/agents/alice",
        Some(json!({"repo": "lib@main", "mode": "rw"})),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    println!(
        "local Fly: create -> start answered {:.2}s, wake -> first /live byte {:.2}s",
        start_answered.as_secs_f64(),
        wake_to_live.as_secs_f64()
    );
}

async fn machine_ip(fly: &LocalFly, machine: &str) -> String {
    let (_, body) = fly
        .api(
            Method::GET,
            &format!("/v1/apps/{AGENTS}/machines/{machine}"),
            None,
        )
        .await;
    body["private_ip"].as_str().expect("private_ip").to_owned()
}
