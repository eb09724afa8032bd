//! Forwards one OpenAI request to a replica of its model and passes the answer back: JSON bodies
//! whole, SSE streams chunk by chunk. Records the router's service-level metrics on the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use llmserve_openai::body::read_body;
use llmserve_openai::{ApiError, status_class};
use serde_json::Value;

use crate::api::AppState;
use crate::backends::Lease;
use crate::metrics::{Metrics, UNKNOWN_MODEL};
use crate::routing::prefix_key;
use crate::sse::{Usage, UsageFilter};
use crate::tenants::{Admission, Refused, Tenant, estimate_prompt_tokens};

/// Request headers passed on to the replica.
const FORWARDED_REQUEST_HEADERS: &[header::HeaderName] = &[header::AUTHORIZATION, header::ACCEPT];
/// Response headers passed back to the client.
const FORWARDED_RESPONSE_HEADERS: &[header::HeaderName] =
    &[header::CONTENT_TYPE, header::RETRY_AFTER, header::CACHE_CONTROL];
const REQUEST_ID: &str = "x-request-id";

/// Forwards a `POST` on `route` (a path template such as `/v1/completions`).
pub async fn forward(
    state: AppState,
    route: &'static str,
    tenant: Option<Tenant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let bytes = match read_body(body, &headers, state.body).await {
        Ok(bytes) => bytes,
        Err(err) => return reject(&state.metrics, UNKNOWN_MODEL, route, start, err),
    };
    let mut req = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => {
            return reject(
                &state.metrics,
                UNKNOWN_MODEL,
                route,
                start,
                ApiError::malformed("the request body must be a JSON object"),
            );
        }
        Err(e) => {
            return reject(
                &state.metrics,
                UNKNOWN_MODEL,
                route,
                start,
                ApiError::malformed(format!("the request body is not valid JSON: {e}")),
            );
        }
    };
    let models: Vec<&str> = state.pool.models().iter().map(String::as_str).collect();
    let model = match req.get("model").and_then(Value::as_str) {
        Some(m) if state.pool.knows(m) => m.to_string(),
        Some(m) => return reject(&state.metrics, UNKNOWN_MODEL, route, start, ApiError::model_not_found(m, &models)),
        None => {
            let err = ApiError::invalid("model", format!("`model` is required: one of {}", models.join(", ")));
            return reject(&state.metrics, UNKNOWN_MODEL, route, start, err);
        }
    };
    // Streams report their usage only when asked; the router always asks, and strips the answer
    // again when the client did not ask itself.
    let streaming = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let client_wants_usage = req.get("stream_options").and_then(|o| o.get("include_usage")?.as_bool()).unwrap_or(false);
    let strip = streaming && !client_wants_usage;
    let body = match req.get_mut("stream_options") {
        _ if !strip => bytes,
        Some(Value::Object(o)) => {
            o.insert("include_usage".into(), Value::Bool(true));
            Bytes::from(serde_json::to_vec(&req).unwrap_or_default())
        }
        None => {
            req.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
            Bytes::from(serde_json::to_vec(&req).unwrap_or_default())
        }
        Some(_) => bytes, // not an object: the replica answers the error
    };

    let admission = match &tenant {
        Some(t) => match state.tenants.admit(t, estimate_prompt_tokens(&req), &state.metrics) {
            Ok(a) => Some(a),
            Err(refused) => {
                let Refused { error, headers } = *refused;
                let class = status_class(error.status.as_u16());
                state.metrics.tenant_requests.with_label_values(&[&t.0, &model, class]).inc();
                let mut resp = reject(&state.metrics, &model, route, start, error);
                resp.headers_mut().extend(headers);
                return resp;
            }
        },
        None => None,
    };
    let limit_headers = admission.as_ref().map(|a| a.headers().clone()).unwrap_or_default();
    let key = state.pool.routing().affinity().and_then(|a| prefix_key(&req, a.prefix_chars));
    let tracker = Tracker::new(state.metrics.clone(), model.clone(), route, start, admission);
    let (upstream, lease) = match send(&state, &model, route, &headers, body, key.as_deref()).await {
        Ok(r) => r,
        Err(err) => {
            tracker.count(err.status);
            return err.into_response();
        }
    };
    let status = upstream.status();
    tracker.count(status);
    let mut out = Response::builder().status(status);
    if let Some(h) = out.headers_mut() {
        h.extend(limit_headers);
    }
    for name in FORWARDED_RESPONSE_HEADERS.iter().map(|h| h.as_str()).chain([REQUEST_ID]) {
        if let Some(v) = upstream.headers().get(name) {
            out = out.header(name, v.clone());
        }
    }
    let is_sse = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        out = out.header("x-accel-buffering", HeaderValue::from_static("no"));
        let passing = Passing {
            upstream: upstream.bytes_stream().boxed(),
            filter: UsageFilter::new(strip),
            tracker,
            lease,
            silence: state.response_timeout,
            deadline: tokio::time::Instant::from_std(start) + state.request_timeout,
            done: false,
        };
        return out
            .body(Body::from_stream(pass_through(passing)))
            .unwrap_or_else(|_| ApiError::internal("building the response failed").into_response());
    }
    let deadline = tokio::time::Instant::from_std(start) + state.request_timeout;
    let body = match tokio::time::timeout_at(deadline, upstream.bytes()).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            failed(&state.metrics, &model, &lease);
            tracing::warn!(model, "replica did not finish its answer within the request timeout");
            return ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                code: Some("timeout"),
                ..ApiError::internal("the model replica did not finish its answer within the request timeout")
            }
            .into_response();
        }
        Ok(Err(e)) => {
            tracing::warn!(model, error = %e, "replica failed while sending its answer");
            return ApiError {
                status: StatusCode::BAD_GATEWAY,
                ..ApiError::internal("the model replica failed while answering")
            }
            .into_response();
        }
    };
    tracker.first_byte();
    if status.is_success() {
        tracker.usage(serde_json::from_slice::<Value>(&body).ok().as_ref().and_then(Usage::of));
    }
    drop(lease);
    out.body(Body::from(body)).unwrap_or_else(|_| ApiError::internal("building the response failed").into_response())
}

