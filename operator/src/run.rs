//! Process wiring: flags, logging, the health and metrics server, leader election, the
//! controller and the usage collector.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::Client;
use kube::runtime::events::Reporter;

use crate::controller::{self, Context};
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::usage;

/// Flags of `llmserve-operator`; each also reads its environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "llmserve-operator",
    version,
    about = "Reconciles LlmApplications into served, autoscaled, monitored models"
)]
pub struct Args {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "LLMSERVE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespace the operator runs in (its lease and usage ConfigMap live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "llmserve-system")]
    pub namespace: String,
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "LLMSERVE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// This replica's identity in leader election.
    #[arg(long, env = "POD_NAME", default_value = "llmserve-operator")]
    pub identity: String,
    /// Elect a leader on a Lease before reconciling.
    #[arg(long, env = "LLMSERVE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LLMSERVE_LEASE_NAME", default_value = "llmserve-operator")]
    pub lease_name: String,
    /// Seconds a lease lasts without renewal.
    #[arg(long, env = "LLMSERVE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Collect usage data (see README); `LLMSERVE_USAGE_STATS_ENABLED=0` turns it off too.
    #[arg(
        long,
        env = "LLMSERVE_USAGE_STATS_ENABLED",
        default_value = "true",
        value_parser = parse_bool,
        action = clap::ArgAction::Set
    )]
    pub usage_stats: bool,
    /// Where to POST the usage report; nothing is sent when unset.
    #[arg(long, env = "LLMSERVE_USAGE_REPORT_URL")]
    pub usage_report_url: Option<String>,
    /// Seconds between usage collections.
    #[arg(long, env = "LLMSERVE_USAGE_INTERVAL_SECONDS", default_value_t = 600)]
    pub usage_interval_seconds: u64,
    /// Most reconciles running at once; bounds connections and load on the API server.
    #[arg(long, env = "LLMSERVE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Give every application a NetworkPolicy: its models take API traffic from its router only,
    /// and metrics scrapes from the pods of `--metrics-pod-selector` in the namespaces of
    /// `--metrics-namespace-selector` only.
    #[arg(
        long,
        env = "LLMSERVE_NETWORK_POLICY",
        default_value = "true",
        value_parser = parse_bool,
        action = clap::ArgAction::Set
    )]
    pub network_policy: bool,
    /// Labels (`key=value,...`) of the namespaces whose Prometheus may scrape the models; empty
    /// for every namespace.
    #[arg(
        long,
        env = "LLMSERVE_METRICS_NAMESPACE_SELECTOR",
        default_value = "kubernetes.io/metadata.name=monitoring",
        value_parser = parse_labels
    )]
    pub metrics_namespace_selector: Labels,
    /// Labels (`key=value,...`) of the Prometheus pods in those namespaces; empty for every pod.
    #[arg(
        long,
        env = "LLMSERVE_METRICS_POD_SELECTOR",
        default_value = "app.kubernetes.io/name=prometheus",
        value_parser = parse_labels
    )]
    pub metrics_pod_selector: Labels,
    /// Read each application's router every 15 s and write its live serving figures into
    /// `status.serving` (at most every 30 s, only when they moved).
    #[arg(
        long,
        env = "LLMSERVE_LIVE_STATUS",
        default_value = "true",
        value_parser = parse_bool,
        action = clap::ArgAction::Set
    )]
    pub live_status: bool,
    /// Log as JSON lines (the default) or human-readable text.
    #[arg(long, env = "LLMSERVE_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

/// Label key-value pairs from a flag.
pub type Labels = std::collections::BTreeMap<String, String>;

/// `key=value,key=value` (empty: none); keys and values as Kubernetes allows them in labels.
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (prefix, name) = match k.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, k),
        };
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
        if name.is_empty() || !prefix_ok || !crate::build::is_label_value(name) {
            return Err(format!("{k:?} is not a label key"));
        }
        if !crate::build::is_label_value(v) {
            return Err(format!("{v:?} is not a label value (at most 63 letters, digits, '-', '_', '.')"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Accepts 1/0, true/false, yes/no, on/off.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// Health and metrics routes.
fn http_app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
            }),
        )
        .with_state(state)
}

/// Sets up JSON (or text) logs filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let metrics = Metrics::try_new()?;
    let ready = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let http = http_app(HttpState { metrics: metrics.clone(), ready: ready.clone() });
    tokio::spawn(async move { axum::serve(listener, http).await });

    // Ready means: the API server answers. A follower is ready too; it just does not reconcile.
    client.apiserver_version().await?;
    ready.store(true, Ordering::Relaxed);

    let lease = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.namespace.clone(),
        identity: args.identity.clone(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        retry: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
    };
    if args.leader_election {
        tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting for leadership");
        leader::acquire(&client, &lease).await?;
        tracing::info!("leading");
    }
    metrics.leader.set(1);

    if args.live_status {
        tokio::spawn(crate::live::run(client.clone(), args.watch_namespace.clone(), metrics.clone()));
    }
    metrics.usage_stats_enabled.set(i64::from(args.usage_stats));
    if args.usage_stats {
        let (client, ns, metrics, url) =
            (client.clone(), args.namespace.clone(), metrics.clone(), args.usage_report_url.clone());
        let watched = args.watch_namespace.clone();
        let every = Duration::from_secs(args.usage_interval_seconds.max(1));
        tokio::spawn(async move {
            loop {
                match usage::run_once(&client, &ns, watched.as_deref(), &metrics, url.as_deref()).await {
                    Ok(r) => {
                        tracing::info!(applications = r.num_applications, models = r.num_models, "usage data collected")
                    }
                    Err(e) => tracing::warn!(error = %e, "usage data collection failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
    } else {
        tracing::info!("usage data collection is off");
    }

    let reporter = Reporter { controller: crate::MANAGER.into(), instance: Some(args.identity.clone()) };
    let peers = crate::build::MetricsPeers {
        namespaces: args.metrics_namespace_selector.clone(),
        pods: args.metrics_pod_selector.clone(),
    };
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), reporter)
            .with_network_policy(args.network_policy.then_some(peers)),
    );
    let controller = controller::run(ctx, args.watch_namespace.clone(), args.concurrency, shutdown_signal()?);
    if args.leader_election {
        tokio::select! {
            _ = controller => {}
            res = leader::hold(&client, &lease) => {
                metrics.leader.set(0);
                res?;
            }
        }
    } else {
        controller.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM. The SIGTERM handler is installed at the call, so a failure to
/// install it stops the operator at start rather than leaving it deaf to SIGTERM.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}
