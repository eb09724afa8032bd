//! `make-random-model --preset tiny-qwen2|qwen2.5-0.5b --out DIR [--tokenizer tokenizer.json]`:
//! writes a random-weight model in Hugging Face layout (for GPU checks where no hub is reachable).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let (Some(preset), Some(out)) = (get("--preset"), get("--out")) else {
        eprintln!("usage: make-random-model --preset tiny-qwen2|qwen2.5-0.5b --out DIR [--tokenizer FILE]");
        std::process::exit(2);
    };
    let tok = get("--tokenizer").map(PathBuf::from);
    llmserve_engine::random_model::write(&PathBuf::from(&out), preset.parse()?, tok.as_deref())?;
    println!("wrote {preset} to {out}");
    Ok(())
}
