//! Process wiring: backends from flags, discovery, serving, draining on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::api::{self, AppState};
use crate::args::{Args, normalized_prefix, split_pair};
use crate::backends::Pool;
use crate::discovery::{self, Target};
use crate::metrics::Metrics;

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
    let pool = Arc::new(Pool::new(models.clone()));
    for (model, urls) in &statics {
        pool.set(model, urls);
    }
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry, &models)?;
    let synced = Arc::new(AtomicBool::new(targets.is_empty()));
    // One TLS provider for the process (the workspace's reqwest and kube are built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !targets.is_empty() {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| anyhow::anyhow!("--backend-service needs the Kubernetes API: {e}"))?;
        let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        tokio::spawn(discovery::run(
            client,
            namespace,
            targets,
            args.endpoint_port.clone(),
            pool.clone(),
            synced.clone(),
        ));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs_f64(args.connect_timeout_seconds))
        .tcp_nodelay(true)
        .no_proxy()
        .build()?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(AppState {
        pool,
        metrics,
        registry,
        client,
        max_body_bytes: args.max_body_bytes,
        response_timeout: Duration::from_secs_f64(args.response_timeout_seconds),
        synced,
        created,
    })
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting and gives in-flight requests (streams
/// included) the grace period to finish.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let prefix = normalized_prefix(&args.route_prefix)?;
    let state = state(&args).await?;
    let listener = tokio::net::TcpListener::bind((args.host, args.port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, models = ?state.pool.models(), prefix = %prefix, "routing");
    let serving = llmserve_openai::serve::spawn(listener, api::app(state, &prefix));
    llmserve_openai::serve::shutdown_signal().await;
    serving.drain(Duration::from_secs(args.shutdown_grace_seconds)).await;
    Ok(())
}
