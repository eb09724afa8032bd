//! `--model` as a Hugging Face repo id: the files a model needs, fetched into the Hugging Face
//! cache (`HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN` as the `huggingface_hub` client reads them),
//! with progress in the logs. A cached file is used without touching the network.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hf_hub::api::tokio::{ApiBuilder, ApiError, ApiRepo, Progress};
use hf_hub::{Repo, RepoType};

/// Files every model directory has.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
/// Files used when present.
const OPTIONAL: &[&str] = &["tokenizer_config.json", "generation_config.json"];

/// A local model directory for `model`: the directory itself, or the cache snapshot of the repo
/// id at `revision`, downloaded as needed.
pub async fn resolve(model: &str, revision: &str) -> anyhow::Result<PathBuf> {
    let local = Path::new(model);
    if local.join("config.json").is_file() {
        return Ok(local.to_path_buf());
    }
    if local.is_absolute() || model.starts_with('.') || local.exists() || !is_repo_id(model) {
        anyhow::bail!(
            "--model {model:?} is neither a model directory (no config.json there) nor a Hugging Face repo id like \
                Qwen/Qwen2.5-0.5B-Instruct"
        );
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| anyhow::anyhow!("the Hugging Face client could not start: {e}"))?;
    let id = Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string());
    let repo = Hub { api: api.repo(id.clone()), cache: hf_hub::Cache::from_env().repo(id) };
    let failed = |file: &str, e: ApiError| {
        anyhow::anyhow!(
            "downloading {file} of {model} (revision {revision}) from {endpoint} failed: {e}. Without access to the \
                Hugging Face Hub, download the model elsewhere and pass its directory to --model"
        )
    };
    tracing::info!(
        model, revision, %endpoint,
        "fetching the model from the Hugging Face Hub (cached files are reused)"
    );
    let started = Instant::now();
    let mut config = None;
    for file in REQUIRED {
        let path = fetch(&repo, file).await.map_err(|e| failed(file, e))?;
        config.get_or_insert(path);
    }
    for file in OPTIONAL {
        if let Err(e) = fetch(&repo, file).await {
            tracing::info!(model, file, error = %e, "optional file not fetched");
        }
    }
    // One file, or shards listed by an index.
    if repo.cache.get("model.safetensors").is_none() {
        match fetch(&repo, "model.safetensors.index.json").await {
            Ok(index) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
                let mut shards: Vec<&str> = v
                    .get("weight_map")
                    .and_then(serde_json::Value::as_object)
                    .map(|m| m.values().filter_map(|f| f.as_str()).collect())
                    .unwrap_or_default();
                shards.sort_unstable();
                shards.dedup();
                for shard in shards {
                    fetch(&repo, shard).await.map_err(|e| failed(shard, e))?;
                }
            }
            Err(_) => {
                fetch(&repo, "model.safetensors").await.map_err(|e| failed("model.safetensors", e))?;
            }
        }
    }
    let dir = config
        .and_then(|c| c.parent().map(Path::to_path_buf))
        .ok_or_else(|| anyhow::anyhow!("config.json of {model} is not in a directory"))?;
    tracing::info!(model, dir = %dir.display(), seconds = started.elapsed().as_secs_f64(), "model files ready");
    Ok(dir)
}

/// `owner/name` or `name`, as the Hub spells repo ids.
fn is_repo_id(s: &str) -> bool {
    let ok =
        |p: &str| !p.is_empty() && p.len() <= 96 && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match s.split_once('/') {
        Some((owner, name)) => ok(owner) && ok(name),
        None => ok(s),
    }
}

/// The cached file, or a download of it.
async fn fetch(hub: &Hub, file: &str) -> Result<PathBuf, ApiError> {
    if let Some(path) = hub.cache.get(file) {
        return Ok(path);
    }
    hub.api.download_with_progress(file, LogProgress::default()).await
}

/// One repo at one revision: in the cache and on the Hub.
struct Hub {
    api: ApiRepo,
    cache: hf_hub::CacheRepo,
}

/// Download progress as log lines, at most one every two seconds per file.
#[derive(Clone, Default)]
struct LogProgress {
    file: String,
    total: usize,
    done: usize,
    last: Option<Instant>,
}

impl Progress for LogProgress {
    async fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size;
        self.last = Some(Instant::now());
        tracing::info!(file = filename, megabytes = size as f64 / 1e6, "downloading");
    }

    async fn update(&mut self, size: usize) {
        self.done += size;
        if self.last.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
            self.last = Some(Instant::now());
            tracing::info!(file = %self.file, percent = (100 * self.done / self.total.max(1)) as u64, "downloading");
        }
    }

    async fn finish(&mut self) {
        tracing::info!(file = %self.file, megabytes = self.total as f64 / 1e6, "downloaded");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repo_ids() {
        for ok in ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "meta-llama/Llama-3.2-1B"] {
            assert!(super::is_repo_id(ok), "{ok}");
        }
        for bad in ["a/b/c", "", "/abs", "has space/x", "x/"] {
            assert!(!super::is_repo_id(bad), "{bad}");
        }
    }
}
