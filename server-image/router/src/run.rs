//! Process wiring: backends from flags, discovery, serving, draining on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::api::{self, AppState};
use crate::args::{Args, normalized_prefix, split_pair};
use crate::backends::{OutlierPolicy, Pool};
use crate::discovery::{self, Target};
use crate::metrics::Metrics;
use crate::routing::{self, Affinity, Policy};
use crate::tenants::{self, LimitsConfig, Tenants};
use llmserve_openai::body::BodyLimits;
use llmserve_openai::serve::Limits;
use llmserve_openai::tls::Tls;

/// Logs as JSON lines or text, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" { b.json().flatten_event(true).init() } else { b.init() }
}

/// What the flags say about the backends.
#[derive(Debug, Default)]
pub struct Backends {
    /// Every model id, in flag order.
    pub models: Vec<String>,
    /// Models with static replicas (`--backend`), and their URLs.
    pub statics: Vec<(String, Vec<String>)>,
    /// Models behind Services (`--backend-service`).
    pub targets: Vec<Target>,
}

/// Reads `--backend` and `--backend-service`; a model may not be given by both.
pub fn backends(args: &Args) -> anyhow::Result<Backends> {
    let mut models: Vec<String> = Vec::new();
    let mut statics: Vec<(String, Vec<String>)> = Vec::new();
    for b in &args.backends {
        let (model, url) = split_pair("backend", b)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--backend {b:?}: the URL must start with http:// or https://");
        }
        let url = url.trim_end_matches('/').to_string();
        match statics.iter_mut().find(|(m, _)| m == model) {
            Some((_, urls)) => urls.push(url),
            None => statics.push((model.to_string(), vec![url])),
        }
        if !models.iter().any(|m| m == model) {
            models.push(model.to_string());
        }
    }
    let mut targets = Vec::new();
    for b in &args.backend_services {
        let (model, service) = split_pair("backend-service", b)?;
        if models.iter().any(|m| m == model) {
            anyhow::bail!("model {model:?} is given twice (--backend and --backend-service, or two --backend-service)");
        }
        models.push(model.to_string());
        targets.push(Target { model: model.to_string(), service: service.to_string() });
    }
    if models.is_empty() {
        anyhow::bail!("no models: give --backend MODEL=URL or --backend-service MODEL=SERVICE");
    }
    Ok(Backends { models, statics, targets })
}

/// Builds the state; starts following EndpointSlices when `--backend-service` is given.
pub async fn state(args: &Args) -> anyhow::Result<AppState> {
    let Backends { models, statics, targets } = backends(args)?;
    let policy = OutlierPolicy {
        consecutive_failures: args.outlier_consecutive_failures,
        base_ejection: seconds("outlier-base-ejection-seconds", args.outlier_base_ejection_seconds)?,
        max_ejection: seconds("outlier-max-ejection-seconds", args.outlier_max_ejection_seconds)?,
    };
    let routing = routing_policy(args)?;
    let every = positive("engine-metrics-interval-seconds", args.engine_metrics_interval_seconds)?;
    let pool = Arc::new(Pool::with_routing(models.clone(), policy, routing, routing::stale_after(every)));
    for (model, urls) in &statics {
        pool.set(model, urls);
    }
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry, &models, routing)?;
    let synced = Arc::new(AtomicBool::new(targets.is_empty()));
    // One TLS provider for the process (the workspace's reqwest and kube are built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let limits = match &args.tenant_limits {
        Some(json) => LimitsConfig::parse(json).map_err(|e| anyhow::anyhow!("--tenant-limits: {e}"))?,
        None => LimitsConfig::default(),
    };
    let keyed = args.api_keys_secret.is_some() || args.api_keys_file.is_some();
    let tenants = Arc::new(if keyed { Tenants::required() } else { Tenants::open() });
    if let Some(path) = &args.api_keys_file {
        // Read once here so a bad file stops the start; then followed.
        let keys = tenants::parse_keys_file(&std::fs::read_to_string(path)?)
            .map_err(|e| anyhow::anyhow!("--api-keys-file {}: {e}", path.display()))?;
        tenants.set(keys, limits.clone());
        tokio::spawn(discovery::follow_keys_file(path.clone(), limits.clone(), tenants.clone()));
    }
    if !targets.is_empty() || args.api_keys_secret.is_some() {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| anyhow::anyhow!("--backend-service and --api-keys-secret need the Kubernetes API: {e}"))?;
        let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        if let Some(secret) = &args.api_keys_secret {
            tokio::spawn(discovery::follow_keys_secret(
                client.clone(),
                namespace.clone(),
                secret.clone(),
                limits,
                tenants.clone(),
            ));
        }
        if !targets.is_empty() {
            tokio::spawn(discovery::run(
                client,
                namespace,
                targets,
                args.endpoint_port.clone(),
                pool.clone(),
                synced.clone(),
            ));
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(positive("connect-timeout-seconds", args.connect_timeout_seconds)?)
        // Below the replicas' keep-alive limit (their --header-timeout-seconds, 60 s by default),
        // so the router never sends on a connection the replica is closing.
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .no_proxy()
        .build()?;
    if let Policy::KvAware(_) = routing {
        tokio::spawn(engine_loads(pool.clone(), client.clone(), every));
    }
    if args.health_check_interval_seconds > 0.0 {
        let every = seconds("health-check-interval-seconds", args.health_check_interval_seconds)?;
        tokio::spawn(health_checks(pool.clone(), client.clone(), metrics.clone(), every));
    }
    let live = Arc::new(crate::live::Live::default());
    tokio::spawn(crate::live::run(live.clone(), pool.clone(), client.clone(), registry.clone()));
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(AppState {
        pool,
        metrics,
        registry,
        client,
        body: BodyLimits {
            max_bytes: args.max_body_bytes,
            timeout: positive("body-timeout-seconds", args.body_timeout_seconds)?,
        },
        response_timeout: positive("response-timeout-seconds", args.response_timeout_seconds)?,
        request_timeout: positive("request-timeout-seconds", args.request_timeout_seconds)?,
        synced,
        created,
        tenants,
        draining: Arc::new(AtomicBool::new(false)),
        live,
    })
}

