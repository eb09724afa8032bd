//! `llmserve-router` flags, each also an environment variable.

use std::net::IpAddr;

/// Flags of `llmserve-router`.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "llmserve-router",
    version,
    about = "OpenAI-compatible router in front of the models of one LlmApplication"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "LLMSERVE_ROUTER_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, env = "LLMSERVE_ROUTER_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Path prefix of the OpenAI routes (`/` serves `/v1/...`, `/llm` serves `/llm/v1/...`).
    #[arg(long, env = "LLMSERVE_ROUTER_ROUTE_PREFIX", default_value = "/")]
    pub route_prefix: String,
    /// A static replica, `MODEL=URL` (repeat the flag; the same MODEL twice is two replicas).
    #[arg(long = "backend", env = "LLMSERVE_ROUTER_BACKENDS", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// A model served by a Kubernetes Service, `MODEL=SERVICE`: its replicas are the ready
    /// endpoints of the Service's EndpointSlices in `--namespace`, followed live.
    #[arg(long = "backend-service", env = "LLMSERVE_ROUTER_BACKEND_SERVICES", value_delimiter = ',')]
    pub backend_services: Vec<String>,
    /// Namespace of the `--backend-service` Services (default: the pod's own namespace).
    #[arg(long, env = "LLMSERVE_ROUTER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the EndpointSlice port that serves HTTP.
    #[arg(long, env = "LLMSERVE_ROUTER_ENDPOINT_PORT", default_value = "http")]
    pub endpoint_port: String,
    /// Largest request body in bytes.
    #[arg(long, env = "LLMSERVE_ROUTER_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request body may take to arrive, from when its headers did (408 after).
    #[arg(long, env = "LLMSERVE_ROUTER_BODY_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub body_timeout_seconds: f64,
    /// Seconds a connection may take to send a request's headers, counted from when it opened or
    /// its previous response ended (so also how long an idle keep-alive connection stays open).
    #[arg(long, env = "LLMSERVE_ROUTER_HEADER_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub header_timeout_seconds: f64,
    /// Connections open at once; the ones over it are answered 503 with `Retry-After` and closed.
    #[arg(long, env = "LLMSERVE_ROUTER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds to wait for a replica to accept a connection.
    #[arg(long, env = "LLMSERVE_ROUTER_CONNECT_TIMEOUT_SECONDS", default_value_t = 5.0)]
    pub connect_timeout_seconds: f64,
    /// Seconds to wait for a replica's response headers, and then for each next part of a stream
    /// (a replica silent that long has failed the request).
    #[arg(long, env = "LLMSERVE_ROUTER_RESPONSE_TIMEOUT_SECONDS", default_value_t = 600.0)]
    pub response_timeout_seconds: f64,
    /// Longest a request may take end to end, streams included; a stream still running then ends
    /// with an error event.
    #[arg(long, env = "LLMSERVE_ROUTER_REQUEST_TIMEOUT_SECONDS", default_value_t = 3600.0)]
    pub request_timeout_seconds: f64,
    /// Failed requests in a row (5xx, refused or broken connections, timeouts) that eject a replica
    /// from the pool for a while (0: never).
    #[arg(long, env = "LLMSERVE_ROUTER_OUTLIER_CONSECUTIVE_FAILURES", default_value_t = 5)]
    pub outlier_consecutive_failures: u32,
    /// Seconds of a replica's first ejection; each further one doubles it.
    #[arg(long, env = "LLMSERVE_ROUTER_OUTLIER_BASE_EJECTION_SECONDS", default_value_t = 5.0)]
    pub outlier_base_ejection_seconds: f64,
    /// Longest ejection in seconds.
    #[arg(long, env = "LLMSERVE_ROUTER_OUTLIER_MAX_EJECTION_SECONDS", default_value_t = 300.0)]
    pub outlier_max_ejection_seconds: f64,
    /// Seconds between active health checks of every replica (`GET /health`; a failure ejects the
    /// replica until a check passes); 0 turns them off.
    #[arg(long, env = "LLMSERVE_ROUTER_HEALTH_CHECK_INTERVAL_SECONDS", default_value_t = 5.0)]
    pub health_check_interval_seconds: f64,
    /// How a replica is picked: `leastOutstanding` (fewest requests in flight), `prefixHash`
    /// (consistent hashing with bounded loads over the prompt's prefix, so that shared prefixes
    /// meet the replica that has them cached) or `kvAware` (prefix affinity weighed against each
    /// replica's own queue and KV-cache use, read from its `/metrics`).
    #[arg(
        long,
        env = "LLMSERVE_ROUTER_ROUTING_POLICY",
        default_value = "leastOutstanding",
        value_parser = ["leastOutstanding", "prefixHash", "kvAware"]
    )]
    pub routing_policy: String,
    /// `prefixHash`/`kvAware`: characters of the prompt, or of the chat messages rendered as
    /// `role: content` lines, that make the prefix key.
    #[arg(long, env = "LLMSERVE_ROUTER_PREFIX_CHARS", default_value_t = 1024)]
    pub prefix_chars: usize,
    /// `prefixHash`/`kvAware`: no replica takes more than the ceiling of this times the mean
    /// number of requests in flight, plus one (`1 + epsilon` of consistent hashing with bounded
    /// loads); at least 1.
    #[arg(long, env = "LLMSERVE_ROUTER_LOAD_FACTOR", default_value_t = 1.25)]
    pub load_factor: f64,
    /// `kvAware`: seconds between reads of each replica's `/metrics`; figures older than three
    /// intervals are stale, and picks fall back to `leastOutstanding`.
    #[arg(long, env = "LLMSERVE_ROUTER_ENGINE_METRICS_INTERVAL_SECONDS", default_value_t = 1.0)]
    pub engine_metrics_interval_seconds: f64,
    /// API keys: a Secret in `--namespace` whose data entries are one tenant each (entry name =
    /// tenant, value = key), followed live. Every OpenAI route then asks for
    /// `Authorization: Bearer <key>` (401 otherwise); `/health` and `/metrics` stay open.
    #[arg(long, env = "LLMSERVE_ROUTER_API_KEYS_SECRET")]
    pub api_keys_secret: Option<String>,
    /// API keys from a file of `tenant=key` lines instead, re-read when it changes.
    #[arg(long, env = "LLMSERVE_ROUTER_API_KEYS_FILE", conflicts_with = "api_keys_secret")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Per-tenant limits, JSON: `{"default": {"requestsPerMinute": N, "tokensPerMinute": N,
    /// "concurrentRequests": N}, "tenants": {"NAME": {...}}}`; the keys' Secret may carry its own
    /// in the `llmserve.dev/limits` annotation, which then wins.
    #[arg(long, env = "LLMSERVE_ROUTER_TENANT_LIMITS")]
    pub tenant_limits: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first), e.g. `tls.crt` of a mounted
    /// `kubernetes.io/tls` Secret; re-read when it changes.
    #[arg(long, env = "LLMSERVE_ROUTER_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert-file` (`tls.key`).
    #[arg(long, env = "LLMSERVE_ROUTER_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Also serve `/metrics` and `/health` (nothing else) in plain HTTP on this port, even when
    /// the API port speaks TLS: what Prometheus scrapes and a NetworkPolicy opens to it alone.
    #[arg(long, env = "LLMSERVE_ROUTER_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "LLMSERVE_ROUTER_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// Seconds between SIGTERM and the drain during which `/health` answers 503 and new requests
    /// are still served (the operator sets 5: Services drop an endpoint asynchronously).
    #[arg(long, env = "LLMSERVE_ROUTER_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,
    /// `json` or `text` logs.
    #[arg(long, env = "LLMSERVE_ROUTER_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

/// One `MODEL=VALUE` flag.
pub fn split_pair<'a>(flag: &str, s: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((m, v)) if !m.is_empty() && !v.is_empty() => Ok((m, v)),
        _ => anyhow::bail!("--{flag} takes MODEL=VALUE, got {s:?}"),
    }
}

/// `/` → ``, `/llm/` → `/llm`: the prefix the OpenAI routes are nested under.
pub fn normalized_prefix(p: &str) -> anyhow::Result<String> {
    if !p.starts_with('/') {
        anyhow::bail!("--route-prefix must start with '/', got {p:?}");
    }
    Ok(p.trim_end_matches('/').to_string())
}
