//! The router's HTTP surface: the OpenAI routes under the route prefix, `/health` and `/metrics`
//! at the root.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use llmserve_openai::ApiError;
use llmserve_openai::body::BodyLimits;
use serde_json::{Value, json};

use crate::backends::Pool;
use crate::metrics::{Metrics, UNKNOWN_MODEL};
use crate::tenants::{Tenant, Tenants};

pub use llmserve_openai::routes::{CHAT_COMPLETIONS, COMPLETIONS, HEALTH, METRICS, MODEL, MODELS};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Models and replicas.
    pub pool: Arc<Pool>,
    /// Service-level metrics.
    pub metrics: Metrics,
    /// Where the metrics live.
    pub registry: prometheus::Registry,
    /// HTTP client to the replicas.
    pub client: reqwest::Client,
    /// Largest request body, and how long it may take to arrive.
    pub body: BodyLimits,
    /// How long a replica may take to send its response headers, or the next part of a stream.
    pub response_timeout: Duration,
    /// Longest a request may take end to end.
    pub request_timeout: Duration,
    /// Whether the replicas are known yet.
    pub synced: Arc<AtomicBool>,
    /// Unix time the router started (the models' `created`).
    pub created: u64,
    /// API keys and per-tenant limits (open when no keys are configured).
    pub tenants: Arc<Tenants>,
    /// Set on SIGTERM: `/health` answers 503 while requests are still served.
    pub draining: Arc<AtomicBool>,
    /// The live figures `GET /status` answers.
    pub live: Arc<crate::live::Live>,
}

/// Live serving figures per model over the last minute (what the operator puts in the
/// application's status).
pub const STATUS: &str = "/status";

/// The router's routes; `prefix` is normalized (`""` or `/name`).
pub fn app(state: AppState, prefix: &str) -> Router {
    let openai = Router::new()
        .route(MODELS, get(list))
        .route(MODEL, get(one))
        .route(
            COMPLETIONS,
            post(|State(s): State<AppState>, t: Option<Extension<Tenant>>, h: HeaderMap, b: Body| {
                crate::proxy::forward(s, COMPLETIONS, t.map(|Extension(t)| t), h, b)
            }),
        )
        .route(
            CHAT_COMPLETIONS,
            post(|State(s): State<AppState>, t: Option<Extension<Tenant>>, h: HeaderMap, b: Body| {
                crate::proxy::forward(s, CHAT_COMPLETIONS, t.map(|Extension(t)| t), h, b)
            }),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let routes = if prefix.is_empty() { openai } else { Router::new().nest(prefix, openai) };
    routes
        .route(HEALTH, get(health))
        .route(METRICS, get(metrics))
        .route(STATUS, get(status))
        .fallback(|| async { ApiError::no_route() })
        .with_state(state)
}

async fn status(State(state): State<AppState>) -> Json<crate::live::Snapshot> {
    Json(state.live.snapshot())
}

fn card(state: &AppState, model: &str) -> Value {
    json!({
        "id": model,
        "object": "model",
        "created": state.created,
        "owned_by": "llmserve",
        "ready_replicas": state.pool.replicas(model).len(),
    })
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": state.pool.models().iter().map(|m| card(&state, m)).collect::<Vec<_>>()}))
}

async fn one(State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    if state.pool.knows(&model) {
        Ok(Json(card(&state, &model)))
    } else {
        Err(ApiError::model_not_found(&model, &state.pool.models().iter().map(String::as_str).collect::<Vec<_>>()))
    }
}

/// `/metrics`, `/health` and `/status` alone, for `--metrics-port`.
pub fn side_app(state: AppState) -> Router {
    Router::new()
        .route(HEALTH, get(health))
        .route(METRICS, get(metrics))
        .route(STATUS, get(status))
        .fallback(|| async { ApiError::no_route() })
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        ApiError::unavailable("shutting down").into_response()
    } else if !state.synced.load(Ordering::Relaxed) {
        ApiError::unavailable("the model replicas are not known yet").into_response()
    } else if !state.tenants.synced() {
        ApiError::unavailable("the API keys are not read yet").into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

/// Every OpenAI route asks for a key when keys are configured: 401 before the body is read.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match state.tenants.authenticate(req.headers()) {
        Ok(Some(tenant)) => {
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(err) => {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .and_then(|p| {
                    [COMPLETIONS, CHAT_COMPLETIONS, MODELS, MODEL].into_iter().find(|r| p.as_str().ends_with(r))
                })
                .unwrap_or("unmatched");
            state.metrics.requests.with_label_values(&[UNKNOWN_MODEL, route, "4xx"]).inc();
            err.into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    for m in state.pool.models() {
        state.metrics.ready_replicas.with_label_values(&[m]).set(state.pool.replicas(m).len() as i64);
    }
    llmserve_openai::metrics_response(&state.registry)
}
