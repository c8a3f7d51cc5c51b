//! The Fly Machines API client: typed requests and answers for the calls the
//! coordinator makes, bearer auth, retries, and one error type.
//!
//! Only the fields the coordinator reads or writes are typed. Everything
//! else in a machine's `config` (services, checks, init, files, ...) is kept
//! verbatim in a `rest` map, because an update must send the *whole* config
//! back ("we don't support partial updates", Fly's Machines API reference):
//! a field we dropped on the way through would be deleted from the machine.
//!
//! Every call runs against a deadline ([`MachinesClient::until`]): no
//! attempt, retry or pause outlives it, so a caller never hangs on the API.
//! Retries follow [`Backoff`] on 429, on 5xx and on transport errors; calls
//! that are not idempotent (creating a machine or a volume) are retried only
//! when the API cannot have acted on them (429, or no connection at all),
//! so a retry never creates a second machine.
//!
//! Not here: leases (`fly-machine-lease-nonce`), pagination (the API
//! answers one list), and the HTTP-date form of `Retry-After`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::backoff::{Backoff, parse_retry_after};
use crate::config::Secret;

/// Answers larger than this are refused rather than buffered.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// For calls without a request body.
const NO_BODY: Option<&Value> = None;
/// How much of an error answer's body an [`ApiError`] quotes.
const EXCERPT_CHARS: usize = 300;
/// The longest `timeout` the wait endpoint accepts (seconds).
pub const MAX_WAIT_SECS: u64 = 60;

/// A machine's lifecycle state, as the Machines API names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Replacing,
    Destroying,
    Destroyed,
    /// A state this client does not know (`updating`, `launch_failed`, ...).
    Other(String),
}

impl MachineState {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
            Self::Replacing => "replacing",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
            Self::Other(other) => other,
        }
    }

    /// Gone or going: such a machine serves nobody again.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Destroying | Self::Destroyed)
    }
}

impl From<String> for MachineState {
    fn from(state: String) -> Self {
        match state.as_str() {
            "created" => Self::Created,
            "starting" => Self::Starting,
            "started" => Self::Started,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "suspending" => Self::Suspending,
            "suspended" => Self::Suspended,
            "replacing" => Self::Replacing,
            "destroying" => Self::Destroying,
            "destroyed" => Self::Destroyed,
            _ => Self::Other(state),
        }
    }
}

impl From<MachineState> for String {
    fn from(state: MachineState) -> Self {
        state.as_str().to_owned()
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Fly Machine, as listed or returned by create and update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    pub state: MachineState,
    #[serde(default, deserialize_with = "null_as_default")]
    pub region: String,
    /// Changes with every update: the version of the machine's config.
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub created_at: String,
    /// Absent when the machine's host is unreachable: the API then offers
    /// only an `incomplete_config`, unfit for an update.
    #[serde(default)]
    pub config: Option<MachineConfig>,
}

impl Machine {
    /// A metadata value, if the machine's config is known and has it.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.config
            .as_ref()
            .and_then(|config| config.metadata.get(key))
            .map(String::as_str)
    }
}

/// A machine's `config`: the fields the coordinator touches, typed, and the
/// rest kept as they came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    pub image: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mounts: Vec<Mount>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub auto_destroy: bool,
    /// Everything else (services, checks, init, ...), sent back unchanged.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The machine's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Guest {
    /// `shared` or `performance`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cpu_kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cpus: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub memory_mb: u32,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A volume mounted into the machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// The volume's id (`vol_...`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub volume: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub path: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// What flyd does when the machine's main process exits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// `no`, `always` or `on-failure`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub policy: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The body of a create (`POST /machines`) or an update (`POST
/// /machines/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct LaunchRequest {
    pub config: MachineConfig,
    /// Where to create the machine; must match its volume's region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// On update: leave a machine that is not running stopped.
    pub skip_launch: bool,
}

/// A Fly volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub region: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub size_gb: u32,
}

/// The body of `POST /volumes`.
#[derive(Debug, Clone, Serialize)]
pub struct CreateVolumeRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub size_gb: u32,
    /// Off: one volume per agent, all with the same name, would soon use
    /// up the region's unique zones and make creation fail.
    pub require_unique_zone: bool,
}

/// How a wait for a machine state ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    Reached,
    /// The API's own timeout passed first (408); the caller may wait again.
    TimedOut,
}

