//! llmserve's router: the OpenAI-compatible ingress of one LlmApplication. It routes by the
//! request's `model` to that model's replicas (static `--backend` flags, or EndpointSlices in a
//! cluster), balances by least outstanding requests or prefix affinity (`routing`), asks for API
//! keys and holds tenants to their limits when configured (`tenants`), passes streams through
//! chunk by chunk, and records service-level metrics that stay on whatever the engines' metrics
//! settings are.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

pub mod api;
pub mod args;
pub mod backends;
pub mod discovery;
pub mod live;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod run;
pub mod sse;
pub mod tenants;
