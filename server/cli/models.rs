//! `son1k models`: the checkpoints in the Hugging Face cache that `--model` finds by name.

use std::path::PathBuf;

use son1k_engine::hub::{cache_dir, cached_models};

/// Where to look.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// The Hub cache (default: $HF_HUB_CACHE, else $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// Lists each repository: its id, kind, size and revisions.
pub(super) fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let cache = args.cache.unwrap_or_else(cache_dir);
    let models = cached_models(&cache);
    if models.is_empty() {
        println!(
            "no checkpoints in the Hugging Face cache at {} (fetch one with \
             `huggingface-cli download facebook/musicgen-small`)",
            cache.display()
        );
        return Ok(());
    }
    println!("checkpoints in {}:", cache.display());
    for model in models {
        let revisions: Vec<String> = if model.refs.is_empty() {
            model
                .snapshots
                .iter()
                .map(|c| short(c).to_string())
                .collect()
        } else {
            model
                .refs
                .iter()
                .map(|(name, commit)| format!("{name} {}", short(commit)))
                .collect()
        };
        println!(
            "  {:<36} {:<24} {:>10}  {}",
            model.repo,
            model.kind,
            human_bytes(model.bytes),
            revisions.join(", ")
        );
    }
    Ok(())
}

/// A commit's first 10 digits.
fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// `1.2 GB`, `340 MB`, `12 kB`.
fn human_bytes(bytes: u64) -> String {
    let units = [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, size) in units {
        if bytes as f64 >= size {
            return format!("{:.1} {unit}", bytes as f64 / size);
        }
    }
    format!("{bytes} B")
}
