//! `llmserve-server`: parses flags, settles the CPU threading, and serves.
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = llmserve_server::args::Args::parse();
    if let Some(n) = llmserve_server::serve::cpu_threads_to_set(&args)? {
        // Same process id, same arguments, before any thread exists: only the variable changes.
        let err = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("RAYON_NUM_THREADS", n.to_string())
            .exec();
        return Err(anyhow::anyhow!("re-executing with RAYON_NUM_THREADS={n} failed: {err}"));
    }
    llmserve_server::serve::init_tracing(&args.log_format);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(llmserve_server::serve::run(args))
}
