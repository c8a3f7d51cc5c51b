//! The local Fly's proxy against fake machines: small HTTP and TCP servers,
//! each on its own loopback address, behind a fake `Backends` whose
//! `start` flips a machine to started after a short delay. A fake machine
//! that is not started answers 599 (HTTP) or "not running" (TCP), so a
//! request routed to a machine that is not running shows.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::Frame;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use local_fly::backends::{Backend, Backends, Concurrency, Port, RouteState, Service};
use local_fly::proxy::{Proxy, ProxyConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use RouteState::{Startable, Started};

// ---------------------------------------------------------------- fakes

/// What a fake machine received.
#[derive(Debug, Clone)]
struct Recorded {
    machine: String,
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request reaching a fake machine.
struct Call {
    record: Recorded,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

type Behaviour =
    Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Fake {
    machines: Mutex<Vec<Backend>>,
    /// Every start the proxy asked for (that did something).
    starts: Mutex<Vec<String>>,
    start_delay: Duration,
}

impl Fake {
    fn state(&self, id: &str) -> Option<RouteState> {
        lock(&self.machines)
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.state)
    }

    fn set_state(&self, id: &str, state: RouteState) {
        if let Some(m) = lock(&self.machines).iter_mut().find(|m| m.id == id) {
            m.state = state;
        }
    }

    fn starts(&self) -> Vec<String> {
        lock(&self.starts).clone()
    }
}

impl Backends for Fake {
    fn machines(&self, app: &str) -> Vec<Backend> {
        lock(&self.machines)
            .iter()
            .filter(|m| m.app == app)
            .cloned()
            .collect()
    }

    async fn start(&self, _app: &str, machine: &str) -> Result<(), String> {
        let starting = {
            let mut machines = lock(&self.machines);
            let Some(m) = machines.iter_mut().find(|m| m.id == machine) else {
                return Err(format!("no machine {machine}"));
            };
            match m.state {
                Started => return Ok(()),
                Startable => {
                    m.state = RouteState::Unavailable;
                    true
                }
                RouteState::Unavailable => false,
            }
        };
        if starting {
            lock(&self.starts).push(machine.to_owned());
            tokio::time::sleep(self.start_delay).await;
            self.set_state(machine, Started);
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state(machine) != Some(Started) {
            if Instant::now() > deadline {
                return Err(format!("{machine} did not start"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// A fresh loopback address for each fake machine.
fn next_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 2) as u8)
}

/// A machine's service options.
#[derive(Clone, Default)]
struct Options {
    http: bool,
    autostart: Option<bool>,
    concurrency: Option<Concurrency>,
}

impl Options {
    fn http() -> Self {
        Self {
            http: true,
            ..Self::default()
        }
    }

    fn autostart(mut self, on: bool) -> Self {
        self.autostart = Some(on);
        self
    }

    fn limits(mut self, kind: &str, soft: u32, hard: u32) -> Self {
        self.concurrency = Some(Concurrency {
            kind: kind.to_owned(),
            soft_limit: Some(soft),
            hard_limit: Some(hard),
        });
        self
    }
}

struct Harness {
    fake: Arc<Fake>,
    proxy: Arc<Proxy<Fake>>,
    records: Arc<Mutex<Vec<Recorded>>>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    fn new(config: ProxyConfig) -> Self {
        let fake = Arc::new(Fake {
            start_delay: Duration::from_millis(150),
            ..Fake::default()
        });
        Self {
            proxy: Proxy::new(Arc::clone(&fake), config),
            fake,
            records: Arc::default(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The proxy listening for `app`: its port is the one machines'
    /// services must name.
    async fn listen(&self, app: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(Arc::clone(&self.proxy).serve(
            app.to_owned(),
            listener,
            self.shutdown.clone(),
        ));
        address
    }

    fn add(&self, app: &str, id: &str, state: RouteState, ip: Ipv4Addr, service: Service) {
        lock(&self.fake.machines).push(Backend {
            id: id.to_owned(),
            app: app.to_owned(),
            region: "ams".to_owned(),
            state,
            address: IpAddr::V4(ip),
            services: vec![service],
        });
    }

    /// A fake HTTP machine of `app` serving proxy port `port`.
    async fn http_machine(
        &self,
        app: &str,
        id: &str,
        state: RouteState,
        port: u16,
        options: Options,
        behaviour: Behaviour,
    ) {
        let ip = next_address();
        let listener = TcpListener::bind((ip, 0)).await.expect("bind machine");
        let internal_port = listener.local_addr().expect("address").port();
        self.add(app, id, state, ip, service(port, internal_port, &options));
        let fake = Arc::clone(&self.fake);
        let records = Arc::clone(&self.records);
        let machine = id.to_owned();
        let router = axum::Router::new().fallback(move |mut request: Request<Body>| {
            let fake = Arc::clone(&fake);
            let records = Arc::clone(&records);
            let machine = machine.clone();
            let behaviour = Arc::clone(&behaviour);
            async move {
                let upgrade = request
                    .headers()
                    .contains_key("upgrade")
                    .then(|| hyper::upgrade::on(&mut request));
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 4 << 20)
                    .await
                    .unwrap_or_default();
                let record = Recorded {
                    machine: machine.clone(),
                    method: parts.method.to_string(),
                    path: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts.headers,
                    body,
                };
                lock(&records).push(record.clone());
                if fake.state(&machine) != Some(Started) {
                    return text(599, &format!("machine {machine} is not running"));
                }
                behaviour(Call { record, upgrade }).await
            }
        });
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
    }

    /// A fake TCP machine: tells whom it sees connecting, then echoes.
    async fn tcp_machine(
        &self,
        app: &str,
        id: &str,
        state: RouteState,
        port: u16,
        options: Options,
    ) {
        let ip = next_address();
        let listener = TcpListener::bind((ip, 0)).await.expect("bind machine");
        let internal_port = listener.local_addr().expect("address").port();
        self.add(app, id, state, ip, service(port, internal_port, &options));
        let fake = Arc::clone(&self.fake);
        let machine = id.to_owned();
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                if fake.state(&machine) != Some(Started) {
                    let _ = stream.write_all(b"not running\n").await;
                    continue;
                }
                let greeting = format!("{machine} sees {}\n", peer.ip());
                tokio::spawn(async move {
                    let _ = stream.write_all(greeting.as_bytes()).await;
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
    }

    fn records(&self, machine: &str) -> Vec<Recorded> {
        lock(&self.records)
            .iter()
            .filter(|r| r.machine == machine)
            .cloned()
            .collect()
    }

    fn count(&self) -> usize {
        lock(&self.records).len()
    }
}

fn service(port: u16, internal_port: u16, options: &Options) -> Service {
    Service {
        protocol: "tcp".to_owned(),
        internal_port,
        ports: vec![Port {
            port: Some(port),
            handlers: if options.http {
                vec!["http".to_owned()]
            } else {
                Vec::new()
            },
        }],
        autostart: options.autostart,
        concurrency: options.concurrency.clone(),
    }
}

fn text(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(body.to_owned()))
        .expect("response")
}

/// A behaviour answering at once.
fn answer(f: impl Fn(&Recorded) -> Response<Body> + Send + Sync + 'static) -> Behaviour {
    Arc::new(move |call: Call| {
        let response = f(&call.record);
        Box::pin(async move { response })
    })
}

/// Answers 200 with the machine's id.
fn named() -> Behaviour {
    answer(|r| text(200, &r.machine))
}

/// Answers requests for `/hold` once `gate` opens, others at once.
fn held(gate: watch::Receiver<bool>) -> Behaviour {
    Arc::new(move |call: Call| {
        let mut gate = gate.clone();
        Box::pin(async move {
            if call.record.path.starts_with("/hold") {
                let _ = gate.wait_for(|open| *open).await;
            }
            text(200, &call.record.machine)
        })
    })
}

/// Answers with a `fly-replay` header unless the request was replayed.
fn replays_with(header: &'static str) -> Behaviour {
    answer(move |r| {
        if r.header("fly-replay-src").is_some() {
            return text(200, &format!("{} after a replay", r.machine));
        }
        Response::builder()
            .status(409)
            .header("fly-replay", header)
            .body(Body::from("the client must not see this"))
            .expect("response")
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, HeaderMap) {
    let mut request = client().get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.expect("body"), headers)
}

fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn micros_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Sends `head` (and `body`) on a raw connection and reads the answer's
/// status line and headers.
async fn raw(address: SocketAddr, head: &str) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .expect("an answer in time")
            .expect("read");
        answer.push_str(&line);
        if n == 0 || line == "\r\n" {
            break;
        }
    }
    (reader, answer)
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_to_the_least_loaded_started_machine_with_flys_headers() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("web").await;
    let (open, gate) = watch::channel(false);
    for id in ["m1", "m2", "m3"] {
        h.http_machine(
            "web",
            id,
            Started,
            address.port(),
            Options::http(),
            held(gate.clone()),
        )
        .await;
    }
    h.http_machine(
        "web",
        "asleep",
        Startable,
        address.port(),
        Options::http().autostart(true),
        named(),
    )
    .await;

    // Three requests in flight at once: each goes to a machine with none.
    let mut held_requests = Vec::new();
    for n in 1..=3 {
        held_requests.push(tokio::spawn(get(address, "/hold", &[])));
        eventually("the request in flight", || h.count() == n).await;
    }
    let machines: Vec<String> = lock(&h.records).iter().map(|r| r.machine.clone()).collect();
    let mut distinct = machines.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["m1", "m2", "m3"], "{machines:?}");
    for id in ["m1", "m2", "m3"] {
        assert_eq!(h.proxy.in_flight(id), 1, "{id}");
    }
    open.send(true).expect("open");
    for (request, machine) in held_requests.into_iter().zip(&machines) {
        let (status, body, _) = request.await.expect("task");
        assert_eq!((status, body.as_str()), (200, machine.as_str()));
    }
    eventually("loads given back", || {
        ["m1", "m2", "m3"]
            .iter()
            .all(|id| h.proxy.in_flight(id) == 0)
    })
    .await;

    // One after another: random among equals, all of them used; the
    // stopped machine is not started while the others are below soft_limit.
    for _ in 0..60 {
        let (status, _, _) = get(address, "/", &[]).await;
        assert_eq!(status, 200);
    }
    for id in ["m1", "m2", "m3"] {
        assert!(h.records(id).len() > 3, "{id}: {}", h.records(id).len());
    }
    assert!(h.fake.starts().is_empty());
    assert!(h.records("asleep").is_empty());

    // Fly's headers, set by the proxy whatever the client sent.
    let (status, body, headers) = get(
        address,
        "/headers?x=1",
        &[
            ("fly-client-ip", "6.6.6.6"),
            ("fly-replay-src", "instance=forged"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let record = h
        .records(&body)
        .into_iter()
        .find(|r| r.path == "/headers?x=1")
        .expect("recorded");
    assert_eq!(record.method, "GET");
    assert_eq!(record.header("host"), Some(address.to_string().as_str()));
    assert_eq!(record.header("fly-client-ip"), Some("127.0.0.1"));
    assert_eq!(record.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        record.header("fly-forwarded-port"),
        Some(address.port().to_string().as_str())
    );
    assert_eq!(record.header("fly-region"), Some("ams"));
    assert_eq!(record.header("x-forwarded-proto"), Some("http"));
    assert_eq!(record.header("x-custom"), Some("kept"));
    assert_eq!(record.header("fly-replay-src"), None);
    assert!(
        record
            .header("via")
            .is_some_and(|v| v.contains("1.1 fly.io"))
    );
    let request_id = record.header("fly-request-id").expect("fly-request-id");
    assert!(
        request_id.ends_with("-ams") && request_id.len() == 30,
        "{request_id}"
    );
    assert_eq!(
        headers.get("fly-request-id").and_then(|v| v.to_str().ok()),
        Some(request_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_instance_is_strict_and_never_wakes() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("agents").await;
    let auto = Options::http().autostart(true);
    h.http_machine(
        "agents",
        "a1",
        Started,
        address.port(),
        auto.clone(),
        named(),
    )
    .await;
    h.http_machine(
        "agents",
        "a2",
        Started,
        address.port(),
        auto.clone(),
        named(),
    )
    .await;
    h.http_machine("agents", "asleep", Startable, address.port(), auto, named())
        .await;

    for _ in 0..10 {
        let (status, body, _) = get(address, "/", &[("fly-force-instance-id", "a2")]).await;
        assert_eq!((status, body.as_str()), (200, "a2"));
    }
    assert_eq!(h.records("a2").len(), 10);
    assert!(h.records("a1").is_empty());

    // A stopped machine: an error naming it, no fallback, no start.
    let (status, body, _) = get(address, "/", &[("fly-force-instance-id", "asleep")]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("asleep") && body.contains("not started"),
        "{body}"
    );
    assert!(body.contains("does not start"), "{body}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h.fake.starts().is_empty(), "{:?}", h.fake.starts());
    assert_eq!(h.fake.state("asleep"), Some(Startable));
    assert!(h.records("asleep").is_empty());
    assert!(h.records("a1").is_empty(), "no fallback");

    let (status, body, _) = get(address, "/", &[("fly-force-instance-id", "nope")]).await;
    assert_eq!(status, 503);
    assert!(body.contains("app agents has no machine nope"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_instance_falls_back_and_says_so() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("web").await;
    h.http_machine(
        "web",
        "up",
        Started,
        address.port(),
        Options::http(),
        named(),
    )
    .await;
    h.http_machine(
        "web",
        "down",
        Startable,
        address.port(),
        Options::http(),
        named(),
    )
    .await;

    let (status, body, _) = get(address, "/a", &[("fly-prefer-instance-id", "down")]).await;
    assert_eq!((status, body.as_str()), (200, "up"));
    let record = h.records("up").pop().expect("recorded");
    assert_eq!(
        record.header("fly-preferred-instance-unavailable"),
        Some("down")
    );

    let (status, body, _) = get(
        address,
        "/b",
        &[
            ("fly-prefer-instance-id", "up"),
            ("fly-preferred-instance-unavailable", "forged"),
        ],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "up"));
    let record = h.records("up").pop().expect("recorded");
    assert_eq!(record.path, "/b");
    assert_eq!(record.header("fly-preferred-instance-unavailable"), None);
    assert!(h.fake.starts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostarts_a_machine_when_none_is_started_and_only_then() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("web").await;
    let auto = Options::http().autostart(true);
    h.http_machine(
        "web",
        "s1",
        Startable,
        address.port(),
        auto.clone(),
        named(),
    )
    .await;
    h.http_machine("web", "s2", Startable, address.port(), auto, named())
        .await;

    let (status, body, _) = get(address, "/", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.fake.starts(), std::slice::from_ref(&body));
    assert_eq!(h.fake.state(&body), Some(Started));
    // The started machine is below its soft_limit: nothing else starts.
    for _ in 0..5 {
        let (status, again, _) = get(address, "/", &[]).await;
        assert_eq!((status, again.as_str()), (200, body.as_str()));
    }
    assert_eq!(h.fake.starts().len(), 1);

    // Without autostart, a request fails and nothing starts.
    let other = h.listen("manual").await;
    h.http_machine(
        "manual",
        "m",
        Startable,
        other.port(),
        Options::http().autostart(false),
        named(),
    )
    .await;
    let (status, body, _) = get(other, "/", &[]).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("app manual") && body.contains("does not autostart"),
        "{body}"
    );
    assert_eq!(h.fake.state("m"), Some(Startable));
    assert_eq!(h.fake.starts().len(), 1);

    // An app without machines (the proxy cannot tell the protocol from
    // them, and answers an HTTP client in HTTP).
    let ghost = h.listen("ghost").await;
    let (status, body, _) = get(ghost, "/", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("app ghost has no machines"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_original_request_by_header_with_its_host() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("web").await;
    h.http_machine(
        "web",
        "router",
        Started,
        address.port(),
        Options::http(),
        replays_with("instance=worker;state=hello"),
    )
    .await;
    h.http_machine(
        "web",
        "worker",
        Started,
        address.port(),
        Options::http(),
        named(),
    )
    .await;

    let body: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    let before = micros_now();
    let response = client()
        .post(format!("http://{address}/screen?x=1"))
        .header("host", "lazy-worktree-coordinator.flycast")
        .header("authorization", "Bearer runner-token")
        .header("fly-force-instance-id", "router")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("fly-replay").is_none());
    assert_eq!(response.text().await.expect("body"), "worker");

    let first = h.records("router").pop().expect("the router saw it");
    assert_eq!(first.body.len(), body.len());
    let replayed = h.records("worker").pop().expect("the worker saw it");
    assert_eq!(replayed.method, "POST");
    assert_eq!(replayed.path, "/screen?x=1");
    assert_eq!(
        replayed.header("host"),
        Some("lazy-worktree-coordinator.flycast")
    );
    assert_eq!(
        replayed.header("authorization"),
        Some("Bearer runner-token")
    );
    assert_eq!(replayed.body.as_ref(), body.as_slice());
    assert_eq!(replayed.header("fly-client-ip"), Some("127.0.0.1"));
    assert_eq!(
        replayed.header("fly-request-id"),
        first.header("fly-request-id")
    );
    let src = replayed.header("fly-replay-src").expect("fly-replay-src");
    assert_eq!(field(src, "instance"), Some("router"), "{src}");
    assert_eq!(field(src, "region"), Some("ams"), "{src}");
    assert_eq!(field(src, "state"), Some("hello"), "{src}");
    let t: u128 = field(src, "t").and_then(|t| t.parse().ok()).expect("t");
    assert!(t >= before && t <= micros_now(), "{src}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_to_another_app_waking_the_instance_if_it_autostarts() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("coordinator").await;
    let port = address.port();
    h.http_machine(
        "coordinator",
        "coord",
        Started,
        port,
        Options::http(),
        answer(|r| {
            let target = r.path.trim_start_matches('/').to_owned();
            Response::builder()
                .status(409)
                .header("fly-replay", format!("app=agents;instance={target}"))
                .body(Body::empty())
                .expect("response")
        }),
    )
    .await;
    let auto = Options::http().autostart(true);
    h.http_machine("agents", "awake", Started, port, auto.clone(), named())
        .await;
    h.http_machine("agents", "sleeper", Startable, port, auto, named())
        .await;
    h.http_machine(
        "agents",
        "manual",
        Startable,
        port,
        Options::http().autostart(false),
        named(),
    )
    .await;

    let (status, body, _) = get(address, "/sleeper", &[]).await;
    assert_eq!((status, body.as_str()), (200, "sleeper"));
    assert_eq!(h.fake.starts(), ["sleeper"]);
    let replayed = h.records("sleeper").pop().expect("recorded");
    assert_eq!(replayed.header("host"), Some(address.to_string().as_str()));
    let src = replayed.header("fly-replay-src").expect("fly-replay-src");
    assert_eq!(field(src, "instance"), Some("coord"));
    assert_eq!(field(src, "state"), Some(""));
    assert!(h.records("awake").is_empty());

    // A target that does not autostart stays down: a clear error.
    let (status, body, _) = get(address, "/manual", &[]).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("machine manual of app agents") && body.contains("does not autostart"),
        "{body}"
    );
    assert_eq!(h.fake.starts(), ["sleeper"]);

    // An unknown machine.
    let (status, body, _) = get(address, "/ghost", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("app agents has no machine ghost"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_by_json_with_transform() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("coordinator").await;
    let port = address.port();
    h.http_machine(
        "coordinator",
        "coord",
        Started,
        port,
        Options::http(),
        answer(|_| {
            let replay = serde_json::json!({
                "app": "agents",
                "instance": "alice",
                "state": "via-json",
                "transform": {
                    "path": "/live?follow=1",
                    "set_headers": [{"name": "x-agent", "value": "alice"}],
                    "delete_headers": ["x-secret"],
                },
            });
            Response::builder()
                .status(409)
                .header("content-type", "application/vnd.fly.replay+json")
                .body(Body::from(replay.to_string()))
                .expect("response")
        }),
    )
    .await;
    h.http_machine("agents", "alice", Started, port, Options::http(), named())
        .await;

    let (status, body, _) = get(
        address,
        "/agents/alice/live?follow=1&x=2",
        &[("x-secret", "s3cret"), ("x-agent", "mallory")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "alice"));
    let replayed = h.records("alice").pop().expect("recorded");
    assert_eq!(replayed.path, "/live?follow=1");
    assert_eq!(replayed.header("x-agent"), Some("alice"));
    assert_eq!(replayed.header("x-secret"), None);
    let src = replayed.header("fly-replay-src").expect("fly-replay-src");
    assert_eq!(field(src, "instance"), Some("coord"));
    assert_eq!(field(src, "state"), Some("via-json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elsewhere_excludes_the_replaying_machine_and_loops_are_cut() {
    let h = Harness::new(ProxyConfig {
        max_replays: 3,
        ..ProxyConfig::default()
    });
    let address = h.listen("web").await;
    let port = address.port();
    h.http_machine(
        "web",
        "p",
        Started,
        port,
        Options::http(),
        answer(|r| {
            if r.path == "/loop" {
                return Response::builder()
                    .header("fly-replay", "instance=p")
                    .body(Body::empty())
                    .expect("response");
            }
            Response::builder()
                .header("fly-replay", "elsewhere=true")
                .body(Body::empty())
                .expect("response")
        }),
    )
    .await;
    h.http_machine("web", "q", Started, port, Options::http(), named())
        .await;

    for _ in 0..10 {
        let (status, body, _) = get(address, "/", &[("fly-force-instance-id", "p")]).await;
        assert_eq!((status, body.as_str()), (200, "q"));
    }
    assert_eq!(h.records("p").len(), 10);
    assert_eq!(h.records("q").len(), 10);

    let (status, body, _) = get(address, "/loop", &[("fly-force-instance-id", "p")]).await;
    assert_eq!(status, 502);
    assert!(body.contains("too many chained replays"), "{body}");
    assert_eq!(
        h.records("p").iter().filter(|r| r.path == "/loop").count(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_1mb_is_streamed_but_cannot_be_replayed() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("web").await;
    let port = address.port();
    h.http_machine(
        "web",
        "router",
        Started,
        port,
        Options::http(),
        replays_with("instance=worker"),
    )
    .await;
    h.http_machine(
        "web",
        "worker",
        Started,
        port,
        Options::http(),
        answer(|r| text(200, &format!("{} got {} bytes", r.machine, r.body.len()))),
    )
    .await;
    let post = |path: &str, size: usize, instance: &str| {
        client()
            .post(format!("http://{address}{path}"))
            .header("fly-force-instance-id", instance)
            .body(vec![7u8; size])
            .send()
    };

    // Exactly 1,000,000 bytes can be replayed.
    let response = post("/", 1_000_000, "router").await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "worker got 1000000 bytes"
    );
    let replayed = h.records("worker").pop().expect("replayed");
    assert_eq!(replayed.body.len(), 1_000_000);
    assert!(replayed.header("fly-replay-src").is_some());

    // One byte more cannot: a clear error, not the machine's answer.
    let response = post("/", 1_000_001, "router").await.expect("request");
    assert_eq!(response.status(), 413);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("router") && body.contains("1000000") && body.contains("cannot be replayed"),
        "{body}"
    );
    assert_eq!(
        h.records("router").pop().expect("streamed").body.len(),
        1_000_001
    );
    assert_eq!(h.records("worker").len(), 1);

    // Without a replay, a large body goes through whole.
    let response = post("/echo", 3_000_000, "worker").await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "worker got 3000000 bytes"
    );

    // The same, chunked: the proxy counts what it reads.
    let mut head = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nfly-force-instance-id: router\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let chunk = vec![b'x'; 100_000];
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..12 {
        head = format!("{:x}\r\n", chunk.len());
        stream.write_all(head.as_bytes()).await.expect("size");
        stream.write_all(&chunk).await.expect("chunk");
        stream.write_all(b"\r\n").await.expect("end of chunk");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("cannot be replayed"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_autostart_at_soft_and_refuse_at_hard() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("web").await;
    let port = address.port();
    let (open, gate) = watch::channel(false);
    let options = Options::http().autostart(true).limits("requests", 1, 1);
    h.http_machine(
        "web",
        "first",
        Started,
        port,
        options.clone(),
        held(gate.clone()),
    )
    .await;
    h.http_machine("web", "second", Startable, port, options, held(gate))
        .await;

    let one = tokio::spawn(get(address, "/hold", &[]));
    eventually("first in flight", || h.records("first").len() == 1).await;
    // `first` is at its soft limit: the proxy starts `second` for the next.
    let two = tokio::spawn(get(address, "/hold", &[]));
    eventually("second in flight", || h.records("second").len() == 1).await;
    assert_eq!(h.fake.starts(), ["second"]);
    assert_eq!(
        (h.proxy.in_flight("first"), h.proxy.in_flight("second")),
        (1, 1)
    );

    // Both at their hard limit, nothing left to start: refused.
    let (status, body, _) = get(address, "/", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("hard_limit"), "{body}");
    assert_eq!(h.count(), 2);

    open.send(true).expect("open");
    assert_eq!(one.await.expect("task").0, 200);
    assert_eq!(two.await.expect("task").0, 200);
    let (status, _, _) = get(address, "/", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_passes_through_from_the_proxys_address_with_autostart() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("nfsd").await;
    h.tcp_machine(
        "nfsd",
        "nfs1",
        Startable,
        address.port(),
        Options::default().autostart(true),
    )
    .await;

    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 9], 0)))
        .expect("bind the client to 127.0.0.9");
    let stream = socket.connect(address).await.expect("connect");
    let mut stream = BufReader::new(stream);
    let mut greeting = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut greeting))
        .await
        .expect("in time")
        .expect("greeting");
    assert!(greeting.starts_with("nfs1 sees "), "{greeting}");
    assert!(
        !greeting.contains("127.0.0.9"),
        "the machine sees the proxy: {greeting}"
    );
    assert_eq!(h.fake.starts(), ["nfs1"]);
    assert_eq!(h.proxy.in_flight("nfs1"), 1);

    stream
        .get_mut()
        .write_all(b"NULL call\n")
        .await
        .expect("write");
    let mut echoed = String::new();
    stream.read_line(&mut echoed).await.expect("echo");
    assert_eq!(echoed, "NULL call\n");
    drop(stream);
    eventually("the connection's load given back", || {
        h.proxy.in_flight("nfs1") == 0
    })
    .await;

    // Nothing to start: the connection is closed.
    let empty = h.listen("empty").await;
    h.tcp_machine(
        "empty",
        "e1",
        Startable,
        empty.port(),
        Options::default().autostart(false),
    )
    .await;
    let mut stream = TcpStream::connect(empty).await.expect("connect");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    assert!(!h.fake.starts().contains(&"e1".to_owned()));
}

/// A response body fed through a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_arrives_before_the_machine_finishes_it() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("agents").await;
    let (open, gate) = watch::channel(false);
    h.http_machine(
        "agents",
        "streamer",
        Started,
        address.port(),
        Options::http(),
        Arc::new(move |_call: Call| {
            let mut gate = gate.clone();
            Box::pin(async move {
                let (sender, receiver) = mpsc::channel(4);
                tokio::spawn(async move {
                    let _ = sender.send(Bytes::from_static(b"data: first\n\n")).await;
                    let _ = gate.wait_for(|open| *open).await;
                    let _ = sender.send(Bytes::from_static(b"data: second\n\n")).await;
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::new(ChannelBody(receiver)))
                    .expect("response")
            })
        }),
    )
    .await;

    let mut response = client()
        .get(format!("http://{address}/live?follow=1"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event before the machine finished")
        .expect("read")
        .expect("a chunk");
    assert_eq!(first.as_ref(), b"data: first\n\n");
    assert_eq!(h.proxy.in_flight("streamer"), 1, "a stream is in flight");
    open.send(true).expect("open");
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("read") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: second\n\n");
    eventually("the stream's load given back", || {
        h.proxy.in_flight("streamer") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_goes_through_a_replay() {
    let h = Harness::new(ProxyConfig::default());
    let address = h.listen("coordinator").await;
    let port = address.port();
    h.http_machine(
        "coordinator",
        "coord",
        Started,
        port,
        Options::http(),
        replays_with("app=agents;instance=alice"),
    )
    .await;
    h.http_machine(
        "agents",
        "alice",
        Startable,
        port,
        Options::http().autostart(true),
        Arc::new(|call: Call| {
            Box::pin(async move {
                let Some(upgrade) = call.upgrade else {
                    return text(400, "not an upgrade");
                };
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let mut io = TokioIo::new(upgraded);
                        let mut buffer = [0u8; 64];
                        while let Ok(n) = io.read(&mut buffer).await {
                            if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(Body::empty())
                    .expect("response")
            })
        }),
    )
    .await;

    let (mut reader, answer) = raw(
        address,
        &format!("GET /screen/stream HTTP/1.1\r\nHost: {address}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert_eq!(h.fake.starts(), ["alice"]);
    reader.get_mut().write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), reader.read_exact(&mut echoed))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&echoed, b"hello");
    assert_eq!(h.proxy.in_flight("alice"), 1);
    drop(reader);
    eventually("the upgraded connection's load given back", || {
        h.proxy.in_flight("alice") == 0
    })
    .await;
}
