//! Service-level HTTP metrics, always on (also with `--disable-engine-metrics`). Labels are
//! bounded: route template, model id, status class.

use llmserve_openai::serve::ConnectionMetrics;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Requests by route template, model and status class (`2xx` ...).
pub const HTTP_REQUESTS_TOTAL: &str = "llmserve_http_requests_total";
/// Request duration, until the last byte of the response (streams included).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "llmserve_http_request_duration_seconds";
/// Requests being served now.
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "llmserve_http_requests_in_flight";

/// Requests refused for backpressure, by reason (`queue_full`: the waiting queue was full, 429).
pub const HTTP_REQUESTS_REJECTED_TOTAL: &str = "llmserve_http_requests_rejected_total";

/// Connections open now.
pub const HTTP_CONNECTIONS_OPEN: &str = "llmserve_http_connections_open";
/// Connections answered 503 and closed because `--max-connections` were open.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "llmserve_http_connections_refused_total";

/// Every HTTP family as exposed on `/metrics`.
pub const HTTP_FAMILIES: &[&str] = &[
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUESTS_IN_FLIGHT,
    HTTP_REQUESTS_REJECTED_TOTAL,
    HTTP_CONNECTIONS_OPEN,
    HTTP_CONNECTIONS_REFUSED_TOTAL,
];

/// Reasons of [`HTTP_REQUESTS_REJECTED_TOTAL`].
pub const REJECTED_QUEUE_FULL: &str = "queue_full";

/// Handles to the HTTP metrics.
#[derive(Clone)]
pub struct HttpMetrics {
    /// See [`HTTP_REQUESTS_TOTAL`].
    pub requests: IntCounterVec,
    /// See [`HTTP_REQUEST_DURATION_SECONDS`].
    pub duration: HistogramVec,
    /// See [`HTTP_REQUESTS_IN_FLIGHT`].
    pub in_flight: IntGaugeVec,
    /// See [`HTTP_REQUESTS_REJECTED_TOTAL`].
    pub rejected: IntCounterVec,
    /// See [`HTTP_CONNECTIONS_OPEN`] and [`HTTP_CONNECTIONS_REFUSED_TOTAL`].
    pub connections: ConnectionMetrics,
    model: String,
}

impl HttpMetrics {
    /// Registers the HTTP families, with zero-valued series for the OpenAI routes so that the
    /// model and replica are visible (and rates defined) before the first request.
    pub fn register(registry: &Registry, model: &str) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS_TOTAL, "HTTP requests by route, model and status class."),
            &["route", "model", "status_class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(HTTP_REQUEST_DURATION_SECONDS, "HTTP request duration until the response's last byte.")
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
            &["route", "model"],
        )?;
        let in_flight =
            IntGaugeVec::new(Opts::new(HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being served."), &["route", "model"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let rejected = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS_REJECTED_TOTAL, "Requests refused for backpressure, by reason."),
            &["model", "reason"],
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        for route in [llmserve_openai::routes::COMPLETIONS, llmserve_openai::routes::CHAT_COMPLETIONS] {
            in_flight.with_label_values(&[route, model]).set(0);
        }
        rejected.with_label_values(&[model, REJECTED_QUEUE_FULL]).reset();
        let connections = ConnectionMetrics::register(registry, HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED_TOTAL)?;
        Ok(HttpMetrics { requests, duration, in_flight, rejected, connections, model: model.to_string() })
    }

    /// The model label value.
    pub fn model(&self) -> &str {
        &self.model
    }
}

pub use llmserve_openai::status_class;
