//! `llmserve-server`: parses flags, settles the CPU threading, and serves.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Parser;

/// Set only for the process re-executed with its CPU threading: the directory `--model` resolved to.
const RESOLVED_MODEL_DIR: &str = "LLMSERVE_RESOLVED_MODEL_DIR";

fn main() -> anyhow::Result<()> {
    let mut args = llmserve_server::args::Args::parse();
    llmserve_server::serve::init_tracing(&args.log_format);
    // A repo id becomes a directory in the Hugging Face cache (downloaded once). The process
    // re-executed below is handed that directory and asks the Hub nothing.
    let dir = match std::env::var_os(RESOLVED_MODEL_DIR) {
        Some(dir) => PathBuf::from(dir),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(llmserve_server::hub::resolve(&args.model, &args.revision))?,
    };
    args.model_path = Some(dir.clone());
    if let Some(n) = llmserve_server::serve::cpu_threads_to_set(&args)? {
        // Same process id, same arguments, before candle's thread pool exists: only the
        // environment changes.
        let err = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("RAYON_NUM_THREADS", n.to_string())
            .env(RESOLVED_MODEL_DIR, &dir)
            .exec();
        return Err(anyhow::anyhow!("re-executing with RAYON_NUM_THREADS={n} failed: {err}"));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(llmserve_server::serve::run(args))
}
