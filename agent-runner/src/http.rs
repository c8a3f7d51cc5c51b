//! The HTTP server: MCP at `/mcp`, the capture at `/live`, the rendered
//! screen at `/screen` and `/`, and `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

use crate::capture::{CaptureReader, ReadEnd};
use crate::mcp::RunnerTools;
use crate::runner::{FollowerGuard, Runner, RunnerError};
use crate::terminal::{Activity, TextFilter, escape_html_into};

/// Who may call, and how.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Bearer token for everything but `/healthz`.
    pub token: Option<String>,
    /// Host header values accepted; empty accepts any.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
struct AppState {
    runner: Arc<Runner>,
    access: Arc<Access>,
}

/// The whole HTTP surface. `shutdown` ends MCP sessions when cancelled.
pub fn router(runner: Arc<Runner>, access: Access, shutdown: CancellationToken) -> Router {
    let access = Arc::new(access);
    let mut mcp_config =
        StreamableHttpServerConfig::default().with_cancellation_token(shutdown.child_token());
    mcp_config = if access.allowed_hosts.is_empty() {
        mcp_config.disable_allowed_hosts()
    } else {
        mcp_config.with_allowed_hosts(access.allowed_hosts.clone())
    };
    let mcp = StreamableHttpService::new(
        {
            let runner = runner.clone();
            move || Ok(RunnerTools::new(runner.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    let state = AppState { runner, access };
    let guarded = Router::new()
        .nest_service("/mcp", mcp)
        .route("/live", get(live))
        .route("/screen", get(screen))
        .route("/screen/stream", get(screen_stream))
        .route("/", get(page))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(state)
}

/// Refuses requests without the token, and Host headers outside the list
/// (DNS rebinding), before any handler runs.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !host_allowed(request.headers(), &state.access.allowed_hosts) {
        return (StatusCode::FORBIDDEN, "Host header not allowed\n").into_response();
    }
    if let Some(token) = &state.access.token {
        let presented = bearer(request.headers())
            .or_else(|| query_token(request.uri().query()))
            .unwrap_or_default();
        let ok: bool = presented.as_bytes().ct_eq(token.as_bytes()).into();
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response();
        }
    }
    state.runner.touch();
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// `?access_token=`: for the browser page, whose EventSource cannot send
/// headers (RFC 6750 section 2.3).
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "access_token")
        .map(|(_, token)| token.into_owned())
}

fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    allowed.iter().any(|entry| {
        match entry.parse::<axum::http::uri::Authority>() {
            Ok(a) => {
                a.host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .eq_ignore_ascii_case(name)
                    && a.port_u16().is_none_or(|p| Some(p) == authority.port_u16())
            }
            // A bare IPv6 address does not parse as an authority.
            Err(_) => entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(name),
        }
    })
}

fn error_response(error: &RunnerError) -> Response {
    let status = match error {
        RunnerError::NoCapture(_) | RunnerError::NoSessions => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{error}\n")).into_response()
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let runner = &state.runner;
    let session = runner.session().map(|s| runner.describe(&s));
    let busy = session
        .as_ref()
        .is_some_and(|s| s.state == "running" && s.activity == Activity::Working);
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "machine_id": std::env::var("FLY_MACHINE_ID").ok(),
        "agent": session,
        "busy": busy,
        "followers": runner.followers(),
    }))
}

#[derive(Debug, Default, Deserialize)]
struct LiveQuery {
    session: Option<u64>,
    offset: Option<u64>,
    #[serde(default)]
    follow: Flag,
    format: Option<String>,
}

/// `follow=1`, `follow=true`, or bare `follow`.
#[derive(Debug, Default, Clone, Copy)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self(matches!(s.as_str(), "" | "1" | "true" | "yes")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Text,
}

fn parse_format(format: Option<&str>) -> Result<Format, String> {
    match format {
        None | Some("raw") => Ok(Format::Raw),
        Some("text") => Ok(Format::Text),
        Some(other) => Err(format!("unknown format {other:?}; use raw or text\n")),
    }
}

