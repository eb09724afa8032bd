//! API keys and per-tenant limits. Each key belongs to a tenant (a Secret's data entry: entry name
//! = tenant, value = key); a request names its key in `Authorization: Bearer <key>`, as OpenAI's
//! clients send it. Keys are compared in constant time and never logged.
//!
//! Limits per tenant: requests per minute and tokens per minute (token buckets that refill
//! continuously), and requests in flight. A default applies to every tenant and per-tenant entries
//! override it field by field. Token limits reserve an estimate of the prompt at admission (a
//! quarter of its characters, OpenAI's rule of thumb) and settle with the answer's `usage` at the
//! end; a request whose usage never arrives keeps its reservation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use llmserve_openai::ApiError;
use serde::Deserialize;

use crate::metrics::Metrics;

/// The annotation of the keys' Secret that carries its limits (JSON, see [`LimitsConfig`]).
pub const LIMITS_ANNOTATION: &str = "llmserve.dev/limits";

/// One tenant's limits; an absent field is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Prompt + completion tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    pub concurrent_requests: Option<u32>,
}

impl Limits {
    /// `self`, with the fields it leaves unset taken from `default`.
    fn or(self, default: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(default.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(default.tokens_per_minute),
            concurrent_requests: self.concurrent_requests.or(default.concurrent_requests),
        }
    }
}

/// `{"default": {...}, "tenants": {"team-a": {...}}}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Limits of every tenant without its own entry.
    #[serde(default)]
    pub default: Limits,
    /// Per-tenant overrides.
    #[serde(default)]
    pub tenants: BTreeMap<String, Limits>,
}

impl LimitsConfig {
    /// Parses the JSON form; the error names what is wrong.
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("limits are not valid: {e}"))
    }

    fn of(&self, tenant: &str) -> Limits {
        self.tenants.get(tenant).copied().unwrap_or_default().or(self.default)
    }
}

/// A token bucket: `capacity` per minute, refilled continuously; may go below zero when a request
/// used more than it reserved.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, now: Instant) -> Self {
        Bucket { capacity, level: capacity, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let per_second = self.capacity / 60.0;
        self.level =
            (self.level + now.saturating_duration_since(self.at).as_secs_f64() * per_second).min(self.capacity);
        self.at = now;
    }

    /// Takes `n` if there is that much; else the wait until there is.
    fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let n = n.min(self.capacity);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.level) / (self.capacity / 60.0)))
        }
    }

    /// Until the bucket is full again.
    fn reset(&self) -> Duration {
        Duration::from_secs_f64(((self.capacity - self.level) / (self.capacity / 60.0)).max(0.0))
    }
}

/// What one tenant has used.
#[derive(Debug)]
struct Usage {
    limits: Limits,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: u32,
}

/// The keys and limits in force.
#[derive(Debug, Default)]
struct Keyring {
    /// (tenant, key).
    keys: Vec<(String, Vec<u8>)>,
    limits: LimitsConfig,
}

/// Authentication and limits for the router; open (no keys asked) when built with
/// [`Tenants::open`].
#[derive(Debug)]
pub struct Tenants {
    required: bool,
    keyring: RwLock<Arc<Keyring>>,
    usage: Mutex<HashMap<String, Usage>>,
    synced: AtomicBool,
}

/// An authenticated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

impl Tenants {
    /// No keys: every request is served, no limits.
    pub fn open() -> Self {
        Tenants { required: false, keyring: RwLock::default(), usage: Mutex::default(), synced: AtomicBool::new(true) }
    }

    /// Keys required; none are known until [`Tenants::set`] (until then every request is refused,
    /// and [`Tenants::synced`] is false).
    pub fn required() -> Self {
        Tenants { required: true, synced: AtomicBool::new(false), ..Tenants::open() }
    }

