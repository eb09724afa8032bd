//! The router's service-level metrics, always on. Labels are bounded: model id (or `unknown` for
//! ids the application does not serve), route template, status class.

use llmserve_openai::serve::ConnectionMetrics;

use crate::routing::{Policy, Reason};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Requests by model, route template and status class.
pub const REQUESTS_TOTAL: &str = "llmserve_router_requests_total";
/// Duration until the response's last byte (streams included).
pub const REQUEST_DURATION_SECONDS: &str = "llmserve_router_request_duration_seconds";
/// Time until the response's first body byte (the first SSE chunk of a stream).
pub const TIME_TO_FIRST_BYTE_SECONDS: &str = "llmserve_router_time_to_first_byte_seconds";
/// Prompt tokens from the responses' `usage`.
pub const PROMPT_TOKENS_TOTAL: &str = "llmserve_router_prompt_tokens_total";
/// Completion tokens from the responses' `usage`.
pub const COMPLETION_TOKENS_TOTAL: &str = "llmserve_router_completion_tokens_total";
/// Requests being served now, per model.
pub const REQUESTS_IN_FLIGHT: &str = "llmserve_router_requests_in_flight";
/// Requests sent again to another replica after a refused connection or a 503.
pub const RETRIES_TOTAL: &str = "llmserve_router_retries_total";
/// Replicas the router can send to, per model.
pub const READY_REPLICAS: &str = "llmserve_router_ready_replicas";
/// Replicas taken out of the pool for failing requests in a row or their health check, per model.
pub const EJECTIONS_TOTAL: &str = "llmserve_router_ejections_total";

/// Replicas picked, by model, routing policy and reason (`affinity`, `overflow`, `fallback`,
/// `least_outstanding`).
pub const PICKS_TOTAL: &str = "llmserve_router_picks_total";
/// Requests of each tenant (API keys on), by model and status class.
pub const TENANT_REQUESTS_TOTAL: &str = "llmserve_router_tenant_requests_total";
/// Tokens of each tenant from the answers' usage, by model and kind (`prompt`, `completion`).
pub const TENANT_TOKENS_TOTAL: &str = "llmserve_router_tenant_tokens_total";
/// Requests of each tenant refused by one of its limits (`requests_per_minute`,
/// `tokens_per_minute`, `concurrent_requests`).
pub const TENANT_RATE_LIMITED_TOTAL: &str = "llmserve_router_tenant_rate_limited_total";
/// Requests of each tenant in flight.
pub const TENANT_REQUESTS_IN_FLIGHT: &str = "llmserve_router_tenant_requests_in_flight";
/// Connections open now.
pub const CONNECTIONS_OPEN: &str = "llmserve_router_connections_open";
/// Connections answered 503 and closed because `--max-connections` were open.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "llmserve_router_connections_refused_total";

/// Every family, as exposed on `/metrics`.
pub const FAMILIES: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    TIME_TO_FIRST_BYTE_SECONDS,
    PROMPT_TOKENS_TOTAL,
    COMPLETION_TOKENS_TOTAL,
    REQUESTS_IN_FLIGHT,
    RETRIES_TOTAL,
    READY_REPLICAS,
    EJECTIONS_TOTAL,
    PICKS_TOTAL,
    TENANT_REQUESTS_TOTAL,
    TENANT_TOKENS_TOTAL,
    TENANT_RATE_LIMITED_TOTAL,
    TENANT_REQUESTS_IN_FLIGHT,
    CONNECTIONS_OPEN,
    CONNECTIONS_REFUSED_TOTAL,
];

/// The model label of a request for a model the application does not serve.
pub const UNKNOWN_MODEL: &str = "unknown";

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Handles to the router's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// See [`REQUESTS_TOTAL`].
    pub requests: IntCounterVec,
    /// See [`REQUEST_DURATION_SECONDS`].
    pub duration: HistogramVec,
    /// See [`TIME_TO_FIRST_BYTE_SECONDS`].
    pub first_byte: HistogramVec,
    /// See [`PROMPT_TOKENS_TOTAL`].
    pub prompt_tokens: IntCounterVec,
    /// See [`COMPLETION_TOKENS_TOTAL`].
    pub completion_tokens: IntCounterVec,
    /// See [`REQUESTS_IN_FLIGHT`].
    pub in_flight: IntGaugeVec,
    /// See [`RETRIES_TOTAL`].
    pub retries: IntCounterVec,
    /// See [`READY_REPLICAS`].
    pub ready_replicas: IntGaugeVec,
    /// See [`EJECTIONS_TOTAL`].
    pub ejections: IntCounterVec,
    /// See [`PICKS_TOTAL`].
    pub picks: IntCounterVec,
    /// See [`TENANT_REQUESTS_TOTAL`].
    pub tenant_requests: IntCounterVec,
    /// See [`TENANT_TOKENS_TOTAL`].
    pub tenant_tokens: IntCounterVec,
    /// See [`TENANT_RATE_LIMITED_TOTAL`].
    pub tenant_rate_limited: IntCounterVec,
    /// See [`TENANT_REQUESTS_IN_FLIGHT`].
    pub tenant_in_flight: IntGaugeVec,
    /// See [`CONNECTIONS_OPEN`] and [`CONNECTIONS_REFUSED_TOTAL`].
    pub connections: ConnectionMetrics,
}

