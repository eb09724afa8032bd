//! What every integration test of the server shares: the stories260k model loaded behind
//! `app(state)`, calls through `oneshot`, and readers of JSON, SSE and metrics.
#![allow(dead_code)] // each test binary uses its own part of it

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use llmserve_server::api::app;
use llmserve_server::args::Args;
use llmserve_server::serve;
use llmserve_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

pub fn model_dir() -> PathBuf {
    llmserve_test_support::stories260k()
}

pub fn args(extra: &[&str]) -> Args {
    let dir = model_dir();
    let mut v = vec!["llmserve-server", "--model", dir.to_str().unwrap()];
    v.extend_from_slice(extra);
    Args::parse_from(v)
}

pub fn loaded(extra: &[&str]) -> (AppState, Router) {
    let a = args(extra);
    let state = serve::state(&a).unwrap();
    serve::load(&a, &state).unwrap();
    (state.clone(), app(state))
}

pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    let req = match body {
        Some(b) => req.body(Body::from(b.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, bytes)
}

pub async fn json_call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let (s, _, b) = call(app, method, uri, body).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub fn reference(name: &str) -> String {
    std::fs::read_to_string(model_dir().join("reference").join(name)).unwrap()
}

/// The value of the first sample line starting with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub async fn metrics_text(app: &Router) -> String {
    String::from_utf8(call(app, "GET", "/metrics", None).await.2).unwrap()
}

/// The JSON chunks of an SSE body, `[DONE]` left out.
pub fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