    /// Whether keys are asked for.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Whether the keys have been read at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Replaces the keys (tenant -> key) and limits; usage so far is kept for tenants that stay.
    pub fn set(&self, keys: BTreeMap<String, Vec<u8>>, limits: LimitsConfig) {
        let keys: Vec<(String, Vec<u8>)> = keys.into_iter().filter(|(_, k)| !k.is_empty()).collect();
        if let Ok(mut usage) = self.usage.lock() {
            usage.retain(|t, _| keys.iter().any(|(k, _)| k == t));
            for (tenant, u) in usage.iter_mut() {
                let limits = limits.of(tenant);
                if limits != u.limits {
                    *u = Usage::new(limits, u.in_flight, Instant::now());
                }
            }
        }
        tracing::info!(tenants = keys.len(), "API keys loaded");
        if let Ok(mut ring) = self.keyring.write() {
            *ring = Arc::new(Keyring { keys, limits });
        }
        self.synced.store(true, Ordering::Relaxed);
    }

    /// The tenant whose key `headers` carry; 401 in OpenAI's envelope when there is none or it is
    /// unknown. `None` when keys are not required.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Tenant>, ApiError> {
        if !self.required {
            return Ok(None);
        }
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii)
            .unwrap_or_default();
        let ring = self.keyring.read().map(|r| r.clone()).unwrap_or_default();
        // Every key is compared, whatever matched, so the time taken says nothing about which.
        let mut found: Option<&str> = None;
        for (tenant, key) in &ring.keys {
            if constant_time_eq(given, key) && !given.is_empty() {
                found = Some(tenant);
            }
        }
        match found {
            Some(t) => Ok(Some(Tenant(t.to_string()))),
            None => Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: Some("invalid_api_key"),
                ..ApiError::invalid(
                    "authorization",
                    if given.is_empty() {
                        "You didn't provide an API key: send it as `Authorization: Bearer <key>`."
                    } else {
                        "Incorrect API key provided."
                    },
                )
            }),
        }
    }

    /// Admits a request of `tenant` whose prompt is about `prompt_tokens` long, or the 429 with
    /// `Retry-After` and the `x-ratelimit-*` headers. The admission holds the tenant's in-flight
    /// slot and token reservation until dropped.
    pub fn admit(
        self: &Arc<Self>,
        tenant: &Tenant,
        prompt_tokens: u64,
        metrics: &Metrics,
    ) -> Result<Admission, Box<Refused>> {
        let now = Instant::now();
        let limits = self.keyring.read().map(|r| r.limits.of(&tenant.0)).unwrap_or_default();
        let Ok(mut usage) = self.usage.lock() else {
            let error = ApiError::internal("the rate limiter failed");
            return Err(Box::new(Refused { error, headers: HeaderMap::new() }));
        };
        let u = usage.entry(tenant.0.clone()).or_insert_with(|| Usage::new(limits, 0, now));
        let refused = |limit: &'static str, wait: Duration, message: String, u: &Usage| {
            metrics.tenant_rate_limited.with_label_values(&[&tenant.0, limit]).inc();
            let error = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                kind: "rate_limit_error",
                param: None,
                code: Some("rate_limit_exceeded"),
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u32),
            };
            Err(Box::new(Refused { error, headers: u.headers() }))
        };
        if let Some(max) = limits.concurrent_requests
            && u.in_flight >= max
        {
            let message = format!("Rate limit reached for `{}`: at most {max} requests at once.", tenant.0);
            return refused("concurrent_requests", Duration::from_secs(1), message, u);
        }
        if let Some(b) = u.requests.as_mut()
            && let Err(wait) = b.take(1.0, now)
        {
            let message = format!("Rate limit reached for `{}` on requests per minute ({}).", tenant.0, b.capacity);
            return refused("requests_per_minute", wait, message, u);
        }
        let reserved = prompt_tokens as f64;
        if let Some(b) = u.tokens.as_mut()
            && let Err(wait) = b.take(reserved, now)
        {
            // The request slot taken above goes back: this request is not served.
            if let Some(r) = u.requests.as_mut() {
                r.level = (r.level + 1.0).min(r.capacity);
            }
            let message = format!("Rate limit reached for `{}` on tokens per minute ({}).", tenant.0, b.capacity);
            return refused("tokens_per_minute", wait, message, u);
        }
        u.in_flight += 1;
        metrics.tenant_in_flight.with_label_values(&[&tenant.0]).inc();
        Ok(Admission {
            tenants: self.clone(),
            tenant: tenant.clone(),
            reserved: if u.tokens.is_some() { reserved } else { 0.0 },
            used: Mutex::new(None),
            headers: u.headers(),
            metrics: metrics.clone(),
        })
    }
}

