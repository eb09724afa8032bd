//! `llmserve-server`: parses flags and serves.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = llmserve_server::args::Args::parse();
    llmserve_server::serve::init_tracing(&args.log_format);
    llmserve_server::serve::run(args).await
}
