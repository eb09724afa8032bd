//! `llmserve-server`: one model replica. OpenAI routes over the engine, SSE streaming, `/health`
//! and `/metrics` with vLLM's metric names.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

pub mod api;
pub mod args;
pub mod gpu;
pub mod http_metrics;
pub mod hub;
pub mod serve;
pub mod state;