/// The routing policy the flags name.
fn routing_policy(args: &Args) -> anyhow::Result<Policy> {
    if !(args.load_factor.is_finite() && args.load_factor >= 1.0) {
        anyhow::bail!("--load-factor must be a number of at least 1, got {}", args.load_factor);
    }
    if args.prefix_chars == 0 {
        anyhow::bail!("--prefix-chars must be at least 1");
    }
    let affinity = Affinity { prefix_chars: args.prefix_chars, load_factor: args.load_factor };
    Ok(match args.routing_policy.as_str() {
        "prefixHash" => Policy::PrefixHash(affinity),
        "kvAware" => Policy::KvAware(affinity),
        _ => Policy::LeastOutstanding,
    })
}

/// `kvAware`'s eyes: every `every`, each replica's `/metrics` (1 s at most), parsed into its
/// engine figures; a replica that does not answer, or exports no engine metrics, has none.
async fn engine_loads(pool: Arc<Pool>, client: reqwest::Client, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reads = pool.all_replicas().into_iter().map(|(_, replica)| {
            let client = client.clone();
            async move {
                let text = crate::live::replica_metrics(&client, &replica.url).await;
                let load = text.and_then(|t| routing::parse_engine_load(&t, std::time::Instant::now()));
                replica.set_engine_load(load);
            }
        });
        futures::future::join_all(reads).await;
    }
}

/// A timeout flag: finite and positive.
fn positive(flag: &str, value: f64) -> anyhow::Result<Duration> {
    llmserve_openai::serve::positive_seconds(flag, value).map_err(anyhow::Error::msg)
}

/// A duration flag: finite and not negative.
fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow::anyhow!("--{flag} must be a number of seconds, got {value}"))
}

/// The active health check: every `every`, `GET /health` of each replica (2 s at most); a replica
/// that fails it is ejected until it passes again.
async fn health_checks(pool: Arc<Pool>, client: reqwest::Client, metrics: Metrics, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = pool.all_replicas().into_iter().map(|(model, replica)| {
            let client = client.clone();
            async move {
                let url = format!("{}/health", replica.url);
                let answer = client.get(&url).timeout(Duration::from_secs(2)).send().await;
                let healthy = answer.is_ok_and(|r| r.status().is_success());
                (model, replica, healthy)
            }
        });
        for (model, replica, healthy) in futures::future::join_all(checks).await {
            if replica.set_healthy(healthy) {
                metrics.ejections.with_label_values(&[&model]).inc();
                tracing::warn!(model, replica = %replica.url, "replica failed its health check; ejected");
            }
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting and gives in-flight requests (streams
/// included) the grace period to finish.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let prefix = normalized_prefix(&args.route_prefix)?;
    let state = state(&args).await?;
    let listener = tokio::net::TcpListener::bind((args.host, args.port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, models = ?state.pool.models(), prefix = %prefix, "routing");
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    let limits = Limits {
        max_connections: args.max_connections,
        header_timeout: positive("header-timeout-seconds", args.header_timeout_seconds)?,
    };
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls = Tls::load(cert.clone(), key.clone()).map_err(anyhow::Error::msg)?;
            tokio::spawn(tls.clone().follow());
            Some(tls)
        }
        _ => None,
    };
    let connections = state.metrics.connections.clone();
    let draining = state.draining.clone();
    let side = match args.metrics_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind((args.host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health");
            Some(llmserve_openai::serve::spawn_side(listener, api::side_app(state.clone()), limits.header_timeout)?)
        }
        None => None,
    };
    let serving = llmserve_openai::serve::spawn_with_tls(listener, api::app(state, &prefix), limits, connections, tls);
    llmserve_openai::serve::shutdown_signal().await;
    llmserve_openai::serve::announce_shutdown(&draining, Duration::from_secs(args.shutdown_delay_seconds)).await;
    serving.drain(Duration::from_secs(args.shutdown_grace_seconds)).await;
    if let Some(side) = side {
        side.drain(Duration::from_secs(1)).await;
    }
    Ok(())
}