/// A `Range: bytes=...` header, resolved against the current length.
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// No header.
    Whole,
    /// `[start, end)` within the capture.
    Part(u64, u64),
    Unsatisfiable,
    Invalid,
}

fn parse_range(headers: &HeaderMap, len: u64) -> RangeSpec {
    let Some(value) = headers.get(header::RANGE) else {
        return RangeSpec::Whole;
    };
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeSpec::Invalid;
    };
    if spec.contains(',') {
        return RangeSpec::Invalid;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Invalid;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        (true, false) => match parse(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(suffix) => RangeSpec::Part(len.saturating_sub(suffix), len),
            None => RangeSpec::Invalid,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeSpec::Invalid;
            };
            let end = if last.is_empty() {
                len
            } else {
                match parse(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(len),
                    _ => return RangeSpec::Invalid,
                }
            };
            if start >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Part(start, end)
            }
        }
        (true, true) => RangeSpec::Invalid,
    }
}

/// `GET /live`: the capture, whole or from an offset, once or following.
async fn live(
    State(state): State<AppState>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    let format = match parse_format(query.format.as_deref()) {
        Ok(f) => f,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let capture = match state.runner.capture(query.session) {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    let progress = capture.progress();
    let len = progress.len;
    let follow = query.follow.0;
    let (start, end, status) = match (parse_range(&headers, len), query.offset) {
        (RangeSpec::Invalid, _) => {
            return (StatusCode::BAD_REQUEST, "malformed Range header\n").into_response();
        }
        (RangeSpec::Unsatisfiable, _) if !follow => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
        (RangeSpec::Unsatisfiable, _) => {
            // Following from beyond the end: wait for the bytes to come.
            let start = range_start(&headers).unwrap_or(len);
            (start, None, StatusCode::OK)
        }
        (RangeSpec::Part(start, end), _) if !follow => {
            (start, Some(end), StatusCode::PARTIAL_CONTENT)
        }
        (RangeSpec::Part(start, _), _) => (start, None, StatusCode::OK),
        (RangeSpec::Whole, Some(offset)) if offset > len && !follow => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("offset {offset} is beyond the capture's {len} bytes\n"),
            )
                .into_response();
        }
        (RangeSpec::Whole, offset) => {
            let start = offset.unwrap_or(0);
            (start, (!follow).then_some(len), StatusCode::OK)
        }
    };
    let read_end = match end {
        Some(end) => ReadEnd::At(end),
        None => ReadEnd::Follow,
    };
    let reader = match capture.reader(start, read_end).await {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the capture: {e}\n"),
            )
                .into_response();
        }
    };
    let guard = follow.then(|| state.runner.follower());
    let body = Body::from_stream(capture_stream(reader, format, guard));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Raw => "application/octet-stream",
            Format::Text => "text/plain; charset=utf-8",
        }),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(name) = capture.path().file_name().and_then(|n| n.to_str())
        && let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(end) = end {
        if format == Format::Raw
            && let Ok(value) = HeaderValue::from_str(&(end - start).to_string())
        {
            headers.insert(header::CONTENT_LENGTH, value);
        }
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(value) =
                HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end.saturating_sub(1)))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    if follow {
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    response
}

fn range_start(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .split_once('-')?
        .0
        .parse()
        .ok()
}

fn capture_stream(
    reader: CaptureReader,
    format: Format,
    guard: Option<FollowerGuard>,
) -> impl Stream<Item = std::io::Result<Bytes>> {
    let filter = (format == Format::Text).then(TextFilter::default);
    futures_util::stream::unfold(
        (reader, filter, guard),
        |(mut reader, mut filter, guard)| async move {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    let chunk = match filter.as_mut() {
                        Some(filter) => Bytes::from(filter.filter(&chunk)),
                        None => chunk,
                    };
                    Some((Ok(chunk), (reader, filter, guard)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(e), (reader, filter, guard))),
            }
        },
    )
}

#[derive(Debug, Default, Deserialize)]
struct ScreenQuery {
    format: Option<String>,
}

