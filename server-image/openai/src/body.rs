//! Request bodies, bounded in size and in time. A body over the limit is still read and dropped
//! (within [`DRAIN_BYTES`] and [`DRAIN_TIME`]) so that a client still sending it reads its 413
//! instead of a reset connection; one whose declared length is over the limit is never buffered.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;

use crate::ApiError;

/// A body over the limit is still read, and dropped, up to this many bytes ...
pub const DRAIN_BYTES: usize = 64 << 20;
/// ... or for this long.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// How large a body may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body in bytes.
    pub max_bytes: usize,
    /// Time for the whole body to arrive, from when its headers did.
    pub timeout: Duration,
}

/// The whole body of a request with `headers`, or the error to answer: 413 over the size limit,
/// 408 when it did not arrive in time, 400 when the client broke it off.
pub async fn read_body(body: Body, headers: &HeaderMap, limits: BodyLimits) -> Result<Bytes, ApiError> {
    let declared: Option<usize> = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let mut frames = body.into_data_stream();
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(limits.max_bytes));
    let too_large = declared.is_some_and(|n| n > limits.max_bytes);
    let deadline = tokio::time::Instant::now() + limits.timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => return Err(too_slow(limits.timeout)),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError {
                    code: Some("body_incomplete"),
                    ..ApiError::malformed("the request body broke off")
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if too_large || kept.len().saturating_add(frame.len()) > limits.max_bytes {
            let mut drained = kept.len().saturating_add(frame.len());
            let drain = async {
                while let Some(Ok(frame)) = frames.next().await {
                    drained = drained.saturating_add(frame.len());
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::too_large(limits.max_bytes));
        }
        kept.extend_from_slice(&frame);
    }
    Ok(Bytes::from(kept))
}

/// 408 for a body that did not arrive within `timeout`.
fn too_slow(timeout: Duration) -> ApiError {
    ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        code: Some("timeout"),
        ..ApiError::malformed(format!("the request body did not arrive within {} s", timeout.as_secs_f64()))
    }
}

/// Middleware: reads the whole body within `limits` before the handler runs, and answers the
/// error itself when that fails; handlers then see a complete body.
pub async fn buffered(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match read_body(body, &parts.headers, limits).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(err) => err.into_response(),
    }
}
