//! The OpenAI error envelope, shared with the router (`llmserve-openai`).

pub use llmserve_openai::ApiError;