/// One Machines API call, named in errors and logs: method and path (the
/// path holds the app, the machine id and the query, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub path: String,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A Machines API call that failed, after any retries; returned by every
/// method of [`Api`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The API answered, with a status other than success.
    #[error("{call}: Machines API answered {status}: {body}")]
    Status {
        call: Call,
        status: StatusCode,
        /// The start of the answer's body, control characters removed.
        body: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, TLS failure, ...
    #[error("{call}: cannot reach the Machines API: {detail}")]
    Transport {
        call: Call,
        detail: String,
        /// The connection was never made, so the API did nothing.
        connect: bool,
    },
    /// A request this client cannot encode, or an answer it cannot read.
    #[error("{call}: unexpected answer from the Machines API: {detail}")]
    Decode { call: Call, detail: String },
    /// The caller's deadline passed before an answer came.
    #[error("{call}: no answer from the Machines API before the deadline")]
    Deadline { call: Call },
}

impl ApiError {
    /// The HTTP status the API answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn is_retryable(&self, safety: RetrySafety) -> bool {
        match self {
            Self::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => true,
            Self::Status { status, .. } => {
                status.is_server_error() && safety == RetrySafety::Idempotent
            }
            Self::Transport { connect: true, .. } => true,
            Self::Transport { .. } => safety == RetrySafety::Idempotent,
            Self::Decode { .. } | Self::Deadline { .. } => false,
        }
    }
}

/// Whether repeating a call after an ambiguous failure (5xx, a connection
/// lost mid-request) is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetrySafety {
    Idempotent,
    /// The call creates something; repeat it only when the API cannot have
    /// acted on it.
    CreatesResource,
}

/// A client for one Fly app's machines and volumes.
#[derive(Debug, Clone)]
pub struct MachinesClient {
    http: reqwest::Client,
    base: Url,
    app: String,
    token: Secret,
    backoff: Backoff,
}

/// Why a [`MachinesClient`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("the Machines API URL {0} has no path to append to (use http:// or https://)")]
    BadBase(Url),
    #[error("cannot set up the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl MachinesClient {
    /// A client for `app`'s machines at `base` (`https://api.machines.dev`,
    /// or `http://_api.internal:4280` from inside Fly's private network).
    pub fn new(base: Url, app: &str, token: Secret, backoff: Backoff) -> Result<Self, ClientError> {
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadBase(base));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("fly-coordinator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base,
            app: app.to_owned(),
            token,
            backoff,
        })
    }

    /// The app whose machines this client manages.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The calls of one operation, all bounded by `deadline`.
    pub fn until(&self, deadline: Instant) -> Api<'_> {
        Api {
            client: self,
            deadline,
        }
    }
}

/// [`MachinesClient`]'s calls, bounded by one deadline.
#[derive(Debug, Clone, Copy)]
pub struct Api<'a> {
    client: &'a MachinesClient,
    deadline: Instant,
}

