//! The HTTP face of the coordinator: agent management, replay routing and
//! health.
//!
//! | request | answer |
//! |---|---|
//! | any request with `fly-agent: NAME` | wake NAME's machine, then `fly-replay: app=RUNNER;instance=ID` |
//! | any request to `/agents/NAME/PATH` | wake, then a JSON replay that rewrites the path to `/PATH` |
//! | `PUT /agents/NAME` `{repo, mode, cpus?, memory_mb?, cpu_kind?}` | ensure NAME has a machine as asked |
//! | `GET /agents/NAME` | describe it |
//! | `GET /agents` | every agent with its image, and the image agents are rolled onto |
//! | `DELETE /agents/NAME` | release it |
//! | `GET /healthz` | the process is up (no Machines API call) |
//!
//! Management calls (`/agents/NAME` itself) need `Authorization: Bearer`
//! with the coordinator's own token: they create and update machines.
//! Routed requests pass through unchecked, so the runner's own token (sent
//! in the same header) reaches the runner; waking a machine is all a
//! routed request can do here.
//!
//! A replay answer is status 409 with an empty body (or the JSON replay
//! body): the Fly proxy sees `fly-replay` and delivers the original request
//! to the machine instead, so the client never sees it. A client that
//! reached the coordinator without the proxy gets a 409 it cannot mistake
//! for the agent's answer. The proxy can replay bodies of at most 1 MB, so
//! larger ones get a 413 here rather than a proxy error later.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tracing::{debug, warn};

use crate::agents::{AgentError, AgentName, AgentRequest, AgentView, Agents, Outcome};
use crate::config::Secret;
use crate::machines::ApiError;

/// The request header that names the agent a request is for.
pub const AGENT_HEADER: HeaderName = HeaderName::from_static("fly-agent");
/// The response header the Fly proxy acts on.
pub const REPLAY_HEADER: HeaderName = HeaderName::from_static("fly-replay");
/// The content type of a replay described in the body.
pub const REPLAY_JSON: &str = "application/vnd.fly.replay+json";
/// The largest body the Fly proxy replays. Fly documents "1MB"; the decimal
/// reading is the smaller, so a body we accept is one the proxy accepts.
pub const MAX_REPLAY_BODY: u64 = 1_000_000;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub agents: Agents,
    /// What management calls must bring as `Authorization: Bearer`.
    pub admin_token: Secret,
}

/// The coordinator's router.
pub fn app(state: Arc<AppState>) -> Router {
    let management = Router::new()
        .route("/agents", get(list))
        .route("/agents/{name}", get(describe).put(ensure).delete(release))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(management)
        .route("/agents/{name}/", any(replay_by_path))
        .route("/agents/{name}/{*rest}", any(replay_by_path))
        .fallback(no_route)
        // The header wins over every route, so the runner's own /healthz or
        // /agents/... stay reachable with `fly-agent`.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            replay_by_header,
        ))
        .with_state(state)
}

/// Refuses a management call without the coordinator's token, before it
/// reaches the Machines API.
async fn require_admin_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let expected = state.admin_token.expose().as_bytes();
    if bool::from(presented.ct_eq(expected)) {
        next.run(request).await
    } else {
        AppError::Unauthorized.into_response()
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "ok": true, "runner_app": state.agents.runner_app() }))
}

