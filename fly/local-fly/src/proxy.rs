//! Fly's proxy, as Fly documents it: what answers on an app's Flycast
//! address and routes each request or connection to one of the app's
//! machines (<https://fly.io/docs/reference/fly-proxy/>).
//!
//! One [`Proxy`] serves every app; [`Proxy::serve`] runs one listener (an
//! app's Flycast address and one of its services' ports). For each
//! connection the candidates are the app's machines with a service on that
//! port ([`Backend::service_on`]):
//!
//! - **raw TCP** when the port has no `http` handler: "if you don't use
//!   them, then Fly Proxy just forwards TCP to your app with no changes".
//!   The machine sees the connection come from the proxy, not the client
//!   (Flycast: "requests to your private apps get routed through the Fly
//!   Proxy").
//! - **HTTP/1.1** with the `http` handler: each request is routed on its
//!   own, with Fly's request headers ("Request headers are added by the
//!   HTTP handler service", <https://fly.io/docs/networking/request-headers/>):
//!   `fly-client-ip`, `fly-forwarded-port`, `fly-region`, `fly-request-id`,
//!   `x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-port`,
//!   `x-forwarded-ssl` and `via` (on the response too). The client's `Host`
//!   goes through as sent.
//!
//! Routing (<https://fly.io/docs/networking/dynamic-request-routing/>):
//!
//! - `fly-force-instance-id: ID` "Forces routing to a specific Machine
//!   [...] No fallback if Machine is ultimately unavailable." A machine that
//!   is not started is unavailable: the proxy does not start it (the design
//!   in `shared/DESIGN.md` holds to that whatever a proxy version does);
//!   the request fails with 503 naming the machine and its state.
//! - `fly-prefer-instance-id: ID` "Falls back to any matching Machine if the
//!   target Machine cannot be found, or is unable to accept requests. If the
//!   request is delivered to a different Machine, the
//!   fly-preferred-instance-unavailable request header will be set."
//! - otherwise load balancing and autostart, see [`route`](self::route).
//! - `fly-replay` (header or `application/vnd.fly.replay+json` body, see
//!   [`replay`]): "Fly Proxy will automatically replay the original request
//!   according to your specified routing rules". The answer carrying it
//!   never reaches the client; the original method, path, headers (`Host`
//!   included) and body go to the target, with `fly-replay-src`
//!   (`instance`, `region`, `t` "microseconds since the Unix epoch",
//!   `state`). A replay's `instance` that is stopped or suspended is
//!   started first if its service autostarts (the coordinator's way of
//!   waking an agent); `elsewhere=true` "excludes responding Machine from
//!   next load-balance". "Requests larger than 1MB cannot be replayed":
//!   bodies up to [`ProxyConfig::replay_body_limit`] are kept for a replay,
//!   a larger one is streamed and a replay answer to it is an error (413).
//!   Chained replays stop after [`ProxyConfig::max_replays`].
//!
//! Responses stream through as the machine writes them (server-sent
//! events, `?follow=1`); HTTP upgrades (WebSocket) are passed through.
//! Every failure answers the client with a plain-text error naming the app,
//! the machine and why, and is logged.
//!
//! Not modelled: TLS, HTTP/2, `fly-prefer-region` / `fly-force-region`
//! (one region), replay `timeout` / `fallback` / caching, health checks
//! (a started machine is routable), autostop, PROXY protocol. The local
//! proxy opens one connection to the machine per request, so an `http`
//! service's `connections` concurrency counts requests. A request body is
//! read (up to the replay limit) before the request is sent, so a client
//! that waits for the answer before finishing a small streamed body stalls.
//!
//! This file is the request path in the order it runs (accept, sniff,
//! route, forward, replay), kept whole so it reads top to bottom; choosing
//! a machine, parsing replays and holding bodies are submodules.

mod body;
pub mod replay;
mod route;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backends::Backends;
use body::{ClientBody, Guarded, Outgoing, ProxyBody};
use replay::Replay;
use route::{Chosen, Decision, Loads, Pinning, RouteError, Target};