impl Usage {
    fn new(limits: Limits, in_flight: u32, now: Instant) -> Self {
        Usage {
            limits,
            requests: limits.requests_per_minute.map(|n| Bucket::new(f64::from(n), now)),
            tokens: limits.tokens_per_minute.map(|n| Bucket::new(n as f64, now)),
            in_flight,
        }
    }

    /// OpenAI's `x-ratelimit-*` headers for what is left.
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (kind, bucket) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            let Some(b) = bucket else { continue };
            let pairs = [
                (format!("x-ratelimit-limit-{kind}"), format!("{}", b.capacity as u64)),
                (format!("x-ratelimit-remaining-{kind}"), format!("{}", b.level.max(0.0).floor() as u64)),
                (format!("x-ratelimit-reset-{kind}"), openai_duration(b.reset())),
            ];
            for (name, value) in pairs {
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    h.insert(n, v);
                }
            }
        }
        h
    }
}

/// A request a limit refused: the 429 and the `x-ratelimit-*` headers to send with it.
#[derive(Debug)]
pub struct Refused {
    /// The 429 (or a 500 if the limiter itself failed).
    pub error: ApiError,
    /// What is left of each limit.
    pub headers: HeaderMap,
}

/// A request admitted for a tenant: holds its in-flight slot and token reservation.
pub struct Admission {
    tenants: Arc<Tenants>,
    tenant: Tenant,
    reserved: f64,
    used: Mutex<Option<u64>>,
    headers: HeaderMap,
    metrics: Metrics,
}

impl Admission {
    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant.0
    }

    /// The `x-ratelimit-*` headers at admission.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The tokens the request used (prompt + completion), from its answer's `usage`.
    pub fn used(&self, tokens: u64) {
        if let Ok(mut u) = self.used.lock() {
            *u = Some(tokens);
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("tenant", &self.tenant).field("reserved", &self.reserved).finish()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.tenant_in_flight.with_label_values(&[&self.tenant.0]).dec();
        let used = self.used.lock().ok().and_then(|u| *u);
        let Ok(mut usage) = self.tenants.usage.lock() else { return };
        let Some(u) = usage.get_mut(&self.tenant.0) else { return };
        u.in_flight = u.in_flight.saturating_sub(1);
        if let (Some(b), Some(used)) = (u.tokens.as_mut(), used) {
            // Settle: what was used beyond the reservation is taken now (the level may go below
            // zero, which delays the tenant's next requests); what was reserved but unused returns.
            b.refill(Instant::now());
            b.level = (b.level + self.reserved - used as f64).min(b.capacity);
        }
    }
}

/// OpenAI's duration style in `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`.
fn openai_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{}s", (s * 10.0).round() / 10.0)
    } else {
        format!("{}m{}s", (s / 60.0).floor(), (s % 60.0).floor())
    }
}

/// Equality that takes as long whatever the inputs share (it depends on the lengths only).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A rough prompt length in tokens: a quarter of its characters (OpenAI's rule of thumb for
/// English), at least 1.
pub fn estimate_prompt_tokens(req: &serde_json::Map<String, serde_json::Value>) -> u64 {
    let chars: usize = match (req.get("prompt"), req.get("messages")) {
        (Some(p), _) => p.to_string().chars().count(),
        (_, Some(m)) => m.to_string().chars().count(),
        _ => 0,
    };
    (chars as u64 / 4).max(1)
}

