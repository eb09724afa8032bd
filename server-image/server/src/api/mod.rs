//! The HTTP surface: OpenAI routes, `/health`, `/metrics`. One handler module per family.

mod chat;
mod completions;
pub mod error;
mod generate;
mod models;
pub mod tools;
pub mod validate;

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;

use crate::http_metrics::status_class;
use crate::state::AppState;

pub use llmserve_openai::routes::{CHAT_COMPLETIONS, COMPLETIONS, HEALTH, METRICS, MODEL, MODELS};

/// The server's router.
pub fn app(state: AppState) -> Router {
    let limit = state.body.max_bytes;
    Router::new()
        .route(MODELS, get(models::list))
        .route(MODEL, get(models::get_one))
        .route(COMPLETIONS, post(completions::create))
        .route(CHAT_COMPLETIONS, post(chat::create))
        .route(HEALTH, get(health))
        .route(METRICS, get(metrics))
        .fallback(|| async { error::ApiError::no_route() })
        .layer(middleware::from_fn_with_state(state.body, llmserve_openai::body::buffered))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `/metrics` and `/health` alone, for `--metrics-port`.
pub fn side_app(state: AppState) -> Router {
    Router::new()
        .route(HEALTH, get(health))
        .route(METRICS, get(metrics))
        .fallback(|| async { error::ApiError::no_route() })
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return error::ApiError::unavailable("shutting down").into_response();
    }
    match state.loaded.get() {
        Some(l) if l.engine.is_alive() => (StatusCode::OK, "ok").into_response(),
        Some(_) => error::ApiError::unavailable("the engine has stopped").into_response(),
        None => error::ApiError::unavailable("the model is loading").into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    llmserve_openai::metrics_response(&state.registry)
}

/// Records requests by route template and status class, in-flight requests, and the duration
/// until the response body's last byte (streams included).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let http = state.http.clone();
    let model = http.model().to_string();
    http.in_flight.with_label_values(&[&route, &model]).inc();
    let start = Instant::now();
    let resp = next.run(req).await;
    let mut resp = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's own body-limit rejection, in the OpenAI envelope.
        error::ApiError::too_large(state.body.max_bytes).into_response()
    } else {
        resp
    };
    http.requests.with_label_values(&[&route, &model, status_class(resp.status().as_u16())]).inc();
    let guard = Done { http, route, model, start };
    let body = std::mem::take(resp.body_mut());
    *resp.body_mut() = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _ = &guard;
        chunk
    }));
    resp
}

struct Done {
    http: crate::http_metrics::HttpMetrics,
    route: String,
    model: String,
    start: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.http.duration.with_label_values(&[&self.route, &self.model]).observe(self.start.elapsed().as_secs_f64());
        self.http.in_flight.with_label_values(&[&self.route, &self.model]).dec();
    }
}