/// The request header that pins a request to one machine, strictly.
pub const FORCE_INSTANCE: &str = "fly-force-instance-id";
/// The request header that prefers one machine.
pub const PREFER_INSTANCE: &str = "fly-prefer-instance-id";
/// Set on a request delivered elsewhere than its preferred machine.
pub const PREFERRED_UNAVAILABLE: &str = "fly-preferred-instance-unavailable";
/// Set on a replayed request: who replayed it.
pub const REPLAY_SRC: &str = "fly-replay-src";

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The region the proxy (and the local Fly) runs in: `fly-region`.
    pub region: String,
    /// How long a request waits for a machine to start (autostart, a
    /// replay's `instance`) or to finish changing state.
    pub start_timeout: Duration,
    /// How long one connection attempt to a machine may take.
    pub connect_timeout: Duration,
    /// How long the proxy keeps retrying to connect to a machine it has
    /// just started, or one the request is pinned to (its program may not
    /// listen yet). A balanced request moves on to another machine at once.
    pub connect_patience: Duration,
    /// How many chained replays one request may go through.
    pub max_replays: u8,
    /// The largest request body kept for a replay: Fly's "1MB".
    pub replay_body_limit: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            region: "ams".to_owned(),
            start_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            connect_patience: Duration::from_secs(10),
            max_replays: 10,
            replay_body_limit: 1_000_000,
        }
    }
}

/// Fly's proxy over the machines `B` knows; shared by every listener.
pub struct Proxy<B: Backends> {
    backends: Arc<B>,
    config: ProxyConfig,
    loads: Arc<Loads>,
}

/// One client connection.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    shutdown: CancellationToken,
}