/// Reads `tenant=key` lines (blank lines and `#` comments skipped) into keys.
pub fn parse_keys_file(text: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut keys = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((t, k)) if !t.trim().is_empty() && !k.trim().is_empty() => {
                keys.insert(t.trim().to_string(), k.trim().as_bytes().to_vec());
            }
            _ => return Err(format!("line {} is not `tenant=key`", n + 1)),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::register(&prometheus::Registry::new(), &["m".into()], crate::routing::Policy::LeastOutstanding)
            .unwrap()
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
        h
    }

    fn tenants(limits: &str) -> Arc<Tenants> {
        let t = Arc::new(Tenants::required());
        let keys = BTreeMap::from([("a".into(), b"key-a".to_vec()), ("b".into(), b"key-b".to_vec())]);
        t.set(keys, LimitsConfig::parse(limits).unwrap());
        t
    }

    #[test]
    fn keys_name_their_tenant_and_anything_else_is_a_401() {
        let t = tenants("{}");
        assert_eq!(t.authenticate(&bearer("key-b")).unwrap(), Some(Tenant("b".into())));
        for bad in [bearer("key-c"), bearer("key-"), bearer(""), HeaderMap::new()] {
            let err = t.authenticate(&bad).unwrap_err();
            assert_eq!((err.status.as_u16(), err.code), (401, Some("invalid_api_key")));
        }
        assert_eq!(Tenants::open().authenticate(&HeaderMap::new()).unwrap(), None);
        let fresh = Tenants::required();
        assert!(!fresh.synced() && fresh.authenticate(&bearer("key-a")).is_err(), "no keys yet: nobody");
    }

    #[test]
    fn each_limit_refuses_at_the_right_request_with_headers() {
        let m = metrics();
        let t = tenants(r#"{"default": {"requestsPerMinute": 3}, "tenants": {"b": {"concurrentRequests": 1}}}"#);
        let a = Tenant("a".into());
        let held: Vec<Admission> = (0..3).map(|_| t.admit(&a, 10, &m).unwrap()).collect();
        assert_eq!(held[2].headers()["x-ratelimit-remaining-requests"], "0");
        let refused = t.admit(&a, 10, &m).unwrap_err();
        let err = &refused.error;
        assert_eq!((err.status.as_u16(), err.code, err.retry_after), (429, Some("rate_limit_exceeded"), Some(20)));
        assert_eq!(refused.headers["x-ratelimit-limit-requests"], "3");
        let b = Tenant("b".into());
        let one = t.admit(&b, 10, &m).unwrap();
        assert!(t.admit(&b, 10, &m).is_err(), "b may have one in flight; its requests per minute are a's default");
        drop(one);
        assert!(t.admit(&b, 10, &m).is_ok(), "the slot came back");
    }

    #[test]
    fn tokens_reserve_at_admission_and_settle_at_the_end() {
        let m = metrics();
        let t = tenants(r#"{"default": {"tokensPerMinute": 100}}"#);
        let a = Tenant("a".into());
        let first = t.admit(&a, 60, &m).unwrap();
        assert!(t.admit(&a, 60, &m).is_err(), "60 reserved of 100: another 60 does not fit");
        first.used(20);
        drop(first);
        let second = t.admit(&a, 60, &m).unwrap();
        second.used(150);
        drop(second);
        let err = t.admit(&a, 1, &m).unwrap_err().error;
        assert!(err.message.contains("tokens per minute"), "{}", err.message);
    }

    #[test]
    fn removed_keys_stop_working_and_limits_parse_strictly() {
        let t = tenants("{}");
        t.set(BTreeMap::from([("a".into(), b"key-a".to_vec())]), LimitsConfig::default());
        assert!(t.authenticate(&bearer("key-b")).is_err());
        assert!(LimitsConfig::parse(r#"{"default": {"rpm": 1}}"#).is_err());
        assert!(LimitsConfig::parse(r#"{"default": {"requestsPerMinute": -1}}"#).is_err());
        assert_eq!(parse_keys_file("# x\na = k1\n\nb=k2").unwrap().len(), 2);
        assert!(parse_keys_file("nokey").is_err());
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"ab", b"abc")
        );
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    }
}
