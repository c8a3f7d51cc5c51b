//! A mock Fly Machines API for the tests, on 127.0.0.1: machines and volumes
//! in memory, every call recorded (method, path, query, body, credentials),
//! and failures scripted per path.
//!
//! Deliberately, the list endpoint ignores `metadata.*` filters, so a test
//! passes only if the coordinator filters the list itself.
//!
//! State changes follow the Machines API reference: create boots the
//! machine unless `skip_launch`; an update reboots a started machine and
//! starts a stopped one unless `skip_launch`; start on a started machine is
//! refused (412); wait answers 408 when its timeout passes.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
    pub authorization: Option<String>,
}

/// A scripted failure: calls whose method matches and whose path ends with
/// `path_suffix` get `status`, `times` times (forever if `None`).
#[derive(Debug, Clone)]
pub struct Failure {
    pub method: Method,
    pub path_suffix: String,
    pub status: u16,
    pub times: Option<usize>,
    pub retry_after: Option<String>,
}

#[derive(Default)]
struct Inner {
    machines: BTreeMap<String, Value>,
    volumes: BTreeMap<String, Value>,
    calls: Vec<Call>,
    failures: Vec<Failure>,
    never_start: bool,
    next: u64,
}

/// The running mock; cheap to clone.
#[derive(Clone)]
pub struct MockApi {
    /// `http://127.0.0.1:PORT`, for `--api-base`.
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl MockApi {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock API");
        let address: SocketAddr = listener.local_addr().expect("the mock API's address");
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serve the mock API")
        });
        Self {
            base: format!("http://{address}"),
            inner,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("mock state lock")
    }

    pub fn add_machine(&self, machine: Value) {
        let id = machine["id"]
            .as_str()
            .expect("a machine has an id")
            .to_owned();
        self.lock().machines.insert(id, machine);
    }

    pub fn machine(&self, id: &str) -> Value {
        self.lock().machines[id].clone()
    }

    pub fn machines(&self) -> Vec<Value> {
        self.lock().machines.values().cloned().collect()
    }

    pub fn volumes(&self) -> Vec<Value> {
        self.lock().volumes.values().cloned().collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls with this method whose path ends with `suffix`.
    pub fn calls_to(&self, method: Method, suffix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.ends_with(suffix))
            .collect()
    }

    pub fn fail(&self, failure: Failure) {
        self.lock().failures.push(failure);
    }

    /// Started machines stay `starting` for good.
    pub fn never_start(&self) {
        self.lock().never_start = true;
    }
}

/// A machine of the runner app as the API lists it, with the config fields
/// the coordinator must carry through an update untouched.
pub fn runner_machine(id: &str, state: &str, metadata: Value) -> Value {
    json!({
        "id": id,
        "name": format!("name-{id}"),
        "state": state,
        "region": "ams",
        "instance_id": format!("inst-{id}"),
        "created_at": "2026-01-01T00:00:00Z",
        "config": {
            "image": "registry.fly.io/runners:v1",
            "env": {"WORKTREE_REPO": metadata["repo"].clone(), "KEEP": "me"},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024},
            "mounts": [{"volume": format!("vol_{id}"), "path": "/data", "size_gb": 5, "name": "agent_data"}],
            "metadata": metadata,
            "restart": {"policy": "on-failure"},
            "auto_destroy": false,
            "services": [{"protocol": "tcp", "internal_port": 8080, "autostop": false,
                          "ports": [{"port": 80, "handlers": ["http"]}]}],
            "init": {"cmd": ["serve"]},
        }
    })
}

type Shared = Arc<Mutex<Inner>>;

async fn handle(State(inner): State<Shared>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .expect("request bodies fit in 1 MiB");
    let body: Option<Value> = (!bytes.is_empty())
        .then(|| serde_json::from_slice(&bytes).expect("request bodies are JSON"));

    let wait_for = {
        let mut state = inner.lock().expect("mock state lock");
        state.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
            authorization,
        });
        if let Some(response) = scripted_failure(&mut state, &method, &path) {
            return response;
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.clone(), segments.as_slice()) {
            (Method::GET, ["v1", "apps", _, "machines", id, "wait"]) => {
                let wanted = param(&query, "state").unwrap_or_else(|| "started".into());
                let timeout: u64 = param(&query, "timeout")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(60);
                Some(((*id).to_owned(), wanted, timeout))
            }
            (method, segments) => return route(&mut state, &method, segments, body),
        }
    };
    // wait: answer now if the state is there, else after (a slice of) the
    // timeout, with 408 as the API does.
    let Some((id, wanted, timeout)) = wait_for else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let reached = |inner: &Shared| {
        inner
            .lock()
            .expect("mock state lock")
            .machines
            .get(&id)
            .map(|m| m["state"] == wanted.as_str())
    };
    match reached(&inner) {
        None => return not_found(),
        Some(true) => return json_response(StatusCode::OK, json!({"ok": true})),
        Some(false) => {}
    }
    tokio::time::sleep(Duration::from_secs(timeout).min(Duration::from_millis(300))).await;
    match reached(&inner) {
        Some(true) => json_response(StatusCode::OK, json!({"ok": true})),
        _ => json_response(
            StatusCode::REQUEST_TIMEOUT,
            json!({"error": format!("deadline_exceeded: machine did not reach {wanted}")}),
        ),
    }
}