/// How long to wait for the first bytes of a connection whose protocol
/// no machine tells.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JSON replay body read.
const REPLAY_JSON_LIMIT: usize = 64 * 1024;
/// Pause between looks at machines changing state, and between refused
/// connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl<B: Backends> Proxy<B> {
    pub fn new(backends: Arc<B>, config: ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            backends,
            config,
            loads: Arc::new(Loads::default()),
        })
    }

    /// The requests (or connections) in flight to `machine`, over all its
    /// services.
    pub fn in_flight(&self, machine: &str) -> u32 {
        self.loads.of_machine(machine)
    }

    /// Serves `app` on `listener` (the app's Flycast address and one of its
    /// services' ports) until `shutdown`, which also ends the connections
    /// it accepted.
    pub async fn serve(
        self: Arc<Self>,
        app: String,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) {
        let local = match listener.local_addr() {
            Ok(local) => local,
            Err(error) => {
                warn!(%app, %error, "proxy listener has no address");
                return;
            }
        };
        info!(%app, %local, "proxy listening");
        let app: Arc<str> = app.into();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%app, %local, %error, "proxy accept failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let proxy = Arc::clone(&self);
            let app = Arc::clone(&app);
            let conn = Conn {
                peer,
                local,
                shutdown: shutdown.clone(),
            };
            tokio::spawn(async move {
                let shutdown = conn.shutdown.clone();
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = proxy.connection(app, conn, stream) => {}
                }
            });
        }
        info!(%app, %local, "proxy stopped");
    }

    async fn connection(self: Arc<Self>, app: Arc<str>, conn: Conn, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let port = conn.local.port();
        let services: Vec<bool> = self
            .backends
            .machines(&app)
            .iter()
            .filter_map(|m| m.service_on(port).map(|s| s.is_http(port)))
            .collect();
        let http = if services.is_empty() {
            // No machine tells what the port speaks: answer HTTP clients
            // with an HTTP error, close anything else.
            sniff_http(&stream).await
        } else {
            services.contains(&true)
        };
        if http {
            self.serve_http(app, conn, stream).await;
        } else {
            self.serve_tcp(&app, &conn, stream).await;
        }
    }

    /// Raw TCP: one machine per connection, bytes copied both ways.
    async fn serve_tcp(&self, app: &str, conn: &Conn, mut client: TcpStream) {
        let mut target = Target::new(app, conn.local.port(), Pinning::None);
        let (chosen, mut upstream) = match self.reach(&mut target).await {
            Ok(reached) => reached,
            Err(error) => {
                warn!(%app, peer = %conn.peer, port = conn.local.port(), "closing the connection: {}", error.message);
                return;
            }
        };
        debug!(%app, machine = %chosen.backend.id, peer = %conn.peer, "tcp connection");
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            debug!(%app, machine = %chosen.backend.id, %error, "tcp connection ended");
        }
        drop(chosen);
    }

    async fn serve_http(self: Arc<Self>, app: Arc<str>, conn: Conn, stream: TcpStream) {
        let peer = conn.peer;
        let conn = Arc::new(conn);
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = Arc::clone(&self);
            let app = Arc::clone(&app);
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(proxy.handle(&app, &conn, request).await) }
        });
        if let Err(error) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await
        {
            debug!(%peer, %error, "client connection ended");
        }
    }

    /// One HTTP request, answered.
    async fn handle(
        &self,
        app: &str,
        conn: &Conn,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let request_id = request_id(&self.config.region);
        let method = request.method().clone();
        let uri = request.uri().clone();
        let mut response = match self.forward(app, conn, &request_id, request).await {
            Ok(response) => response,
            Err(error) => {
                warn!(%app, %request_id, %method, %uri, status = %error.status, "{}", error.message);
                error_response(&error)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("fly-request-id", value);
        }
        response
    }

    async fn forward(
        &self,
        app: &str,
        conn: &Conn,
        request_id: &str,
        mut request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, RouteError> {
        let upgrade = is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let mut client_headers = parts.headers;
        strip_hop_by_hop(&mut client_headers, upgrade.is_some());
        // The proxy has answered any `Expect: 100-continue` by reading the
        // body; a machine gets the body whole (or streaming) either way.
        client_headers.remove(header::EXPECT);
        // The proxy's to set, not the client's.
        client_headers.remove(REPLAY_SRC);
        client_headers.remove(PREFERRED_UNAVAILABLE);
        if !client_headers.contains_key(header::HOST) {
            let host = parts
                .uri
                .authority()
                .map_or_else(|| conn.local.to_string(), |a| a.to_string());
            if let Ok(host) = HeaderValue::from_str(&host) {
                client_headers.insert(header::HOST, host);
            }
        }
        let pinning = pinning(&client_headers)?;
        let mut path = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let mut body = ClientBody::read(body, self.config.replay_body_limit)
            .await
            .map_err(|error| RouteError {
                status: StatusCode::BAD_REQUEST,
                message: format!("reading the request body for app {app}: {error}"),
            })?;

        let port = conn.local.port();
        let mut target = Target::new(app, port, pinning);
        let mut replay_src: Option<HeaderValue> = None;
        let mut replays = 0u8;
        loop {
            let (chosen, stream) = self.reach(&mut target).await?;
            let machine = &chosen.backend;
            let mut headers =
                self.request_headers(&client_headers, conn, request_id, parts.version);
            if let Some(src) = &replay_src {
                headers.insert(REPLAY_SRC, src.clone());
            }
            if let Some(preferred) = &chosen.preferred_unavailable
                && let Ok(value) = HeaderValue::from_str(preferred)
            {
                headers.insert(PREFERRED_UNAVAILABLE, value);
            }
            let Some(outgoing) = body.outgoing() else {
                return Err(RouteError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("the request body for app {app} was already sent"),
                });
            };
            let mut upstream = Request::new(outgoing);
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = path.parse().map_err(|error| RouteError {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "path {path:?} for machine {} of app {}: {error}",
                    machine.id, machine.app
                ),
            })?;
            *upstream.headers_mut() = headers;
            debug!(app = %machine.app, machine = %machine.id, %request_id, %path, "forwarding");
            let response = send(stream, upstream).await.map_err(|error| RouteError {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "machine {} of app {} failed to answer: {error}",
                    machine.id, machine.app
                ),
            })?;

            let replay = match replay_of(response).await {
                Ok(Answer::Pass(response)) => {
                    return Ok(pass_on(response, chosen, upgrade, conn.shutdown.clone()));
                }
                Ok(Answer::Replay(replay)) => replay,
                Err(error) => {
                    return Err(RouteError {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!(
                            "machine {} of app {} answered an invalid fly-replay: {error}",
                            machine.id, machine.app
                        ),
                    });
                }
            };
            if !body.replayable() {
                return Err(RouteError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "machine {} of app {} answered fly-replay, but the request body is larger than {} bytes and cannot be replayed (Fly: \"Requests larger than 1MB cannot be replayed\")",
                        machine.id, machine.app, self.config.replay_body_limit
                    ),
                });
            }
            if replays >= self.config.max_replays {
                return Err(RouteError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "machine {} of app {} answered fly-replay after {replays} replays: too many chained replays",
                        machine.id, machine.app
                    ),
                });
            }
            replays += 1;
            info!(from = %machine.id, app = %machine.app, ?replay, %request_id, "replaying");
            let bad = |message: String| RouteError {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "machine {} of app {} answered an invalid fly-replay: {message}",
                    machine.id, machine.app
                ),
            };
            apply_transform(&replay, &mut client_headers, &mut path).map_err(bad)?;
            let src = format!(
                "instance={};region={};t={};state={}",
                machine.id,
                machine.region,
                micros_since_epoch(),
                replay.state.as_deref().unwrap_or_default()
            );
            replay_src = Some(
                HeaderValue::from_str(&src)
                    .map_err(|_| bad(format!("state {:?} is not a header value", replay.state)))?,
            );
            let mut next = Target::new(
                replay.app.as_deref().unwrap_or(&target.app),
                port,
                match (&replay.instance, &replay.prefer_instance) {
                    (Some(instance), _) => Pinning::Instance(instance.clone()),
                    (None, Some(preferred)) => Pinning::Prefer(preferred.clone()),
                    (None, None) => Pinning::None,
                },
            );
            if replay.elsewhere {
                next.exclude.push(machine.id.clone());
            }
            next.regions = replay.region.clone();
            target = next;
            drop(chosen);
        }
    }

    /// The request headers a machine gets: the client's, and Fly's.
    fn request_headers(
        &self,
        client: &HeaderMap,
        conn: &Conn,
        request_id: &str,
        version: Version,
    ) -> HeaderMap {
        let mut headers = client.clone();
        let ip = conn.peer.ip().to_canonical().to_string();
        let port = conn.local.port().to_string();
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        set("fly-client-ip", &ip);
        set("fly-forwarded-port", &port);
        set("fly-region", &self.config.region);
        set("fly-request-id", request_id);
        set("x-forwarded-proto", "http");
        set("x-forwarded-port", &port);
        set("x-forwarded-ssl", "off");
        let forwarded_for = match client.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
            _ => ip,
        };
        set("x-forwarded-for", &forwarded_for);
        append_via(&mut headers, version);
        headers
    }

    /// Chooses a machine for `target` and connects to it; a balanced
    /// choice that cannot be reached is left out and another chosen.
    async fn reach(&self, target: &mut Target) -> Result<(Chosen, TcpStream), RouteError> {
        let mut unreachable: Vec<String> = Vec::new();
        loop {
            let chosen = match self.route(target).await {
                Ok(chosen) => chosen,
                Err(mut error) => {
                    if !unreachable.is_empty() {
                        error.status = StatusCode::BAD_GATEWAY;
                        error.message = format!(
                            "{}; could not connect to {}",
                            error.message,
                            unreachable.join("; ")
                        );
                    }
                    return Err(error);
                }
            };
            let address = SocketAddr::new(chosen.backend.address, chosen.service.internal_port);
            let pinned = matches!(target.pinning, Pinning::Force(_) | Pinning::Instance(_));
            let patience = if chosen.started || pinned {
                self.config.connect_patience
            } else {
                Duration::ZERO
            };
            match connect(address, self.config.connect_timeout, patience).await {
                Ok(stream) => return Ok((chosen, stream)),
                Err(error) => {
                    let what = format!(
                        "machine {} of app {} at {address}: {error}",
                        chosen.backend.id, chosen.backend.app
                    );
                    warn!("cannot connect to {what}");
                    if pinned {
                        return Err(RouteError {
                            status: StatusCode::BAD_GATEWAY,
                            message: format!("could not connect to {what}"),
                        });
                    }
                    target.exclude.push(chosen.backend.id.clone());
                    unreachable.push(what);
                }
            }
        }
    }

    /// Chooses a machine for `target`, starting one if that is the choice,
    /// waiting (up to `start_timeout`) while machines change state.
    async fn route(&self, target: &Target) -> Result<Chosen, RouteError> {
        let deadline = Instant::now() + self.config.start_timeout;
        let mut failed: Vec<(String, String)> = Vec::new();
        loop {
            let machines = self.backends.machines(&target.app);
            match route::decide(&self.loads, &machines, target, &failed) {
                Decision::Route(chosen) => return Ok(chosen),
                Decision::Start(mut chosen) => {
                    let id = chosen.backend.id.clone();
                    let app = chosen.backend.app.clone();
                    info!(%app, machine = %id, "starting the machine for a request");
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(remaining, self.backends.start(&app, &id)).await {
                        Ok(Ok(())) => {
                            chosen.started = true;
                            return Ok(chosen);
                        }
                        Ok(Err(why)) => {
                            warn!(%app, machine = %id, "could not start the machine: {why}");
                            failed.push((id, why));
                        }
                        Err(_) => {
                            return Err(RouteError {
                                status: StatusCode::GATEWAY_TIMEOUT,
                                message: format!(
                                    "machine {id} of app {app} did not start within {:?}",
                                    self.config.start_timeout
                                ),
                            });
                        }
                    }
                }
                Decision::Wait(reason) => {
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(RouteError::unavailable(format!(
                            "{reason} (waited {:?})",
                            self.config.start_timeout
                        )));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Decision::Fail(error) => return Err(error),
            }
        }
    }
}