/// `GET /screen`: the agent's current screen as text (or `format=html`).
async fn screen(State(state): State<AppState>, Query(query): Query<ScreenQuery>) -> Response {
    let Some(session) = state.runner.session() else {
        return (StatusCode::NOT_FOUND, "no agent has been started\n").into_response();
    };
    match query.format.as_deref() {
        None | Some("text") => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            session.screen_text(),
        )
            .into_response(),
        Some("html") => Html(session.screen_html()).into_response(),
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("unknown format {other:?}; use text or html\n"),
        )
            .into_response(),
    }
}

/// How often the watch page's screen may be re-sent while output flows.
const SCREEN_FRAME: Duration = Duration::from_millis(100);

/// `GET /screen/stream`: server-sent events, each the screen as HTML,
/// sent when output arrives (at most every [`SCREEN_FRAME`]).
async fn screen_stream(State(state): State<AppState>) -> Response {
    let Some(session) = state.runner.session() else {
        return (StatusCode::NOT_FOUND, "no agent has been started\n").into_response();
    };
    let progress = session.capture().subscribe();
    let stream = futures_util::stream::unfold(
        (session, progress, true),
        |(session, mut progress, first)| async move {
            if !first {
                if progress.borrow().finished {
                    return None;
                }
                tokio::time::sleep(SCREEN_FRAME).await;
                progress.changed().await.ok()?;
            }
            progress.borrow_and_update();
            let event = Event::default().event("screen").data(session.screen_html());
            Some((Ok::<_, Infallible>(event), (session, progress, false)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /`: a page that shows the agent's screen live.
async fn page(State(state): State<AppState>) -> Html<String> {
    let (title, screen) = match state.runner.session() {
        Some(session) => {
            let info = state.runner.describe(&session);
            (
                format!(
                    "session {} · {} · {}",
                    info.session,
                    info.command.join(" "),
                    info.state
                ),
                session.screen_html(),
            )
        }
        None => ("no agent started yet".to_owned(), String::new()),
    };
    let mut escaped_title = String::new();
    escape_html_into(&mut escaped_title, &title);
    Html(
        PAGE.replace("{{TITLE}}", &escaped_title)
            .replace("{{SCREEN}}", &screen),
    )
}

const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, len: u64) -> RangeSpec {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        parse_range(&headers, len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), RangeSpec::Whole);
        assert_eq!(range("bytes=2-", 10), RangeSpec::Part(2, 10));
        assert_eq!(range("bytes=2-4", 10), RangeSpec::Part(2, 5));
        assert_eq!(range("bytes=2-400", 10), RangeSpec::Part(2, 10));
        assert_eq!(range("bytes=-3", 10), RangeSpec::Part(7, 10));
        assert_eq!(range("bytes=10-", 10), RangeSpec::Unsatisfiable);
        assert_eq!(range("bytes=5-2", 10), RangeSpec::Invalid);
        assert_eq!(range("bytes=0-1,3-4", 10), RangeSpec::Invalid);
        assert_eq!(range("items=0-1", 10), RangeSpec::Invalid);
    }

    #[test]
    fn hosts() {
        let allowed = vec![
            "localhost".to_owned(),
            "app.flycast:8080".to_owned(),
            "fdaa::1".to_owned(),
        ];
        let check = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            host_allowed(&headers, &allowed)
        };
        assert!(check("localhost:1234"));
        assert!(check("app.flycast:8080"));
        assert!(!check("app.flycast:9090"));
        assert!(check("[fdaa::1]:8080"));
        assert!(!check("evil.example"));
        assert!(host_allowed(&HeaderMap::new(), &[]));
    }

    #[test]
    fn query_tokens() {
        assert_eq!(
            query_token(Some("a=1&access_token=s%20e+c")),
            Some("s e c".to_owned())
        );
        assert_eq!(
            query_token(Some("access_token=%zz")),
            Some("%zz".to_owned())
        );
        assert_eq!(query_token(None), None);
    }
}
