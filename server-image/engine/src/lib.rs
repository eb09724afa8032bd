//! llmserve's inference engine: Hugging Face Llama and Qwen2 checkpoints on candle (CPU, or CUDA
//! with the `cuda` feature), a paged KV cache, and sampling.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

pub mod blocks;
pub mod config;
pub mod engine;
pub mod error;
pub mod guided;
pub mod metrics;
pub mod model;
pub mod random_model;
pub mod sampling;
pub mod scheduler;
pub mod stop;
pub mod tokenizer;

pub use error::{Error, Result};
