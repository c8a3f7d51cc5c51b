//! Prometheus metrics and the `/metrics` HTTP endpoint.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcLabels {
    pub program: &'static str,
    pub procedure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub calls: Family<ProcLabels, Counter>,
    pub latency: HistogramFamily<ProcLabels>,
    /// Answers by NFS/MOUNT status or RPC outcome, one series per branch.
    pub statuses: Family<NameLabel, Counter>,
    /// Bytes sent by READ, by kind ("worktree" files or "git" files).
    pub read_bytes: Family<NameLabel, Counter>,
    /// READ calls by kind ("worktree" or "git").
    pub reads: Family<NameLabel, Counter>,
    pub blob_bytes_decoded: Counter,
    pub cache: Family<CacheLabels, Counter>,
    pub exports_live: Gauge,
    pub mounts: Family<NameLabel, Counter>,
    pub connections_open: Gauge,
    pub connections_closed: Family<NameLabel, Counter>,
    /// Refusals by the export rules, by where ("mount" or "handle").
    pub access_refused: Family<NameLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s
    Histogram::new(exponential_buckets(1e-5, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gitnfsd");
        let calls = Family::<ProcLabels, Counter>::default();
        let latency: HistogramFamily<ProcLabels> = Family::new_with_constructor(latency_histogram);
        let statuses = Family::<NameLabel, Counter>::default();
        let read_bytes = Family::<NameLabel, Counter>::default();
        let reads = Family::<NameLabel, Counter>::default();
        let blob_bytes_decoded = Counter::default();
        let cache = Family::<CacheLabels, Counter>::default();
        let exports_live = Gauge::default();
        let mounts = Family::<NameLabel, Counter>::default();
        let connections_open = Gauge::default();
        let connections_closed = Family::<NameLabel, Counter>::default();
        let access_refused = Family::<NameLabel, Counter>::default();
        registry.register(
            "rpc_calls",
            "RPC calls by program and procedure",
            calls.clone(),
        );
        registry.register(
            "rpc_latency_seconds",
            "Time to answer an RPC call",
            latency.clone(),
        );
        registry.register(
            "answers",
            "Answers by NFS/MOUNT status or RPC outcome",
            statuses.clone(),
        );
        registry.register(
            "read_bytes",
            "Bytes sent by READ, by kind: worktree files, git_metadata (.gitignore, .gitmodules, ...) or the synthesized .git (git)",
            read_bytes.clone(),
        );
        registry.register("reads", "READ calls by kind", reads.clone());
        registry.register(
            "blob_decoded_bytes",
            "Blob bytes decoded from the object database",
            blob_bytes_decoded.clone(),
        );
        registry.register("cache_lookups", "Cache hits and misses", cache.clone());
        registry.register(
            "exports_live",
            "Pinned worktrees currently loaded",
            exports_live.clone(),
        );
        registry.register("mounts", "MOUNT requests by outcome", mounts.clone());
        registry.register(
            "connections_open",
            "Client connections open",
            connections_open.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections closed, by reason",
            connections_closed.clone(),
        );
        registry.register(
            "access_refused",
            "Uses of a repository the export rules keep from the client, by where: mount or handle",
            access_refused.clone(),
        );
        Self {
            registry,
            calls,
            latency,
            statuses,
            read_bytes,
            reads,
            blob_bytes_decoded,
            cache,
            exports_live,
            mounts,
            connections_open,
            connections_closed,
            access_refused,
        }
    }

    pub fn cache_hit(&self, cache: &'static str) {
        self.cache
            .get_or_create(&CacheLabels {
                cache,
                result: "hit",
            })
            .inc();
    }

    pub fn cache_miss(&self, cache: &'static str) {
        self.cache
            .get_or_create(&CacheLabels {
                cache,
                result: "miss",
            })
            .inc();
    }

    pub fn observe_call(&self, program: &'static str, procedure: &'static str, took: Duration) {
        let labels = ProcLabels { program, procedure };
        self.calls.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn count(family: &Family<NameLabel, Counter>, name: &'static str) {
        family.get_or_create(&NameLabel { name }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