/// Records a failed request on its replica, and the ejection when it caused one.
fn failed(metrics: &Metrics, model: &str, lease: &Lease) {
    if lease.failed() {
        metrics.ejections.with_label_values(&[model]).inc();
        tracing::warn!(model, replica = %lease.replica().url, "replica ejected after failures in a row");
    }
}

/// Sends to the least busy replica in good standing. A refused connection, or a 503 (a replica
/// loading or whose engine stopped), is retried once on another replica: nothing reached the client
/// yet, and the replica did no work. Every answer counts for or against the replica's standing.
async fn send(
    state: &AppState,
    model: &str,
    route: &str,
    headers: &HeaderMap,
    body: Bytes,
    key: Option<&str>,
) -> Result<(reqwest::Response, Lease), ApiError> {
    let mut refused: Option<String> = None;
    let mut unavailable: Option<(reqwest::Response, Lease)> = None;
    for attempt in 0..2 {
        let Some((lease, reason)) = state.pool.pick(model, refused.as_deref(), key) else { break };
        state.metrics.picks.with_label_values(&[model, state.pool.routing().name(), reason.label()]).inc();
        if attempt == 1 {
            state.metrics.retries.with_label_values(&[model]).inc();
        }
        let url = format!("{}{}", lease.replica().url, route);
        let mut rb = state.client.post(&url).header(header::CONTENT_TYPE, "application/json").body(body.clone());
        for name in FORWARDED_REQUEST_HEADERS.iter().map(|h| h.as_str()).chain([REQUEST_ID]) {
            if let Some(v) = headers.get(name) {
                rb = rb.header(name, v.clone());
            }
        }
        match tokio::time::timeout(state.response_timeout, rb.send()).await {
            Ok(Ok(resp)) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && attempt == 0 => {
                tracing::warn!(model, replica = %lease.replica().url, "replica unavailable; trying another");
                failed(&state.metrics, model, &lease);
                refused = Some(lease.replica().url.clone());
                unavailable = Some((resp, lease));
            }
            Ok(Ok(resp)) => {
                if resp.status().is_server_error() {
                    failed(&state.metrics, model, &lease);
                } else {
                    lease.succeeded();
                }
                return Ok((resp, lease));
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(model, replica = %lease.replica().url, error = %e, "replica refused the connection");
                lease.replica().refused();
                failed(&state.metrics, model, &lease);
                refused = Some(lease.replica().url.clone());
            }
            Ok(Err(e)) => {
                tracing::warn!(model, replica = %lease.replica().url, error = %e, "replica failed before answering");
                failed(&state.metrics, model, &lease);
                return Err(ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    ..ApiError::internal("the model replica failed before answering")
                });
            }
            Err(_) => {
                failed(&state.metrics, model, &lease);
                return Err(ApiError {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    code: Some("timeout"),
                    ..ApiError::internal(format!(
                        "the model replica did not answer within {:?}",
                        state.response_timeout
                    ))
                });
            }
        }
    }
    // The replica's own 503 (with its Retry-After) when no other replica could take the request.
    if let Some(answer) = unavailable {
        return Ok(answer);
    }
    Err(ApiError {
        retry_after: Some(1),
        code: Some("no_ready_replica"),
        ..ApiError::unavailable(format!("no ready replica of model `{model}`; retry later"))
    })
}