/// The pinning a client asked for.
fn pinning(headers: &HeaderMap) -> Result<Pinning, RouteError> {
    let value = |name: &str| -> Result<Option<String>, RouteError> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => {
                let value = value.to_str().map_err(|_| RouteError {
                    status: StatusCode::BAD_REQUEST,
                    message: format!("{name} is not a machine id"),
                })?;
                let value = value.trim();
                Ok((!value.is_empty()).then(|| value.to_owned()))
            }
        }
    };
    if let Some(id) = value(FORCE_INSTANCE)? {
        return Ok(Pinning::Force(id));
    }
    if let Some(id) = value(PREFER_INSTANCE)? {
        return Ok(Pinning::Prefer(id));
    }
    Ok(Pinning::None)
}

/// Connects to `address`, retrying for `patience`.
async fn connect(
    address: SocketAddr,
    timeout: Duration,
    patience: Duration,
) -> io::Result<TcpStream> {
    let deadline = Instant::now() + patience;
    loop {
        let error = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(error)) => error,
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(error);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Sends `request` on a fresh connection to a machine.
async fn send(
    stream: TcpStream,
    request: Request<Outgoing>,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "machine connection ended");
        }
    });
    sender.send_request(request).await
}

/// A machine's response, or the replay it asks for.
enum Answer {
    Pass(Response<Incoming>),
    Replay(Replay),
}

