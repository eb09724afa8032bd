//! `llmserve-operator`: parses flags and runs the operator.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = llmserve_operator::run::Args::parse();
    llmserve_operator::run::init_tracing(&args.log_format);
    llmserve_operator::run::run(args).await
}