impl Api<'_> {
    /// `GET /v1/apps/{app}/machines`, with a `metadata.{key}={value}` filter
    /// if given. The filter only trims the answer: callers still check the
    /// metadata themselves.
    pub async fn list_machines(
        &self,
        metadata: Option<(&str, &str)>,
    ) -> Result<Vec<Machine>, ApiError> {
        let key;
        let query: Vec<(&str, &str)> = match metadata {
            Some((k, value)) => {
                key = format!("metadata.{k}");
                vec![(key.as_str(), value)]
            }
            None => Vec::new(),
        };
        let (call, body) = self
            .send(
                Method::GET,
                &["machines"],
                &query,
                NO_BODY,
                RetrySafety::Idempotent,
            )
            .await?;
        decode(&call, &body)
    }

    /// `GET /v1/apps/{app}/machines/{id}`.
    pub async fn get_machine(&self, id: &str) -> Result<Machine, ApiError> {
        let (call, body) = self
            .send(
                Method::GET,
                &["machines", id],
                &[],
                NO_BODY,
                RetrySafety::Idempotent,
            )
            .await?;
        decode(&call, &body)
    }

    /// `POST /v1/apps/{app}/machines`.
    pub async fn create_machine(&self, request: &LaunchRequest) -> Result<Machine, ApiError> {
        let (call, body) = self
            .send(
                Method::POST,
                &["machines"],
                &[],
                Some(request),
                RetrySafety::CreatesResource,
            )
            .await?;
        decode(&call, &body)
    }

    /// `POST /v1/apps/{app}/machines/{id}`: replaces the whole config.
    pub async fn update_machine(
        &self,
        id: &str,
        request: &LaunchRequest,
    ) -> Result<Machine, ApiError> {
        let (call, body) = self
            .send(
                Method::POST,
                &["machines", id],
                &[],
                Some(request),
                RetrySafety::Idempotent,
            )
            .await?;
        decode(&call, &body)
    }

    /// `POST /v1/apps/{app}/machines/{id}/start`.
    pub async fn start(&self, id: &str) -> Result<(), ApiError> {
        self.send(
            Method::POST,
            &["machines", id, "start"],
            &[],
            NO_BODY,
            RetrySafety::Idempotent,
        )
        .await
        .map(drop)
    }

    /// `POST /v1/apps/{app}/machines/{id}/stop`.
    pub async fn stop(&self, id: &str) -> Result<(), ApiError> {
        self.send(
            Method::POST,
            &["machines", id, "stop"],
            &[],
            NO_BODY,
            RetrySafety::Idempotent,
        )
        .await
        .map(drop)
    }

    /// `GET /v1/apps/{app}/machines/{id}/wait?state=...&timeout=...`: blocks
    /// in the API until the machine reaches `state` or `timeout` passes
    /// (clamped to 1..=60 s, the range the API accepts).
    pub async fn wait_for_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<WaitOutcome, ApiError> {
        let secs = timeout.as_secs().clamp(1, MAX_WAIT_SECS).to_string();
        let query = [("state", state), ("timeout", secs.as_str())];
        match self
            .send(
                Method::GET,
                &["machines", id, "wait"],
                &query,
                NO_BODY,
                RetrySafety::Idempotent,
            )
            .await
        {
            Ok(_) => Ok(WaitOutcome::Reached),
            Err(error) if error.status() == Some(StatusCode::REQUEST_TIMEOUT) => {
                Ok(WaitOutcome::TimedOut)
            }
            Err(error) => Err(error),
        }
    }

    /// `POST /v1/apps/{app}/machines/{id}/metadata/{key}`: changes metadata
    /// without an update, so the machine is neither restarted nor started.
    pub async fn set_metadata(&self, id: &str, key: &str, value: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "value": value });
        self.send(
            Method::POST,
            &["machines", id, "metadata", key],
            &[],
            Some(&body),
            RetrySafety::Idempotent,
        )
        .await
        .map(drop)
    }

    /// `DELETE /v1/apps/{app}/machines/{id}/metadata/{key}`; a key that is
    /// already gone is no error.
    pub async fn delete_metadata(&self, id: &str, key: &str) -> Result<(), ApiError> {
        match self
            .send(
                Method::DELETE,
                &["machines", id, "metadata", key],
                &[],
                NO_BODY,
                RetrySafety::Idempotent,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `POST /v1/apps/{app}/volumes`.
    pub async fn create_volume(&self, request: &CreateVolumeRequest) -> Result<Volume, ApiError> {
        let (call, body) = self
            .send(
                Method::POST,
                &["volumes"],
                &[],
                Some(request),
                RetrySafety::CreatesResource,
            )
            .await?;
        decode(&call, &body)
    }

    /// `DELETE /v1/apps/{app}/volumes/{id}`.
    pub async fn delete_volume(&self, id: &str) -> Result<(), ApiError> {
        self.send(
            Method::DELETE,
            &["volumes", id],
            &[],
            NO_BODY,
            RetrySafety::Idempotent,
        )
        .await
        .map(drop)
    }

    /// One call with retries; returns the call's name and the answer's body.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
        safety: RetrySafety,
    ) -> Result<(Call, Vec<u8>), ApiError> {
        let url = self.url(segments, query);
        let call = Call {
            method: method.clone(),
            path: match url.query() {
                Some(query) => format!("{}?{query}", url.path()),
                None => url.path().to_owned(),
            },
        };
        let backoff = self.client.backoff;
        let mut retry = 0;
        loop {
            let error = match self.attempt(&call, &url, body).await {
                Ok(answer) => return Ok((call, answer)),
                Err(error) => error,
            };
            if retry >= backoff.retries || !error.is_retryable(safety) {
                return Err(error);
            }
            let pause = backoff.delay(retry, error.retry_after());
            if Instant::now() + pause >= self.deadline {
                // The last real answer explains more than "deadline passed".
                return Err(error);
            }
            warn!(%call, retry = retry + 1, pause_ms = pause.as_millis() as u64, %error,
                "Machines API call failed; retrying");
            tokio::time::sleep(pause).await;
            retry += 1;
        }
    }

    async fn attempt<B: Serialize + ?Sized>(
        &self,
        call: &Call,
        url: &Url,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ApiError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::Deadline { call: call.clone() });
        }
        let started = Instant::now();
        let mut request = self
            .client
            .http
            .request(call.method.clone(), url.clone())
            .bearer_auth(self.client.token.expose())
            .timeout(remaining);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(call, &error))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let answer = read_answer(response)
            .await
            .map_err(|error| transport_error(call, &error))?;
        debug!(%call, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64,
            "Machines API");
        if status.is_success() {
            return match answer {
                Some(answer) => Ok(answer),
                None => Err(ApiError::Decode {
                    call: call.clone(),
                    detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                }),
            };
        }
        Err(ApiError::Status {
            call: call.clone(),
            status,
            body: excerpt(answer.as_deref().unwrap_or(b"(answer too large)")),
            retry_after,
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.client.base.clone();
        // `new` refused bases without a path, so this always applies; each
        // segment is percent-encoded, so no name can add a path component.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["v1", "apps", self.client.app.as_str()])
                .extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }
}