/// Whether a machine's response asks for a replay, and which.
async fn replay_of(response: Response<Incoming>) -> Result<Answer, String> {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(replay::REPLAY_CONTENT_TYPE));
    if json {
        let bytes: Bytes = http_body_util::Limited::new(response.into_body(), REPLAY_JSON_LIMIT)
            .collect()
            .await
            .map_err(|error| format!("reading the replay body: {error}"))?
            .to_bytes();
        return replay::parse_json(&bytes).map(Answer::Replay);
    }
    match response.headers().get(replay::REPLAY_HEADER) {
        None => Ok(Answer::Pass(response)),
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| "the header is not ASCII".to_owned())?;
            replay::parse_header(value).map(Answer::Replay)
        }
    }
}

/// Applies a replay's `transform` to the request.
fn apply_transform(
    replay: &Replay,
    headers: &mut HeaderMap,
    path: &mut String,
) -> Result<(), String> {
    let transform = &replay.transform;
    if let Some(new) = &transform.path {
        if !new.starts_with('/') || new.parse::<hyper::Uri>().is_err() {
            return Err(format!("transform.path {new:?} is not a path"));
        }
        new.clone_into(path);
    }
    for name in &transform.delete_headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("transform.delete_headers: {name:?} is not a header name"))?;
        headers.remove(name);
    }
    for set in &transform.set_headers {
        let name = HeaderName::try_from(set.name.as_str())
            .map_err(|_| format!("transform.set_headers: {:?} is not a header name", set.name))?;
        let value = HeaderValue::from_str(&set.value).map_err(|_| {
            format!(
                "transform.set_headers: {:?} is not a header value",
                set.value
            )
        })?;
        headers.insert(name, value);
    }
    Ok(())
}

