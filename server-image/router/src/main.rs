//! `llmserve-router`: parses flags and serves.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = llmserve_router::args::Args::parse();
    llmserve_router::run::init_tracing(&args.log_format);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(llmserve_router::run::run(args))
}