/// Reads an answer's body, up to [`MAX_ANSWER_BYTES`]; `None` when larger.
async fn read_answer(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn transport_error(call: &Call, error: &reqwest::Error) -> ApiError {
    if error.is_timeout() && !error.is_connect() {
        return ApiError::Deadline { call: call.clone() };
    }
    if error.is_builder() || error.is_decode() {
        return ApiError::Decode {
            call: call.clone(),
            detail: error.to_string(),
        };
    }
    // reqwest's own message is terse ("error sending request"); the cause
    // ("connection refused") is further down the chain.
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::Transport {
        call: call.clone(),
        detail,
        connect: error.is_connect(),
    }
}

fn decode<T: DeserializeOwned>(call: &Call, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::Decode {
        call: call.clone(),
        detail: error.to_string(),
    })
}

/// The start of an error body, fit for a log line or an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        "(empty body)".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The API writes `null` for some empty collections.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_config_fields_survive_a_round_trip() {
        let original = json!({
            "image": "registry.fly.io/runner:1",
            "env": {"A": "1"},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024, "kernel_args": ["quiet"]},
            "mounts": [{"volume": "vol_1", "path": "/data", "size_gb": 10, "encrypted": true}],
            "metadata": {"agent": "a"},
            "restart": {"policy": "on-failure", "max_retries": 3},
            "auto_destroy": false,
            "services": [{"internal_port": 8080, "autostop": false, "ports": [{"port": 80}]}],
            "init": {"cmd": ["serve"]},
        });
        let config: MachineConfig = serde_json::from_value(original.clone()).unwrap();
        assert_eq!(serde_json::to_value(&config).unwrap(), original);
    }

    #[test]
    fn nulls_and_unknown_states_are_read() {
        let machine: Machine = serde_json::from_value(json!({
            "id": "m1", "state": "launch_failed", "region": null,
            "config": {"env": null, "metadata": null, "mounts": null}
        }))
        .unwrap();
        assert_eq!(machine.state, MachineState::Other("launch_failed".into()));
        assert_eq!(machine.metadata("agent"), None);
        assert!(machine.config.unwrap().mounts.is_empty());
    }

    #[test]
    fn urls_encode_each_segment() {
        let client = MachinesClient::new(
            Url::parse("http://127.0.0.1:9/prefix/").unwrap(),
            "runner",
            Secret::new("t"),
            Backoff::default(),
        )
        .unwrap();
        let api = client.until(Instant::now());
        let url = api.url(&["machines", "a/../b"], &[("metadata.agent", "x y")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/prefix/v1/apps/runner/machines/a%2F..%2Fb?metadata.agent=x+y"
        );
    }

    #[test]
    fn bases_without_a_path_are_refused() {
        let bad = Url::parse("mailto:ops@example.com").unwrap();
        assert!(MachinesClient::new(bad, "runner", Secret::new("t"), Backoff::default()).is_err());
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"  "), "(empty body)");
        assert_eq!(excerpt(b"bad\r\nthing"), "bad  thing");
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 1);
    }

    #[test]
    fn which_failures_are_retried() {
        let call = Call {
            method: Method::POST,
            path: "/v1/apps/a/machines".into(),
        };
        let status = |code: u16| ApiError::Status {
            call: call.clone(),
            status: StatusCode::from_u16(code).unwrap(),
            body: String::new(),
            retry_after: None,
        };
        use RetrySafety::*;
        assert!(status(429).is_retryable(CreatesResource));
        assert!(status(503).is_retryable(Idempotent));
        assert!(!status(503).is_retryable(CreatesResource));
        assert!(!status(404).is_retryable(Idempotent));
        let transport = |connect| ApiError::Transport {
            call: call.clone(),
            detail: String::new(),
            connect,
        };
        assert!(transport(true).is_retryable(CreatesResource));
        assert!(!transport(false).is_retryable(CreatesResource));
        assert!(transport(false).is_retryable(Idempotent));
    }
}
