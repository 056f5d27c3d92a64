//! Checkpoints named as people name them, `facebook/musicgen-small` (with an optional
//! `@revision`), found in the standard Hugging Face cache that `huggingface_hub` writes and
//! Python tools share: `<cache>/models--facebook--musicgen-small/refs/<revision>` holds the
//! commit, and `snapshots/<commit>/` the files. The cache is `$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`. What the cache lacks is downloaded ([`download`]) unless
//! `HF_HUB_OFFLINE` forbids it.

pub mod download;

use std::path::{Path, PathBuf};

use son1k_models::musicgen::model::{CONFIG_FILE, TOKENIZER_FILE};
use son1k_models::weights::{SHARD_INDEX, SINGLE_FILE};

use crate::error::EngineError;

/// A model repository on the Hub and the revision to use (a branch, a tag or a commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    /// `owner/name`.
    pub repo: String,
    /// `main` unless given after `@`.
    pub revision: String,
}

impl HubId {
    /// `owner/name` or `owner/name@revision`; `None` for anything else (a path, say).
    pub fn parse(text: &str) -> Option<Self> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (text, "main"),
        };
        let (owner, name) = repo.split_once('/')?;
        let part = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        // A revision becomes a path under the repository's `refs/`: nothing that leaves it.
        let revision_ok = !revision.is_empty()
            && !revision.starts_with('/')
            && !revision.contains("..")
            && !revision.contains("//")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        (part(owner) && part(name) && revision_ok).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The model's short name, as a server lists it: `musicgen-small`.
    pub fn name(&self) -> &str {
        self.repo.rsplit('/').next().unwrap_or(&self.repo)
    }

    /// Its folder in a cache: `models--owner--name`.
    fn folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }
}

/// The Hub cache this process uses, from the environment as `huggingface_hub` reads it.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(cache) = var("HF_HUB_CACHE") {
        return cache.into();
    }
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// The snapshot directory of `id` in `cache`: its revision's commit (a 40-digit revision
/// is a commit itself). What is missing is named, with where it was looked for.
pub fn snapshot(id: &HubId, cache: &Path) -> Result<PathBuf, EngineError> {
    let folder = id.folder(cache);
    let missing = |what: String| {
        EngineError::NotFound(format!(
            "{what}; fetch it with `huggingface-cli download {}` (into {}) or pass a \
             checkpoint directory",
            id.repo,
            cache.display()
        ))
    };
    if !folder.is_dir() {
        return Err(missing(format!(
            "model `{}` is not a checkpoint directory here, nor in the Hugging Face cache \
             (no {})",
            id.repo,
            folder.display()
        )));
    }
    let is_commit = id.revision.len() == 40 && id.revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        id.revision.clone()
    } else {
        let reference = folder.join("refs").join(&id.revision);
        let text = std::fs::read_to_string(&reference).map_err(|e| {
            missing(format!(
                "revision `{}` of `{}` is not in the cache ({}: {e})",
                id.revision,
                id.repo,
                reference.display()
            ))
        })?;
        let commit = text.trim();
        if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(missing(format!(
                "{} does not hold a commit id",
                reference.display()
            )));
        }
        commit.to_string()
    };
    let snapshot = folder.join("snapshots").join(&commit);
    if !snapshot.join(CONFIG_FILE).is_file() {
        return Err(missing(format!(
            "the snapshot of `{}` at {commit} has no config.json ({})",
            id.repo,
            snapshot.display()
        )));
    }
    Ok(snapshot)
}

/// Where a `--model` argument points: an existing directory as it is, else a Hub id's
/// snapshot in the cache, downloaded first where the cache lacks any of its files (unless
/// `HF_HUB_OFFLINE` is set); and the id the model is listed under (the directory's name, or
/// the repository's).
pub fn locate(argument: &Path) -> Result<(PathBuf, String), EngineError> {
    let hub = argument
        .to_str()
        .filter(|_| !argument.exists())
        .and_then(HubId::parse);
    let Some(id) = hub else {
        let name = argument
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| argument.display().to_string());
        return Ok((argument.to_path_buf(), name));
    };
    let cache = cache_dir();
    let dir = match snapshot(&id, &cache) {
        Ok(dir) if complete(&dir) => dir,
        Ok(dir) if download::offline() => {
            return Err(EngineError::NotFound(format!(
                "the snapshot of `{}` in the cache ({}) lacks tokenizer.json or the weights, \
                 and HF_HUB_OFFLINE forbids downloading them",
                id.repo,
                dir.display()
            )))
        }
        Err(error) if download::offline() => {
            return Err(EngineError::NotFound(format!(
                "{error} (HF_HUB_OFFLINE is set: nothing is downloaded)"
            )))
        }
        _ => download::fetch(&id, &cache)?,
    };
    Ok((dir, id.name().to_string()))
}

/// Whether a snapshot holds a whole checkpoint: its configuration, tokenizer and weights.
fn complete(dir: &Path) -> bool {
    let has = |file: &str| dir.join(file).is_file();
    has(CONFIG_FILE) && has(TOKENIZER_FILE) && (has(SINGLE_FILE) || has(SHARD_INDEX))
}