/// A machine's answer, on its way to the client.
fn pass_on(
    mut response: Response<Incoming>,
    chosen: Chosen,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    shutdown: CancellationToken,
) -> Response<ProxyBody> {
    let machine = chosen.backend.id.clone();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = upgrade
    {
        let upstream = hyper::upgrade::on(&mut response);
        let guard = chosen.guard;
        tokio::spawn(async move {
            match tokio::join!(client, upstream) {
                (Ok(client), Ok(upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                            if let Err(error) = copied {
                                debug!(%machine, %error, "upgraded connection ended");
                            }
                        }
                    }
                }
                (client, upstream) => {
                    warn!(
                        %machine,
                        client = ?client.err(),
                        machine_side = ?upstream.err(),
                        "the upgrade did not complete"
                    );
                }
            }
            drop(guard);
        });
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        append_via(&mut parts.headers, Version::HTTP_11);
        return Response::from_parts(parts, body::full(Bytes::new()));
    }
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    append_via(&mut parts.headers, Version::HTTP_11);
    let body = Guarded {
        inner: incoming,
        guard: Some(chosen.guard),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// The proxy's own answer: a status and a line saying why.
fn error_response(error: &RouteError) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(format!("{}\n", error.message)));
    *response.status_mut() = error.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    append_via(response.headers_mut(), Version::HTTP_11);
    response
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the headers that belong to one connection, not to the message
/// (RFC 9110 §7.6.1); an upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::try_from(token.trim()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in ["keep-alive", "proxy-connection", "te", "transfer-encoding"] {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Adds the proxy to `via` ("a connection through the Fly edge may show
/// `2 fly.io`").
fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = if version == Version::HTTP_10 {
        "1.0 fly.io"
    } else {
        "1.1 fly.io"
    };
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {hop}"),
        _ => hop.to_owned(),
    };
    if let Ok(via) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, via);
    }
}

/// Whether a connection's first bytes look like an HTTP/1 request.
async fn sniff_http(stream: &TcpStream) -> bool {
    let mut buffer = [0u8; 8];
    let peeked = tokio::time::timeout(SNIFF_TIMEOUT, async {
        loop {
            match stream.peek(&mut buffer).await {
                Ok(n) if n >= buffer.len() => return n,
                Ok(0) | Err(_) => return 0,
                Ok(n) if buffer[..n].contains(&b' ') => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .unwrap_or(0);
    let Some(space) = buffer[..peeked].iter().position(|b| *b == b' ') else {
        return false;
    };
    matches!(
        &buffer[..space],
        b"GET"
            | b"HEAD"
            | b"POST"
            | b"PUT"
            | b"DELETE"
            | b"OPTIONS"
            | b"PATCH"
            | b"CONNECT"
            | b"TRACE"
    )
}

fn micros_since_epoch() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// A request id like Fly's (`01FGKT7HGT2Q1PD6J57QKN1BGT-iad`): a ULID (time
/// and randomness, Crockford base32) and the region.
fn request_id(region: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & ((1 << 48) - 1);
    let random = (u128::from(fastrand::u64(..)) << 16)
        ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff);
    let value = (u128::from(millis) << 80) | (random & ((1 << 80) - 1));
    let mut id = String::with_capacity(27 + region.len());
    for i in (0..26).rev() {
        id.push(ALPHABET[((value >> (i * 5)) & 31) as usize] as char);
    }
    id.push('-');
    id.push_str(region);
    id
}