/// Answers an error found before any replica was asked.
fn reject(metrics: &Metrics, model: &str, route: &str, start: Instant, err: ApiError) -> Response {
    metrics.requests.with_label_values(&[model, route, status_class(err.status.as_u16())]).inc();
    metrics.duration.with_label_values(&[model, route]).observe(start.elapsed().as_secs_f64());
    err.into_response()
}

/// The metrics of one forwarded request: in flight until dropped (the stream's end, or the
/// client going away), then its duration.
struct Tracker {
    metrics: Metrics,
    model: String,
    route: &'static str,
    start: Instant,
    first_byte_seen: std::sync::atomic::AtomicBool,
    /// The tenant's admission when API keys are on: its slot and token reservation, settled when
    /// the tracker goes.
    admission: Option<Admission>,
}

impl Tracker {
    fn new(
        metrics: Metrics,
        model: String,
        route: &'static str,
        start: Instant,
        admission: Option<Admission>,
    ) -> Arc<Self> {
        metrics.in_flight.with_label_values(&[&model]).inc();
        Arc::new(Tracker { metrics, model, route, start, first_byte_seen: false.into(), admission })
    }

    fn count(&self, status: StatusCode) {
        let class = status_class(status.as_u16());
        self.metrics.requests.with_label_values(&[&self.model, self.route, class]).inc();
        if let Some(a) = &self.admission {
            self.metrics.tenant_requests.with_label_values(&[a.tenant(), &self.model, class]).inc();
        }
    }

    fn first_byte(&self) {
        if !self.first_byte_seen.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.metrics
                .first_byte
                .with_label_values(&[&self.model, self.route])
                .observe(self.start.elapsed().as_secs_f64());
        }
    }

    fn usage(&self, usage: Option<Usage>) {
        if let Some(u) = usage {
            self.metrics.prompt_tokens.with_label_values(&[&self.model]).inc_by(u.prompt);
            self.metrics.completion_tokens.with_label_values(&[&self.model]).inc_by(u.completion);
            if let Some(a) = &self.admission {
                let tokens = &self.metrics.tenant_tokens;
                tokens.with_label_values(&[a.tenant(), &self.model, "prompt"]).inc_by(u.prompt);
                tokens.with_label_values(&[a.tenant(), &self.model, "completion"]).inc_by(u.completion);
                a.used(u.prompt.saturating_add(u.completion));
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.metrics.duration.with_label_values(&[&self.model, self.route]).observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.with_label_values(&[&self.model]).dec();
    }
}

struct Passing {
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    filter: UsageFilter,
    tracker: Arc<Tracker>,
    lease: Lease,
    /// Longest the replica may stay silent between two parts of the stream.
    silence: Duration,
    /// When the request's time is up, whatever the replica does.
    deadline: tokio::time::Instant,
    done: bool,
}

/// The replica's SSE stream, event by event as they complete; dropping it (client gone) drops
/// the connection to the replica, which aborts the sequence there.
fn pass_through(p: Passing) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    stream::unfold(p, |mut p| async move {
        if p.done {
            return None;
        }
        loop {
            let wait = p.deadline.min(tokio::time::Instant::now() + p.silence);
            let Ok(next) = tokio::time::timeout_at(wait, p.upstream.next()).await else {
                p.done = true;
                return Some((Ok(timed_out(&mut p)), p));
            };
            match next {
                Some(Ok(chunk)) => {
                    p.tracker.first_byte();
                    let out = p.filter.push(&chunk);
                    if !out.is_empty() {
                        return Some((Ok(out), p));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(model = %p.tracker.model, error = %e, "replica's stream broke off");
                    failed(&p.tracker.metrics, &p.tracker.model, &p.lease);
                    p.done = true;
                    return Some((Err(std::io::Error::other("the model replica's stream broke off")), p));
                }
                None => {
                    p.done = true;
                    p.tracker.usage(p.filter.usage);
                    let rest = p.filter.finish();
                    return if rest.is_empty() { None } else { Some((Ok(rest), p)) };
                }
            }
        }
    })
}

/// Ends a stream whose time ran out with an error event: the request's own deadline, or a replica
/// silent for longer than the response timeout (which counts against the replica).
fn timed_out(p: &mut Passing) -> Bytes {
    let message = if tokio::time::Instant::now() >= p.deadline {
        "the request took longer than the router's request timeout".to_string()
    } else {
        failed(&p.tracker.metrics, &p.tracker.model, &p.lease);
        tracing::warn!(model = %p.tracker.model, replica = %p.lease.replica().url, "replica went silent mid-stream");
        format!("the model replica sent nothing for {} s", p.silence.as_secs_f64())
    };
    let err = ApiError { status: StatusCode::GATEWAY_TIMEOUT, code: Some("timeout"), ..ApiError::internal(message) };
    Bytes::from(format!("data: {}\n\n", err.body()))
}