impl Metrics {
    /// Registers every family on `registry`, with zero-valued series for each of `models` (and
    /// each pick reason of `policy`) so that rates exist before the first request.
    pub fn register(registry: &Registry, models: &[String], policy: Policy) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), &["model", "route"])
        };
        let m = Metrics {
            requests: counter(
                REQUESTS_TOTAL,
                "Requests at the router by model, route and status class.",
                &["model", "route", "status_class"],
            )?,
            duration: histogram(
                REQUEST_DURATION_SECONDS,
                "Request duration at the router until the response's last byte.",
            )?,
            first_byte: histogram(
                TIME_TO_FIRST_BYTE_SECONDS,
                "Time at the router until the response's first body byte.",
            )?,
            prompt_tokens: counter(
                PROMPT_TOKENS_TOTAL,
                "Prompt tokens of answered requests, from their usage.",
                &["model"],
            )?,
            completion_tokens: counter(
                COMPLETION_TOKENS_TOTAL,
                "Completion tokens of answered requests, from their usage.",
                &["model"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(REQUESTS_IN_FLIGHT, "Requests being served by the router."),
                &["model"],
            )?,
            retries: counter(
                RETRIES_TOTAL,
                "Requests retried on another replica after a refused connection or a 503.",
                &["model"],
            )?,
            ready_replicas: IntGaugeVec::new(
                Opts::new(READY_REPLICAS, "Replicas the router can send requests to."),
                &["model"],
            )?,
            ejections: counter(
                EJECTIONS_TOTAL,
                "Replicas ejected from the pool for failing requests in a row or their health check.",
                &["model"],
            )?,
            picks: counter(
                PICKS_TOTAL,
                "Replicas picked by the routing policy, by reason.",
                &["model", "policy", "reason"],
            )?,
            tenant_requests: counter(
                TENANT_REQUESTS_TOTAL,
                "Requests per tenant by model and status class.",
                &["tenant", "model", "status_class"],
            )?,
            tenant_tokens: counter(
                TENANT_TOKENS_TOTAL,
                "Tokens per tenant from the answers' usage, by model and kind.",
                &["tenant", "model", "kind"],
            )?,
            tenant_rate_limited: counter(
                TENANT_RATE_LIMITED_TOTAL,
                "Requests per tenant refused by a limit (429), by limit.",
                &["tenant", "limit"],
            )?,
            tenant_in_flight: IntGaugeVec::new(
                Opts::new(TENANT_REQUESTS_IN_FLIGHT, "Requests per tenant in flight."),
                &["tenant"],
            )?,
            connections: ConnectionMetrics::register(registry, CONNECTIONS_OPEN, CONNECTIONS_REFUSED_TOTAL)?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.first_byte.clone()))?;
        registry.register(Box::new(m.prompt_tokens.clone()))?;
        registry.register(Box::new(m.completion_tokens.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.ready_replicas.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        registry.register(Box::new(m.picks.clone()))?;
        registry.register(Box::new(m.tenant_requests.clone()))?;
        registry.register(Box::new(m.tenant_tokens.clone()))?;
        registry.register(Box::new(m.tenant_rate_limited.clone()))?;
        registry.register(Box::new(m.tenant_in_flight.clone()))?;
        for model in models {
            m.prompt_tokens.with_label_values(&[model]).reset();
            m.completion_tokens.with_label_values(&[model]).reset();
            m.in_flight.with_label_values(&[model]).set(0);
            m.retries.with_label_values(&[model]).reset();
            m.ready_replicas.with_label_values(&[model]).set(0);
            m.ejections.with_label_values(&[model]).reset();
            for reason in Reason::ALL {
                m.picks.with_label_values(&[model, policy.name(), reason.label()]).reset();
            }
        }
        Ok(m)
    }
}
