//! The Machines API subset the project uses, with Fly's paths, JSON and
//! statuses, over the platform: on `_api.internal:4280` with a bearer
//! token, and in every machine at `/.fly/api` (a Unix socket, no token,
//! limited to that machine's own calls, as Fly's local socket is for a
//! machine suspending or stopping itself).
//!
//! | call | answer |
//! |---|---|
//! | `GET /v1/apps/{app}/machines[?metadata.K=V]` | the app's machines |
//! | `POST /v1/apps/{app}/machines` `{config, region?, skip_launch?}` | a new machine |
//! | `GET`, `POST` (update), `DELETE` `/v1/apps/{app}/machines/{id}` | one machine |
//! | `POST .../{id}/start`, `/stop`, `/suspend` | lifecycle |
//! | `GET .../{id}/wait?state=S&timeout=N` | 200 once in S, 408 after N s (at most 60) |
//! | `POST`, `DELETE .../{id}/metadata/{key}` | one metadata key |
//! | `GET`, `POST /v1/apps/{app}/volumes`, `DELETE .../volumes/{id}` | volumes |
//!
//! And for the tests driving the local Fly (same token): `POST
//! /local/apps/{app}/deploy {"image"}` (a `fly deploy`), `POST
//! /local/images` (a push), `GET /local/machines/{id}/log`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::deploy;
use crate::platform::{Image, MachineState, Platform, PlatformError};

/// The longest `timeout` the wait endpoint takes, as on Fly.
const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Clone)]
struct ApiState {
    platform: Arc<Platform>,
    /// `Some`: the bearer token every call needs. `None`: a machine's
    /// socket, where only `own_machine`'s calls are allowed.
    token: Option<String>,
    own_machine: Option<(String, String)>,
}

/// The API on the private network, for anyone with `token`.
pub fn router(platform: Arc<Platform>, token: String) -> Router {
    routes(ApiState {
        platform,
        token: Some(token),
        own_machine: None,
    })
}

/// The API a machine sees at `/.fly/api`: its own machine's calls only.
pub fn machine_socket_router(platform: Arc<Platform>, app: &str, machine: &str) -> Router {
    routes(ApiState {
        platform,
        token: None,
        own_machine: Some((app.to_owned(), machine.to_owned())),
    })
}

fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/apps/{app}/machines", get(list).post(create))
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(describe).post(update).delete(destroy),
        )
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route("/v1/apps/{app}/machines/{id}/suspend", post(suspend))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route(
            "/v1/apps/{app}/machines/{id}/metadata/{key}",
            post(set_metadata).delete(delete_metadata),
        )
        .route(
            "/v1/apps/{app}/volumes",
            get(list_volumes).post(create_volume),
        )
        .route("/v1/apps/{app}/volumes/{id}", delete(delete_volume))
        .route("/local/apps/{app}/deploy", post(deploy_app))
        .route("/local/images", post(push_image))
        .route("/local/machines/{id}/log", get(machine_log))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// A JSON error as the Machines API answers: `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<PlatformError> for ApiError {
    fn from(error: PlatformError) -> Self {
        let status = match &error {
            PlatformError::NotFound(_) => StatusCode::NOT_FOUND,
            PlatformError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            PlatformError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PlatformError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Json<Value>, ApiError>;

async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API token")
                .into_response();
        }
    }
    if let Some((app, machine)) = &state.own_machine {
        let own = format!("/v1/apps/{app}/machines/{machine}");
        let path = request.uri().path();
        if path != own && !path.starts_with(&format!("{own}/")) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("/.fly/api answers only this machine's own calls ({own})"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The machine, checked to belong to `app`.
fn machine_of(platform: &Platform, app: &str, id: &str) -> Result<(), ApiError> {
    match platform.app_of(id) {
        Some(owner) if owner == app => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine {id} not found in app {app}"),
        )),
    }
}

async fn list(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Answer {
    if state.platform.app(&app).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("app {app} not found"),
        ));
    }
    let filter: Vec<(String, String)> = query
        .into_iter()
        .filter_map(|(key, value)| Some((key.strip_prefix("metadata.")?.to_owned(), value)))
        .collect();
    Ok(Json(Value::Array(
        state.platform.list_machines(&app, &filter),
    )))
}

#[derive(Debug, Deserialize)]
struct LaunchBody {
    config: Value,
    #[serde(default)]
    skip_launch: bool,
    #[serde(default)]
    #[allow(dead_code)]
    region: Option<String>,
}