/// A checkpoint in the cache, as `son1k models` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedModel {
    /// `owner/name`.
    pub repo: String,
    /// Its refs (branches, tags) and the commit each points at.
    pub refs: Vec<(String, String)>,
    /// Its snapshots' commits.
    pub snapshots: Vec<String>,
    /// What its config says it is: `musicgen`, `musicgen_melody`, with `stereo` for two
    /// channels; `unknown` without a readable config.
    pub kind: String,
    /// Bytes on disk (its blobs, or its snapshots' files where it has no blobs).
    pub bytes: u64,
}

/// Every model repository in `cache`, by name; a cache that does not exist has none.
pub fn cached_models(cache: &Path) -> Vec<CachedModel> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut models: Vec<CachedModel> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
            Some(describe(repo, &entry.path()))
        })
        .collect();
    models.sort_by(|a, b| a.repo.cmp(&b.repo));
    models
}

/// One repository's refs, snapshots, kind and size.
fn describe(repo: String, folder: &Path) -> CachedModel {
    let names = |dir: PathBuf| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let refs: Vec<(String, String)> = names(folder.join("refs"))
        .into_iter()
        .filter_map(|name| {
            let commit = std::fs::read_to_string(folder.join("refs").join(&name)).ok()?;
            Some((name, commit.trim().to_string()))
        })
        .collect();
    let snapshots = names(folder.join("snapshots"));
    // The kind of what `main` points at, else of any snapshot.
    let main = refs
        .iter()
        .find(|(name, _)| name == "main")
        .map(|(_, commit)| commit.clone());
    let config = main
        .iter()
        .chain(snapshots.iter())
        .map(|commit| folder.join("snapshots").join(commit).join(CONFIG_FILE))
        .find_map(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let kind = config.map_or_else(
        || "unknown".to_string(),
        |config| {
            let kind = config["model_type"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            let channels = config["audio_encoder"]["audio_channels"]
                .as_u64()
                .or_else(|| config["decoder"]["audio_channels"].as_u64());
            if channels == Some(2) {
                format!("{kind}, stereo")
            } else {
                kind
            }
        },
    );
    let blobs = folder.join("blobs");
    let bytes = if blobs.is_dir() {
        size_of(&blobs)
    } else {
        size_of(&folder.join("snapshots"))
    };
    CachedModel {
        repo,
        refs,
        snapshots,
        kind,
        bytes,
    }
}

/// Bytes of the files under `dir` (links followed), at most a few levels deep.
fn size_of(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: usize) -> u64 {
        if depth > 4 {
            return 0;
        }
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| match std::fs::metadata(entry.path()) {
                Ok(meta) if meta.is_dir() => walk(&entry.path(), depth + 1),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_told_from_paths() {
        assert_eq!(
            HubId::parse("facebook/musicgen-small"),
            Some(HubId {
                repo: "facebook/musicgen-small".into(),
                revision: "main".into()
            })
        );
        let pinned = HubId::parse("facebook/musicgen-melody@refs/pr/3").unwrap();
        assert_eq!(
            (pinned.name(), pinned.revision.as_str()),
            ("musicgen-melody", "refs/pr/3")
        );
        for not_an_id in [
            "musicgen-small",
            "/abs/path",
            "a/b/c",
            "../x",
            "./x",
            "a/b@",
            "a/b@../../etc",
            "a/b@/etc/passwd",
            "a b/c",
        ] {
            assert_eq!(HubId::parse(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn a_snapshot_is_found_by_branch_or_commit_and_what_is_missing_is_named() {
        let cache = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let folder = cache.path().join("models--acme--tiny");
        let snapshot_dir = folder.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot_dir).unwrap();
        std::fs::write(snapshot_dir.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs").join("main"), format!("{commit}\n")).unwrap();

        let id = |text: &str| HubId::parse(text).unwrap();
        assert_eq!(
            snapshot(&id("acme/tiny"), cache.path()).unwrap(),
            snapshot_dir
        );
        let by_commit = format!("acme/tiny@{commit}");
        assert_eq!(
            snapshot(&id(&by_commit), cache.path()).unwrap(),
            snapshot_dir
        );

        let message = |text: &str| snapshot(&id(text), cache.path()).unwrap_err().to_string();
        let absent = message("acme/other");
        assert!(absent.contains("models--acme--other"), "{absent}");
        assert!(
            absent.contains("huggingface-cli download acme/other"),
            "{absent}"
        );
        let tag = message("acme/tiny@v2");
        assert!(
            tag.contains("revision `v2`") && tag.contains("refs"),
            "{tag}"
        );
        std::fs::write(folder.join("refs").join("bad"), "../../x\n").unwrap();
        assert!(message("acme/tiny@bad").contains("does not hold a commit id"));
        std::fs::remove_file(snapshot_dir.join("config.json")).unwrap();
        assert!(message("acme/tiny").contains("no config.json"));
    }
}