async fn list(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, AppError> {
    let (image, agents) = state.agents.list().await?;
    Ok(Json(json!({ "runner_image": image, "agents": agents })))
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, AppError> {
    let agent = AgentName::parse(&name)?;
    let machine = state.agents.describe(&agent).await?;
    Ok(Json(AgentView::new(&agent, &machine)))
}

#[derive(Serialize)]
struct Ensured {
    outcome: Outcome,
    #[serde(flatten)]
    agent: AgentView,
}

async fn ensure(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<AgentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Ensured>), AppError> {
    let agent = AgentName::parse(&name)?;
    let Json(request) = body.map_err(|rejection| AppError::BadRequest(rejection.body_text()))?;
    let (outcome, machine) = state.agents.ensure(&agent, &request).await?;
    let status = match outcome {
        Outcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let agent = AgentView::new(&agent, &machine);
    Ok((status, Json(Ensured { outcome, agent })))
}

async fn release(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let agent = AgentName::parse(&name)?;
    let machine = state.agents.release(&agent).await?;
    Ok(Json(
        json!({ "agent": agent.as_str(), "released": machine.id }),
    ))
}

async fn no_route() -> AppError {
    AppError::NoRoute
}

/// How the replayed request reaches the runner.
enum Target {
    /// As it came (the agent was named in a header).
    Unchanged,
    /// With this path and query instead (the agent was named in the path).
    Path(String),
}

async fn replay_by_header(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut values = request.headers().get_all(AGENT_HEADER).iter();
    let Some(value) = values.next() else {
        return next.run(request).await;
    };
    if values.next().is_some() {
        return AppError::BadRequest(format!("more than one {AGENT_HEADER} header"))
            .into_response();
    }
    // Bytes that are not UTF-8 become U+FFFD, which no name contains.
    let agent = match AgentName::parse(&String::from_utf8_lossy(value.as_bytes())) {
        Ok(agent) => agent,
        Err(error) => return AppError::from(error).into_response(),
    };
    replay(&state, &agent, request, Target::Unchanged)
        .await
        .into_response()
}

async fn replay_by_path(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, AppError> {
    // The raw, still percent-encoded path: what the runner must see.
    let after = request
        .uri()
        .path()
        .strip_prefix("/agents/")
        .unwrap_or_default();
    let (name, rest) = after.split_once('/').unwrap_or((after, ""));
    let agent = AgentName::parse(name)?;
    let mut path = format!("/{rest}");
    if let Some(query) = request.uri().query() {
        path.push('?');
        path.push_str(query);
    }
    replay(&state, &agent, request, Target::Path(path)).await
}

/// Wakes the agent's machine and answers with the replay that sends the
/// request there.
async fn replay(
    state: &AppState,
    agent: &AgentName,
    request: Request,
    target: Target,
) -> Result<Response, AppError> {
    check_body(request).await?;
    let machine = state.agents.wake(agent).await?;
    let app = state.agents.runner_app();
    debug!(%agent, machine = %machine.id, "replaying");
    let response = match target {
        Target::Unchanged => {
            let value = HeaderValue::from_str(&format!("app={app};instance={}", machine.id))
                .map_err(|_| AppError::BadMachineId(machine.id.clone()))?;
            (StatusCode::CONFLICT, [(REPLAY_HEADER, value)]).into_response()
        }
        Target::Path(path) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, HeaderValue::from_static(REPLAY_JSON))],
            json!({ "app": app, "instance": machine.id, "transform": { "path": path } })
                .to_string(),
        )
            .into_response(),
    };
    Ok(response)
}

/// Refuses a body the proxy could not replay: by its declared length if it
/// has one, else by counting it (chunked), stopping at the limit.
async fn check_body(request: Request) -> Result<(), AppError> {
    if let Some(length) = content_length(request.headers())
        && length > MAX_REPLAY_BODY
    {
        return Err(AppError::TooLarge(Some(length)));
    }
    let mut body = request.into_body().into_data_stream();
    let mut seen: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            AppError::BadRequest(format!("cannot read the request body: {error}"))
        })?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > MAX_REPLAY_BODY {
            return Err(AppError::TooLarge(None));
        }
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every error a handler answers with: a status and `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{}", too_large(*.0))]
    TooLarge(Option<u64>),
    #[error("the Machines API returned machine id {0:?}, which cannot go in a fly-replay header")]
    BadMachineId(String),
    #[error(
        "managing agents needs Authorization: Bearer with the coordinator's token \
         (COORDINATOR_TOKEN); routed requests (/agents/NAME/... or fly-agent) need none here"
    )]
    Unauthorized,
    #[error(
        "no such route: reach an agent with /agents/NAME/... or the fly-agent header; \
         manage one with PUT, GET or DELETE /agents/NAME"
    )]
    NoRoute,
}

fn too_large(length: Option<u64>) -> String {
    let what = match length {
        Some(length) => format!("a body of {length} bytes"),
        None => "a longer body".to_owned(),
    };
    format!(
        "request too large to replay: the Fly proxy replays at most {MAX_REPLAY_BODY} bytes, \
         this request has {what}; send it to the runner directly (fly-force-instance-id) or in parts"
    )
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Agent(error) => match error {
                AgentError::InvalidName(_) | AgentError::InvalidRequest(_) => {
                    StatusCode::BAD_REQUEST
                }
                AgentError::NotFound(_) => StatusCode::NOT_FOUND,
                AgentError::RepoPinned { .. } => StatusCode::CONFLICT,
                AgentError::NoImage => StatusCode::SERVICE_UNAVAILABLE,
                AgentError::Unavailable { .. } | AgentError::ConfigUnknown { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                AgentError::WakeTimeout { .. } | AgentError::Api(ApiError::Deadline { .. }) => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                AgentError::Api(_) => StatusCode::BAD_GATEWAY,
            },
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadMachineId(_) => StatusCode::BAD_GATEWAY,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() {
            warn!(status = status.as_u16(), error = %message, "request failed");
        } else if status == StatusCode::UNAUTHORIZED {
            warn!(
                status = status.as_u16(),
                "management call without the right token"
            );
        } else {
            debug!(status = status.as_u16(), error = %message, "request refused");
        }
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