fn scripted_failure(state: &mut Inner, method: &Method, path: &str) -> Option<Response> {
    let failure = state
        .failures
        .iter_mut()
        .find(|f| f.method == *method && path.ends_with(&f.path_suffix) && f.times != Some(0))?;
    if let Some(times) = &mut failure.times {
        *times -= 1;
    }
    let mut response = json_response(
        StatusCode::from_u16(failure.status).expect("a scripted status is valid"),
        json!({"error": "scripted failure"}),
    );
    if let Some(after) = &failure.retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            after
                .parse()
                .expect("a scripted Retry-After is a valid header"),
        );
    }
    Some(response)
}

fn route(state: &mut Inner, method: &Method, segments: &[&str], body: Option<Value>) -> Response {
    match (method.clone(), segments) {
        (Method::GET, ["v1", "apps", _, "machines"]) => {
            // Filters ignored on purpose: see the module doc.
            let all: Vec<Value> = state.machines.values().cloned().collect();
            json_response(StatusCode::OK, Value::Array(all))
        }
        (Method::POST, ["v1", "apps", _, "machines"]) => {
            let body = body.unwrap_or_default();
            state.next += 1;
            let n = state.next;
            let id = format!("e28{n:011x}");
            let skip = body["skip_launch"].as_bool().unwrap_or(false);
            let machine = json!({
                "id": id,
                "name": format!("generated-{n}"),
                "state": if skip { "created" } else { "started" },
                "region": body.get("region").cloned().unwrap_or(json!("ams")),
                "instance_id": format!("inst-{n}"),
                "created_at": format!("2026-02-01T00:00:{n:02}Z"),
                "config": body["config"].clone(),
            });
            state.machines.insert(id, machine.clone());
            json_response(StatusCode::OK, machine)
        }
        (Method::GET, ["v1", "apps", _, "machines", id]) => match state.machines.get(*id) {
            Some(machine) => json_response(StatusCode::OK, machine.clone()),
            None => not_found(),
        },
        (Method::POST, ["v1", "apps", _, "machines", id]) => {
            let body = body.unwrap_or_default();
            state.next += 1;
            let n = state.next;
            let Some(machine) = state.machines.get_mut(*id) else {
                return not_found();
            };
            let skip = body["skip_launch"].as_bool().unwrap_or(false);
            let running = machine["state"] == "started";
            machine["config"] = body["config"].clone();
            machine["instance_id"] = json!(format!("inst-{n}"));
            machine["state"] = json!(if running || !skip {
                "started"
            } else {
                "stopped"
            });
            json_response(StatusCode::OK, machine.clone())
        }
        (Method::POST, ["v1", "apps", _, "machines", id, "start"]) => {
            let never_start = state.never_start;
            let Some(machine) = state.machines.get_mut(*id) else {
                return not_found();
            };
            let previous = machine["state"].clone();
            if previous == "started" {
                return json_response(
                    StatusCode::PRECONDITION_FAILED,
                    json!({"error": "machine still active, refusing to start"}),
                );
            }
            machine["state"] = json!(if never_start { "starting" } else { "started" });
            json_response(StatusCode::OK, json!({"previous_state": previous}))
        }
        (Method::POST, ["v1", "apps", _, "machines", id, "stop"]) => {
            let Some(machine) = state.machines.get_mut(*id) else {
                return not_found();
            };
            machine["state"] = json!("stopped");
            json_response(StatusCode::OK, json!({"ok": true}))
        }
        (Method::POST, ["v1", "apps", _, "machines", id, "metadata", key]) => {
            let value = body.unwrap_or_default()["value"].clone();
            let Some(machine) = state.machines.get_mut(*id) else {
                return not_found();
            };
            machine["config"]["metadata"][*key] = value;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::DELETE, ["v1", "apps", _, "machines", id, "metadata", key]) => {
            let Some(machine) = state.machines.get_mut(*id) else {
                return not_found();
            };
            if let Some(metadata) = machine["config"]["metadata"].as_object_mut() {
                metadata.remove(*key);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["v1", "apps", _, "volumes"]) => {
            let body = body.unwrap_or_default();
            state.next += 1;
            let n = state.next;
            let id = format!("vol_{n:016x}");
            let volume = json!({
                "id": id,
                "name": body["name"],
                "region": body.get("region").cloned().unwrap_or(json!("ams")),
                "size_gb": body["size_gb"],
                "state": "created",
                "attached_machine_id": null,
            });
            state.volumes.insert(id, volume.clone());
            json_response(StatusCode::OK, volume)
        }
        (Method::DELETE, ["v1", "apps", _, "volumes", id]) => match state.volumes.remove(*id) {
            Some(volume) => json_response(StatusCode::OK, volume),
            None => not_found(),
        },
        _ => not_found(),
    }
}

fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn not_found() -> Response {
    json_response(StatusCode::NOT_FOUND, json!({"error": "not found"}))
}
