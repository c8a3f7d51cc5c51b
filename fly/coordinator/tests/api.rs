//! The coordinator's router over real HTTP on 127.0.0.1, against the mock
//! Machines API in `support`: what each request does to the machines, and
//! what it answers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use clap::Parser as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use coordinator::agents::Agents;
use coordinator::config::{Cli, Config, EnvSecrets};
use coordinator::machines::MachinesClient;
use coordinator::routes::{self, AppState};
use support::{Failure, MockApi, runner_machine};

/// What management calls bring (`COORDINATOR_TOKEN`).
const ADMIN_TOKEN: &str = "admin-token";

struct Coordinator {
    api: MockApi,
    url: String,
    http: reqwest::Client,
}

/// A coordinator for the runner app `runners` in front of a fresh mock,
/// with short timeouts and retries so failures are quick.
async fn coordinator(extra: &[&str]) -> Coordinator {
    let api = MockApi::start().await;
    let mut args = vec![
        "fly-coordinator",
        "--runner-app",
        "runners",
        "--runner-image",
        "registry.fly.io/runners:v2",
        "--api-base",
        &api.base,
        "--wake-timeout-secs",
        "5",
        "--api-timeout-secs",
        "10",
        "--api-retries",
        "3",
        "--retry-base-ms",
        "10",
        "--retry-cap-ms",
        "40",
        "--runner-env",
        "WORKTREE_SERVER=lazy-worktree-nfsd.flycast;RUST_LOG=info,rmcp=warn",
    ];
    args.extend_from_slice(extra);
    let config = Config::from_cli(
        Cli::try_parse_from(args).expect("test arguments parse"),
        EnvSecrets {
            fly_api_token: Some("test-token".into()),
            admin_token: Some(ADMIN_TOKEN.into()),
        },
    )
    .expect("test configuration is valid");
    let client = MachinesClient::new(
        config.api_base.clone(),
        &config.runner_app,
        config.token.clone(),
        config.backoff,
    )
    .expect("a Machines API client for the mock");
    let agents = Agents::new(client, config.runner.clone(), config.timeouts);
    let app = routes::app(Arc::new(AppState {
        agents,
        admin_token: config.admin_token.clone(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the coordinator");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("the coordinator's address")
    );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("serve the coordinator")
    });
    let http = reqwest::Client::builder()
        // Generous: bounds a hung test, never measures one.
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    Coordinator { api, url, http }
}

impl Coordinator {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET path` on the coordinator.
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// A management call, with the coordinator's token.
    fn manage(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    async fn put_agent(&self, name: &str, body: Value) -> (u16, Value) {
        let response = self
            .manage(Method::PUT, &format!("/agents/{name}"))
            .json(&body)
            .send()
            .await
            .expect("PUT /agents/NAME");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }
}

fn owned(agent: &str) -> Value {
    json!({"agent": agent, "repo": "app@main", "mode": "rw"})
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON answer")
}

/// The `error` text of a JSON error answer.
async fn error_of(response: reqwest::Response) -> String {
    json_of(response).await["error"]
        .as_str()
        .expect("an error message")
        .to_owned()
}

#[tokio::test]
async fn waking_a_stopped_machine_then_replaying_to_it() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));

    // Named in the path: a JSON replay that strips /agents/alice.
    let response = c.get("/agents/alice/live?offset=3&follow=1").await;
    assert_eq!(response.status(), 409);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.fly.replay+json"
    );
    assert_eq!(
        json_of(response).await,
        json!({"app": "runners", "instance": "m1", "transform": {"path": "/live?offset=3&follow=1"}})
    );
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 1);
    let waits = c.api.calls_to(Method::GET, "/machines/m1/wait");
    assert_eq!(waits.len(), 1);
    assert!(
        waits[0].query.contains("state=started"),
        "{}",
        waits[0].query
    );
    assert!(waits[0].query.contains("timeout="), "{}", waits[0].query);
    assert_eq!(c.api.machine("m1")["state"], "started");

    // Every call carried the token as a bearer credential.
    assert!(
        c.api
            .calls()
            .iter()
            .all(|call| call.authorization.as_deref() == Some("Bearer test-token"))
    );
}

#[tokio::test]
async fn the_fly_agent_header_replays_the_request_as_it_came() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));
    let response = c
        .http
        .post(c.url("/mcp"))
        .header("fly-agent", "alice")
        .body(r#"{"jsonrpc":"2.0"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["fly-replay"], "app=runners;instance=m1");
    assert!(response.bytes().await.unwrap().is_empty());
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 1);

    // The header wins over the coordinator's own routes.
    let response = c
        .http
        .get(c.url("/healthz"))
        .header("fly-agent", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["fly-replay"], "app=runners;instance=m1");
}

#[tokio::test]
async fn a_started_machine_is_not_started_again() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "started", owned("alice")));
    // Another agent's machine, and a released one: the local filter must
    // skip both, since the mock ignores the metadata filter.
    c.api
        .add_machine(runner_machine("m0", "stopped", owned("bob")));
    c.api.add_machine(runner_machine(
        "m00",
        "stopped",
        json!({"repo": "app@main"}),
    ));
    let response = c.get("/agents/alice/screen").await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["instance"], "m1");
    let lists = c.api.calls_to(Method::GET, "/machines");
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].query, "metadata.agent=alice");
    assert!(c.api.calls_to(Method::POST, "/start").is_empty());
    assert!(c.api.calls_to(Method::GET, "/wait").is_empty());
}

#[tokio::test]
async fn a_suspended_machine_is_started() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "suspended", owned("alice")));
    let response = c.get("/agents/alice/").await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["transform"]["path"], "/");
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 1);
    assert_eq!(c.api.calls_to(Method::GET, "/machines/m1/wait").len(), 1);
}

#[tokio::test]
async fn a_machine_still_stopping_is_started_once_it_settles() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopping", owned("alice")));
    let api = c.api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut machine = api.machine("m1");
        machine["state"] = json!("stopped");
        api.add_machine(machine);
    });
    let response = c.get("/agents/alice/live").await;
    assert_eq!(response.status(), 409);
    // Looked at again until it settled, then started: a start while it was
    // stopping would have been refused.
    assert!(!c.api.calls_to(Method::GET, "/machines/m1").is_empty());
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 1);
    assert_eq!(c.api.machine("m1")["state"], "started");
}

#[tokio::test]
async fn a_first_put_creates_a_volume_and_a_machine() {
    let c = coordinator(&["--region", "fra"]).await;
    let (status, body) = c
        .put_agent("bob", json!({"repo": "app@main", "mode": "rw"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["outcome"], "created");

    let volumes = c.api.calls_to(Method::POST, "/apps/runners/volumes");
    assert_eq!(volumes.len(), 1);
    let volume = volumes[0].body.clone().unwrap();
    assert_eq!(volume["name"], "agent_data");
    assert_eq!(volume["region"], "fra");
    assert_eq!(volume["size_gb"], 5);
    assert_eq!(volume["require_unique_zone"], false);
    let volume_id = c.api.volumes()[0]["id"].clone();

    let creates = c.api.calls_to(Method::POST, "/apps/runners/machines");
    assert_eq!(creates.len(), 1);
    let request = creates[0].body.clone().unwrap();
    assert_eq!(request["region"], "fra");
    let config = &request["config"];
    assert_eq!(config["image"], "registry.fly.io/runners:v2");
    assert_eq!(
        config["metadata"],
        json!({"agent": "bob", "repo": "app@main", "mode": "rw"})
    );
    assert_eq!(
        config["env"],
        json!({"WORKTREE_REPO": "app@main", "WORKTREE_MODE": "rw", "AGENT_NAME": "bob",
               "WORKTREE_SERVER": "lazy-worktree-nfsd.flycast", "RUST_LOG": "info,rmcp=warn"})
    );
    assert_eq!(
        config["guest"],
        json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 2048})
    );
    assert_eq!(config["stop_config"]["signal"], "SIGTERM");
    assert_eq!(
        config["mounts"],
        json!([{"volume": volume_id, "path": "/data"}])
    );
    assert_eq!(config["auto_destroy"], false);
    assert_eq!(config["restart"]["policy"], "on-failure");
    assert_eq!(config["services"][0]["internal_port"], 8080);
    assert_eq!(config["services"][0]["ports"][0]["port"], 80);
    assert_eq!(config["services"][0]["autostart"], true);
    assert_eq!(config["services"][0]["autostop"], "off");

    assert_eq!(body["agent"], "bob");
    assert_eq!(body["volume"], volume_id);
    let machine = body["machine"].as_str().unwrap().to_owned();

    // Now the agent exists: describe it, route to it.
    let described = json_of(c.manage(Method::GET, "/agents/bob").send().await.unwrap()).await;
    assert_eq!(described["machine"], machine.as_str());
    assert_eq!(described["repo"], "app@main");
    let response = c.get("/agents/bob/healthz").await;
    assert_eq!(json_of(response).await["instance"], machine.as_str());
}

#[tokio::test]
async fn a_released_machine_of_the_same_repo_is_reused() {
    let c = coordinator(&[]).await;
    c.api.add_machine(runner_machine(
        "other",
        "stopped",
        json!({"repo": "lib@main"}),
    ));
    c.api
        .add_machine(runner_machine("taken", "stopped", owned("dave")));
    c.api.add_machine(runner_machine(
        "free",
        "stopped",
        json!({"repo": "app@main", "mode": "rw"}),
    ));
    let (status, body) = c
        .put_agent("carol", json!({"repo": "app@main", "mode": "ro"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "reused");
    assert_eq!(body["machine"], "free");
    assert!(
        c.api
            .calls_to(Method::POST, "/apps/runners/machines")
            .is_empty()
    );
    assert!(c.api.calls_to(Method::POST, "/volumes").is_empty());

    let updates = c.api.calls_to(Method::POST, "/machines/free");
    assert_eq!(updates.len(), 1);
    let update = updates[0].body.clone().unwrap();
    assert_eq!(update["skip_launch"], true);
    assert_eq!(update["config"]["metadata"]["agent"], "carol");
    assert_eq!(update["config"]["env"]["WORKTREE_MODE"], "ro");
    assert_eq!(
        update["config"]["mounts"],
        runner_machine("free", "", json!({}))["config"]["mounts"]
    );
    assert_eq!(c.api.machine("free")["state"], "stopped");
}

#[tokio::test]
async fn resizing_and_switching_mode_keeps_the_volume() {
    let c = coordinator(&[]).await;
    let original = runner_machine(
        "m1",
        "started",
        json!({"agent": "dave", "repo": "app@main", "mode": "rw"}),
    );
    c.api.add_machine(original.clone());

    let (status, body) = c
        .put_agent(
            "dave",
            json!({"repo": "app@main", "mode": "ro", "cpus": 2, "memory_mb": 2048}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "updated");
    let updates = c.api.calls_to(Method::POST, "/machines/m1");
    assert_eq!(updates.len(), 1);
    let update = updates[0].body.clone().unwrap();
    let config = &update["config"];
    let before = &original["config"];
    // Same volume, same everything the coordinator does not own...
    assert_eq!(config["mounts"], before["mounts"]);
    assert_eq!(config["services"], before["services"]);
    assert_eq!(config["init"], before["init"]);
    assert_eq!(config["image"], before["image"]);
    assert_eq!(config["env"]["KEEP"], "me");
    // ...new size and mode.
    assert_eq!(
        config["guest"],
        json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 2048})
    );
    assert_eq!(config["env"]["WORKTREE_MODE"], "ro");
    assert_eq!(config["metadata"]["mode"], "ro");
    // A running agent is rebooted into its new config, not left stopped.
    assert_eq!(update["skip_launch"], false);

    // Asking again for the same thing changes nothing; fields left out
    // keep the machine's current values.
    let (status, body) = c
        .put_agent("dave", json!({"repo": "app@main", "mode": "ro"}))
        .await;
    assert_eq!((status, body["outcome"].clone()), (200, json!("unchanged")));
    assert_eq!(body["cpus"], 2);
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1").len(), 1);

    // Back to rw, stopped meanwhile: updated but left stopped.
    let mut stopped = c.api.machine("m1");
    stopped["state"] = json!("stopped");
    c.api.add_machine(stopped);
    let (_, body) = c
        .put_agent("dave", json!({"repo": "app@main", "mode": "rw"}))
        .await;
    assert_eq!(body["outcome"], "updated");
    let last = c
        .api
        .calls_to(Method::POST, "/machines/m1")
        .pop()
        .unwrap()
        .body
        .unwrap();
    assert_eq!(last["skip_launch"], true);
    assert_eq!(last["config"]["mounts"], before["mounts"]);
}

#[tokio::test]
async fn delete_releases_the_machine_for_reuse() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "started", owned("erin")));
    let response = c
        .manage(Method::DELETE, "/agents/erin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["released"], "m1");
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/stop").len(), 1);
    assert_eq!(
        c.api
            .calls_to(Method::DELETE, "/machines/m1/metadata/agent")
            .len(),
        1
    );
    let machine = c.api.machine("m1");
    assert_eq!(machine["state"], "stopped");
    assert!(machine["config"]["metadata"].get("agent").is_none());
    assert_eq!(machine["config"]["metadata"]["repo"], "app@main");

    let response = c.manage(Method::GET, "/agents/erin").send().await.unwrap();
    assert_eq!(response.status(), 404);
    // The next agent of app@main gets it.
    let (_, body) = c
        .put_agent("frank", json!({"repo": "app@main", "mode": "rw"}))
        .await;
    assert_eq!(
        (body["outcome"].clone(), body["machine"].clone()),
        (json!("reused"), json!("m1"))
    );
}

#[tokio::test]
async fn rate_limits_are_retried() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));
    c.api.fail(Failure {
        method: Method::GET,
        path_suffix: "/apps/runners/machines".into(),
        status: 429,
        times: Some(2),
        retry_after: Some("0".into()),
    });
    c.api.fail(Failure {
        method: Method::POST,
        path_suffix: "/machines/m1/start".into(),
        status: 429,
        times: Some(1),
        retry_after: None,
    });
    let response = c.get("/agents/alice/live").await;
    assert_eq!(response.status(), 409);
    // Two failed and one answered list of the agent's machine, then one of
    // the whole app: a sleeping agent may have a newer image to wake onto.
    assert_eq!(
        c.api.calls_to(Method::GET, "/apps/runners/machines").len(),
        4
    );
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 2);
}

#[tokio::test]
async fn a_failing_api_is_a_clear_error_not_a_hang() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));
    c.api.fail(Failure {
        method: Method::POST,
        path_suffix: "/machines/m1/start".into(),
        status: 500,
        times: None,
        retry_after: None,
    });
    let response = c.get("/agents/alice/live").await;
    assert_eq!(response.status(), 502);
    let error = error_of(response).await;
    assert!(error.contains("/machines/m1/start"), "{error}");
    assert!(error.contains("500"), "{error}");
    assert!(error.contains("scripted failure"), "{error}");
    // The first attempt and three retries, then it gave up.
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 4);
}

#[tokio::test]
async fn creating_a_machine_is_not_retried_after_a_server_error() {
    let c = coordinator(&[]).await;
    c.api.fail(Failure {
        method: Method::POST,
        path_suffix: "/apps/runners/machines".into(),
        status: 503,
        times: None,
        retry_after: None,
    });
    let (status, body) = c
        .put_agent("gina", json!({"repo": "app@main", "mode": "rw"}))
        .await;
    assert_eq!(status, 502, "{body}");
    // A 5xx may hide a machine that was made: one attempt only, and the
    // volume made for it is deleted again.
    assert_eq!(
        c.api.calls_to(Method::POST, "/apps/runners/machines").len(),
        1
    );
    let deleted: Vec<_> = c
        .api
        .calls()
        .into_iter()
        .filter(|call| call.method == Method::DELETE && call.path.contains("/volumes/vol_"))
        .collect();
    assert_eq!(deleted.len(), 1);
    assert!(c.api.volumes().is_empty());
}

#[tokio::test]
async fn a_machine_that_never_starts_times_out() {
    let c = coordinator(&["--wake-timeout-secs", "1"]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));
    c.api.never_start();
    let response = c.get("/agents/alice/live").await;
    assert_eq!(response.status(), 504);
    let error = error_of(response).await;
    assert!(error.contains("did not reach started"), "{error}");
    assert!(error.contains("m1"), "{error}");
    assert!(!c.api.calls_to(Method::GET, "/machines/m1/wait").is_empty());
}

#[tokio::test]
async fn unknown_agents_are_404() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "started", owned("alice")));
    for request in [
        c.http.get(c.url("/agents/nobody/live")),
        c.manage(Method::GET, "/agents/nobody"),
        c.manage(Method::DELETE, "/agents/nobody"),
        c.http.get(c.url("/mcp")).header("fly-agent", "nobody"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404);
        let error = error_of(response).await;
        assert!(error.contains("no agent named nobody"), "{error}");
    }
    let response = c.get("/elsewhere").await;
    assert_eq!(response.status(), 404);
    assert!(
        json_of(response).await["error"]
            .as_str()
            .unwrap()
            .contains("fly-agent")
    );
}

#[tokio::test]
async fn invalid_names_and_requests_are_400_without_api_calls() {
    let c = coordinator(&[]).await;
    let long = "a".repeat(64);
    for path in [
        "/agents/Alice/live".to_owned(),
        "/agents/-a/live".to_owned(),
        "/agents/a_b".to_owned(),
        "/agents/a%2F..%2Fb/live".to_owned(),
        "/agents/%0d%0aX:1/live".to_owned(),
        format!("/agents/{long}/live"),
        format!("/agents/{long}"),
    ] {
        let response = c.manage(Method::GET, &path).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert!(
            json_of(response).await["error"]
                .as_str()
                .unwrap()
                .contains("invalid agent name")
        );
    }
    for name in ["../x", "Bob", "a b", ""] {
        let response = c
            .http
            .get(c.url("/mcp"))
            .header("fly-agent", name)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{name:?}");
    }
    for body in [
        json!({"repo": "app@main"}),
        json!({"repo": "app@main", "mode": "rwx"}),
        json!({"repo": "/etc", "mode": "rw"}),
        json!({"repo": "app@main", "mode": "rw", "memory_mb": 1000}),
        json!({"repo": "app@main", "mode": "rw", "cpus": 0}),
        json!({"repo": "app@main", "mode": "rw", "size": "huge"}),
    ] {
        let (status, answer) = c.put_agent("ok", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
    }
    let (status, _) = c
        .put_agent("Not-OK", json!({"repo": "app@main", "mode": "rw"}))
        .await;
    assert_eq!(status, 400);
    assert!(c.api.calls().is_empty(), "{:?}", c.api.calls());
}

/// Management creates machines: without the coordinator's token it is
/// refused before any Machines API call. Routed requests need no token
/// here (the runner checks its own).
#[tokio::test]
async fn management_calls_need_the_coordinators_token() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "started", owned("alice")));
    let body = json!({"repo": "app@main", "mode": "rw"});
    for request in [
        c.http.put(c.url("/agents/bob")).json(&body),
        c.http
            .put(c.url("/agents/bob"))
            .bearer_auth("wrong")
            .json(&body),
        c.http
            .put(c.url("/agents/bob"))
            .header("authorization", format!("Basic {ADMIN_TOKEN}"))
            .json(&body),
        c.http.get(c.url("/agents/alice")),
        c.http.delete(c.url("/agents/alice")),
        c.http.delete(c.url("/agents/alice")).bearer_auth(""),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert!(error_of(response).await.contains("COORDINATOR_TOKEN"));
    }
    assert!(c.api.calls().is_empty(), "{:?}", c.api.calls());

    // The runner's token travels in the same header and is not ours to check.
    let response = c
        .http
        .get(c.url("/agents/alice/live"))
        .bearer_auth("the-runner-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["instance"], "m1");
    let response = c.manage(Method::GET, "/agents/alice").send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// The runner lays an agent's changes over the commit its worktree was
/// first mounted at: another repository or revision is refused with a
/// clear error and the machine is left as it was.
#[tokio::test]
async fn a_repository_change_is_refused() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));
    for repo in ["lib@main", "app@dev", "app"] {
        let (status, body) = c
            .put_agent("alice", json!({"repo": repo, "mode": "rw"}))
            .await;
        assert_eq!(status, 409, "{repo}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("alice's worktree is app@main") && error.contains(repo),
            "{error}"
        );
    }
    assert!(
        c.api.calls_to(Method::POST, "/machines/m1").is_empty(),
        "the machine was changed"
    );
    // The same repository in another mode or size still updates.
    let (status, body) = c
        .put_agent("alice", json!({"repo": "app@main", "mode": "ro"}))
        .await;
    assert_eq!((status, body["outcome"].clone()), (200, json!("updated")));
}

/// Fly suspends only machines of at most 2 GB: a larger agent is told to
/// stop when idle, and a smaller one again goes back to suspending.
#[tokio::test]
async fn machines_too_large_to_suspend_stop_when_idle() {
    let c = coordinator(&[]).await;
    let (status, body) = c
        .put_agent(
            "big",
            json!({"repo": "app@main", "mode": "rw", "memory_mb": 4096}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let config = |c: &Coordinator| {
        let machine = body["machine"].as_str().unwrap().to_owned();
        c.api.machine(&machine)["config"].clone()
    };
    assert_eq!(config(&c)["env"]["AGENT_RUNNER_IDLE_ACTION"], "stop");
    let (status, _) = c
        .put_agent(
            "big",
            json!({"repo": "app@main", "mode": "rw", "memory_mb": 2048}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        config(&c)["env"].get("AGENT_RUNNER_IDLE_ACTION").is_none(),
        "{}",
        config(&c)
    );
    // The image an agent runs is part of its description.
    let described = json_of(c.manage(Method::GET, "/agents/big").send().await.unwrap()).await;
    assert_eq!(described["image"], "registry.fly.io/runners:v2");
}

/// A machine `fly deploy` made for the runner app at `release`: flyctl's
/// metadata, no agent.
fn deployed_machine(id: &str, state: &str, release: u64) -> Value {
    let mut machine = runner_machine(id, state, json!({}));
    machine["config"]["env"] = json!({"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams"});
    machine["config"]["image"] = json!(format!("registry.fly.io/runners:deployment-{release}"));
    machine["config"]["metadata"] = json!({
        "fly_platform_version": "v2",
        "fly_process_group": "app",
        "fly_release_id": format!("rel-{release}"),
        "fly_release_version": release.to_string(),
    });
    machine
}

/// `fly deploy` updates only the runner app's own machines, after their
/// machine checks passed; agents move onto that image when they wake, never
/// while they run.
#[tokio::test]
async fn sleeping_agents_wake_onto_the_deployed_image() {
    let c = coordinator(&[]).await;
    c.api.add_machine(deployed_machine("d1", "stopped", 7));
    c.api
        .add_machine(runner_machine("m1", "suspended", owned("alice")));
    c.api
        .add_machine(runner_machine("m2", "started", owned("bob")));
    let deployed = "registry.fly.io/runners:deployment-7";

    // Asleep: the wake is an update onto the new image (which starts it).
    let response = c.get("/agents/alice/live").await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["instance"], "m1");
    let updates = c.api.calls_to(Method::POST, "/machines/m1");
    assert_eq!(updates.len(), 1);
    let update = updates[0].body.clone().unwrap();
    assert_eq!(update["config"]["image"], deployed);
    assert_eq!(update["skip_launch"], false);
    // Nothing else of the machine changes: its volume above all.
    let before = runner_machine("m1", "suspended", owned("alice"));
    assert_eq!(update["config"]["mounts"], before["config"]["mounts"]);
    assert_eq!(update["config"]["env"], before["config"]["env"]);
    assert!(
        c.api
            .calls_to(Method::POST, "/machines/m1/start")
            .is_empty()
    );
    assert_eq!(c.api.machine("m1")["state"], "started");

    // Awake (maybe working): left alone.
    let response = c.get("/agents/bob/live").await;
    assert_eq!(response.status(), 409);
    assert!(c.api.calls_to(Method::POST, "/machines/m2").is_empty());

    // A new agent starts on it; the list tells who runs what.
    let (status, body) = c
        .put_agent("carol", json!({"repo": "lib@main", "mode": "rw"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["image"], deployed);
    let listed = json_of(c.manage(Method::GET, "/agents").send().await.unwrap()).await;
    assert_eq!(
        listed["runner_image"],
        json!({"image": deployed, "release_version": 7, "source": "deploy"})
    );
    let images: Vec<(String, String)> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agent"].as_str().unwrap().to_owned(),
                a["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        images,
        [
            ("alice".to_owned(), deployed.to_owned()),
            ("bob".to_owned(), "registry.fly.io/runners:v1".to_owned()),
            ("carol".to_owned(), deployed.to_owned()),
        ]
    );
    // Only management sees the list.
    assert_eq!(c.get("/agents").await.status(), 401);
}

/// A rollout that stopped half-way (one of flyctl's machines on the new
/// release, one on the old) promoted nothing: agents stay on the old one.
#[tokio::test]
async fn a_half_done_deploy_promotes_nothing() {
    let c = coordinator(&[]).await;
    c.api.add_machine(deployed_machine("d1", "started", 8));
    c.api.add_machine(deployed_machine("d2", "stopped", 7));
    let mut alice = runner_machine("m1", "stopped", owned("alice"));
    alice["config"]["image"] = json!("registry.fly.io/runners:deployment-7");
    c.api.add_machine(alice);
    let response = c.get("/agents/alice/live").await;
    assert_eq!(response.status(), 409);
    assert!(c.api.calls_to(Method::POST, "/machines/m1").is_empty());
    assert_eq!(c.api.calls_to(Method::POST, "/machines/m1/start").len(), 1);
}

/// With no deploy of the runner app and no RUNNER_IMAGE there is nothing
/// to run: a clear error, and no volume is made.
#[tokio::test]
async fn without_any_runner_image_creating_is_a_clear_error() {
    let c = coordinator(&["--runner-image", ""]).await;
    let (status, body) = c
        .put_agent("dan", json!({"repo": "app@main", "mode": "rw"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no runner image"),
        "{body}"
    );
    assert!(c.api.calls_to(Method::POST, "/volumes").is_empty());
}

/// One HTTP/1.1 exchange over a plain socket, for requests reqwest will
/// not send (a Content-Length with no body, a chunked body).
async fn raw_exchange(url: &str, request: &[u8]) -> (u16, String) {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)
        .await
        .expect("connect to the coordinator");
    stream.write_all(request).await.expect("send the request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP/1.1 status line");
    (status, answer)
}

#[tokio::test]
async fn bodies_the_proxy_cannot_replay_are_413() {
    let c = coordinator(&[]).await;
    c.api
        .add_machine(runner_machine("m1", "stopped", owned("alice")));

    // Declared too long: refused before a byte of it is read.
    let head = "POST /agents/alice/mcp HTTP/1.1\r\nHost: c\r\nContent-Length: 2000000\r\n\
                Connection: close\r\n\r\n";
    let (status, answer) = raw_exchange(&c.url, head.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("at most 1000000 bytes"), "{answer}");

    // Chunked, one byte over: counted and refused.
    let mut request = b"POST /mcp HTTP/1.1\r\nHost: c\r\nfly-agent: alice\r\n\
                        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let chunk = vec![b'x'; 100_000];
    for _ in 0..10 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
    let (status, answer) = raw_exchange(&c.url, &request).await;
    assert_eq!(status, 413, "{answer}");

    assert!(
        c.api.calls().is_empty(),
        "no wake for a request that cannot be replayed"
    );

    // At the limit is fine.
    let response = c
        .http
        .post(c.url("/agents/alice/mcp"))
        .body(vec![b'x'; 1_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn healthz_needs_no_machines_api() {
    let c = coordinator(&[]).await;
    c.api.fail(Failure {
        method: Method::GET,
        path_suffix: "".into(),
        status: 500,
        times: None,
        retry_after: None,
    });
    let response = c.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(response).await,
        json!({"ok": true, "runner_app": "runners"})
    );
    assert!(c.api.calls().is_empty());
}
