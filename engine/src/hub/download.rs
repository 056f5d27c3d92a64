//! Downloads of the checkpoint files the cache lacks, with the maintained `hf-hub` crate,
//! into the same cache layout `huggingface_hub` writes (blobs, a snapshot of links, a ref),
//! with a progress bar on stderr. `HF_ENDPOINT` names the Hub (default
//! `https://huggingface.co`), `HF_TOKEN` (or the token file `huggingface-cli login`
//! writes) authorises gated repositories, and `HF_HUB_OFFLINE=1` forbids the network.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use son1k_models::musicgen::model::{CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE};
use son1k_models::weights::{SHARD_INDEX, SINGLE_FILE as SINGLE_WEIGHTS};

use super::HubId;
use crate::error::EngineError;

/// The files of a MusicGen checkpoint, in the order they are fetched. The weights come
/// after: one `model.safetensors`, or the shards `model.safetensors.index.json` lists.
const REQUIRED: [&str; 2] = [CONFIG_FILE, TOKENIZER_FILE];
/// Files a checkpoint may lack (the defaults then apply).
const OPTIONAL: [&str; 1] = [GENERATION_CONFIG_FILE];

/// Whether `HF_HUB_OFFLINE` forbids downloads (`1`, `true`, `yes` or `on`, as
/// `huggingface_hub` reads it).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The Hub this process downloads from: `HF_ENDPOINT`, else `https://huggingface.co`.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
}

/// Fetches what the cache lacks of `id`'s checkpoint into `cache`, and returns its snapshot
/// directory. Files already there are not fetched again.
pub fn fetch(id: &HubId, cache: &Path) -> Result<PathBuf, EngineError> {
    let endpoint = endpoint();
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(endpoint.clone())
        .with_progress(true)
        .with_user_agent("son1k", env!("CARGO_PKG_VERSION"));
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let failed = |file: &str, error: &ApiError| failed(id, &endpoint, cache, file, error);
    let api = builder.build().map_err(|e| failed("", &e))?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let get = |file: &str| get(&repo, file, &failed);
    let mut snapshot = None;
    for file in REQUIRED {
        let path = get(file)?.ok_or_else(|| {
            EngineError::NotFound(format!(
                "`{}` at {} has no {file}: is it a MusicGen checkpoint?",
                id.repo, endpoint
            ))
        })?;
        snapshot.get_or_insert(path);
    }
    for file in OPTIONAL {
        get(file)?;
    }
    if get(SINGLE_WEIGHTS)?.is_none() {
        let index = get(SHARD_INDEX)?.ok_or_else(|| {
            EngineError::NotFound(format!(
                "`{}` at {endpoint} has neither {SINGLE_WEIGHTS} nor {SHARD_INDEX}",
                id.repo
            ))
        })?;
        for shard in shards(&index)? {
            get(&shard)?.ok_or_else(|| {
                EngineError::NotFound(format!(
                    "`{}` at {endpoint} lacks the shard {shard} that {SHARD_INDEX} lists",
                    id.repo
                ))
            })?;
        }
    }
    snapshot
        .and_then(|config| config.parent().map(Path::to_path_buf))
        .ok_or_else(|| EngineError::NotFound(format!("no snapshot of `{}`", id.repo)))
}

/// One file from the cache or the Hub; `None` when the Hub has no such file.
fn get(
    repo: &ApiRepo,
    file: &str,
    failed: &dyn Fn(&str, &ApiError) -> EngineError,
) -> Result<Option<PathBuf>, EngineError> {
    match repo.get(file) {
        Ok(path) => Ok(Some(path)),
        Err(ApiError::RequestError(error)) if matches!(*error, ureq::Error::StatusCode(404)) => {
            Ok(None)
        }
        Err(error) => Err(failed(file, &error)),
    }
}

/// The shard files a shard index lists (file names only: nothing that leaves the snapshot).
fn shards(index: &Path) -> Result<Vec<String>, EngineError> {
    let bad = |why: String| EngineError::NotFound(format!("{}: {why}", index.display()));
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for value in map.values() {
        let name = value
            .as_str()
            .filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && !n.starts_with('.'))
            .ok_or_else(|| bad(format!("a shard named {value} is not a file name")))?;
        if !shards.iter().any(|s| s == name) {
            shards.push(name.to_string());
        }
    }
    Ok(shards)
}

/// The error of a download that failed: what, from where, and how to do without.
fn failed(id: &HubId, endpoint: &str, cache: &Path, file: &str, error: &ApiError) -> EngineError {
    EngineError::NotFound(format!(
        "cannot download {file} of `{}`@{} from {endpoint}: {error}; with no network, fetch \
         it elsewhere (`huggingface-cli download {}`) into the Hugging Face cache ({}), or \
         pass a checkpoint directory",
        id.repo,
        id.revision,
        id.repo,
        cache.display()
    ))
}
