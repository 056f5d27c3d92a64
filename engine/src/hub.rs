//! Checkpoints named as people name them, `facebook/musicgen-small` (with an optional
//! `@revision`), found in the standard Hugging Face cache that `huggingface_hub` writes and
//! Python tools share: `<cache>/models--facebook--musicgen-small/refs/<revision>` holds the
//! commit, and `snapshots/<commit>/` the files. The cache is `$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`.

use std::path::{Path, PathBuf};

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
        let revision_ok = !revision.is_empty()
            && !revision.contains("..")
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
            "{what}; son1k does not download checkpoints yet: fetch it with \
             `huggingface-cli download {}` (into {}) or pass a checkpoint directory",
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
        text.trim().to_string()
    };
    let snapshot = folder.join("snapshots").join(&commit);
    if !snapshot.join("config.json").is_file() {
        return Err(missing(format!(
            "the snapshot of `{}` at {commit} has no config.json ({})",
            id.repo,
            snapshot.display()
        )));
    }
    Ok(snapshot)
}

/// Where a `--model` argument points: an existing directory as it is, else a Hub id's
/// snapshot in the cache; and the id the model is listed under (the directory's name, or
/// the repository's).
pub fn locate(argument: &Path) -> Result<(PathBuf, String), EngineError> {
    let hub = argument
        .to_str()
        .filter(|_| !argument.exists())
        .and_then(HubId::parse);
    match hub {
        Some(id) => Ok((snapshot(&id, &cache_dir())?, id.name().to_string())),
        None => {
            let name = argument
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| argument.display().to_string());
            Ok((argument.to_path_buf(), name))
        }
    }
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
        std::fs::remove_file(snapshot_dir.join("config.json")).unwrap();
        assert!(message("acme/tiny").contains("no config.json"));
    }
}