fn body_of(
    body: Result<Json<LaunchBody>, axum::extract::rejection::JsonRejection>,
) -> Result<LaunchBody, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text()))
}

async fn create(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Result<Json<LaunchBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let body = body_of(body)?;
    Ok(Json(state.platform.create_machine(
        &app,
        body.config,
        body.skip_launch,
    )?))
}

async fn describe(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    Ok(Json(state.platform.machine_view(&id)?))
}

async fn update(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    body: Result<Json<LaunchBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    let body = body_of(body)?;
    Ok(Json(
        state
            .platform
            .update(&id, body.config, body.skip_launch)
            .await?,
    ))
}

async fn destroy(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    let force = query.get("force").is_some_and(|v| v == "true");
    state.platform.destroy(&id, force).await?;
    Ok(Json(json!({ "ok": true })))
}

async fn start(State(state): State<ApiState>, Path((app, id)): Path<(String, String)>) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    let previous = state.platform.state_of(&id).map(MachineState::as_str);
    state.platform.start(&id)?;
    Ok(Json(json!({ "previous_state": previous })))
}

async fn stop(State(state): State<ApiState>, Path((app, id)): Path<(String, String)>) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    // Answer at once, as Fly does; the stop goes on (a machine stopping
    // itself through /.fly/api must get its answer before it dies).
    let platform = Arc::clone(&state.platform);
    tokio::spawn(async move {
        if let Err(error) = platform.stop(&id).await {
            tracing::warn!(%error, "stop failed");
        }
    });
    Ok(Json(json!({ "ok": true })))
}

async fn suspend(State(state): State<ApiState>, Path((app, id)): Path<(String, String)>) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    state.platform.check_suspend(&id)?;
    // Answered first, then frozen: a machine suspending itself gets its
    // answer before its processes stop.
    let platform = Arc::clone(&state.platform);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Err(error) = platform.suspend(&id) {
            tracing::warn!(%error, "suspend failed");
        }
    });
    Ok(Json(json!({ "ok": true })))
}

async fn wait(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    machine_of(&state.platform, &app, &id)?;
    let wanted = query.get("state").map_or("started", String::as_str);
    let wanted = MachineState::parse(wanted).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("unknown state {wanted:?}"))
    })?;
    let timeout = query
        .get("timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(MAX_WAIT_SECS)
        .min(MAX_WAIT_SECS);
    if state
        .platform
        .wait(&id, wanted, Duration::from_secs(timeout))
        .await?
    {
        Ok(Json(json!({ "ok": true })))
    } else {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "machine {id} did not reach {} in {timeout}s",
                wanted.as_str()
            ),
        ))
    }
}

async fn set_metadata(
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    machine_of(&state.platform, &app, &id)?;
    let value = body["value"].as_str().ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "body must be {\"value\": \"...\"}")
    })?;
    state
        .platform
        .set_metadata(&id, &key, Some(value.to_owned()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_metadata(
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    machine_of(&state.platform, &app, &id)?;
    state.platform.set_metadata(&id, &key, None)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_volumes(State(state): State<ApiState>, Path(app): Path<String>) -> Answer {
    Ok(Json(Value::Array(state.platform.list_volumes(&app))))
}

async fn create_volume(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<Value>,
) -> Answer {
    let name = body["name"]
        .as_str()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "name is required"))?;
    let size = body["size_gb"].as_u64().unwrap_or(1);
    let size = u32::try_from(size)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "size_gb is too large"))?;
    Ok(Json(state.platform.create_volume(&app, name, size)?))
}

async fn delete_volume(
    State(state): State<ApiState>,
    Path((_app, id)): Path<(String, String)>,
) -> Answer {
    Ok(Json(state.platform.delete_volume(&id)?))
}

async fn deploy_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    if state.own_machine.is_some() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not from a machine"));
    }
    let image = body["image"]
        .as_str()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "image is required"))?;
    let report = deploy::deploy(&state.platform, &app, image).await;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Json(report)).into_response())
}

async fn push_image(State(state): State<ApiState>, Json(image): Json<Image>) -> Answer {
    if state.own_machine.is_some() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not from a machine"));
    }
    let reference = image.reference.clone();
    state.platform.add_image(image);
    Ok(Json(json!({ "reference": reference })))
}

async fn machine_log(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<String, ApiError> {
    Ok(state.platform.log(&id)?)
}
