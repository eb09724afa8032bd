//! One mapping from everything that can go wrong to an HTTP status and OpenAI's error envelope
//! `{"error": {"message", "type", "param", "code"}}`; the same envelope is sent as an SSE event
//! when a stream fails. Internals never leak. Shared by the model server and the router.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

pub mod body;
pub mod files;
pub mod routes;
pub mod serve;
pub mod tls;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// For people.
    pub message: String,
    /// OpenAI's error type.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (429/503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// 400 for a bad field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
            retry_after: None,
        }
    }

    /// 400 for a parameter this server does not implement (yet): refused, never silently ignored.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        ApiError { code: Some("unsupported"), ..ApiError::invalid(param, message) }
    }

    /// 400 for a body that is not the JSON we expect.
    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_json"),
            retry_after: None,
        }
    }

    /// 404 for a model that is not served here; the message lists the models that are.
    pub fn model_not_found(requested: &str, served: &[&str]) -> Self {
        let served = served.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ");
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{requested}` does not exist. Served here: {served}."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body exceeds {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }

    /// 429 when the waiting queue is full.
    pub fn overloaded() -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server's request queue is full; retry later".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
            retry_after: Some(1),
        }
    }

    /// 503 while the model loads or after the engine stopped.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "service_unavailable",
            param: None,
            code: Some("unavailable"),
            retry_after: Some(5),
        }
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: "no such route".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    /// 500 for an engine failure; the message says what failed, not how.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The envelope as JSON.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// The Prometheus text exposition of `registry`, as `/metrics` answers it.
pub fn metrics_response(registry: &prometheus::Registry) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf) {
        return ApiError::internal(format!("encoding metrics failed: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], buf).into_response()
}

/// `2xx`, `4xx` ... of a status code: the bounded label every HTTP metric uses.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
