//! The OpenAI paths both the server and the router serve.

/// `GET` the served models.
pub const MODELS: &str = "/v1/models";
/// `GET` one model.
pub const MODEL: &str = "/v1/models/{model}";
/// `POST` a text completion.
pub const COMPLETIONS: &str = "/v1/completions";
/// `POST` a chat completion.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// Readiness.
pub const HEALTH: &str = "/health";
/// Prometheus exposition.
pub const METRICS: &str = "/metrics";
