//! A node's copies of cluster jobs' audio, fetched from the object store the first time a
//! client of this node reads a job's file, so its pieces are then read from disk at any
//! offset. The copies live in their own directory (`<data dir>/cluster-audio`), apart from
//! the jobs this node's registry keeps, and are removed once older than the retention.
//!
//! One download per file at a time (a second reader waits for the first); each streams to
//! a temporary file of its own, renamed into place only when whole and of the size the
//! job's record gives, so a reader never sees half a file and memory stays bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::object_store::{GetErrorKind, ObjectStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audio::AudioFormat;
use crate::error::EngineError;

/// Numbers each download's temporary file.
static NEXT_DOWNLOAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes read from the broker at a time.
const CHUNK: usize = 128 * 1024;

/// The copies and the downloads under way.
pub(crate) struct FetchedAudio {
    dir: PathBuf,
    retention: Duration,
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl FetchedAudio {
    /// Copies in `dir`, kept `retention`.
    pub(crate) fn new(dir: PathBuf, retention: Duration) -> Self {
        Self {
            dir,
            retention,
            downloads: Mutex::default(),
        }
    }

    fn path(&self, id: &str, format: AudioFormat) -> PathBuf {
        self.dir.join(format!("{id}.{}", format.extension()))
    }

    /// The path of job `id`'s file on this node, fetched from `store` unless it is here
    /// already. A file the broker no longer has is `NotFound`; a broker out of reach is
    /// `Unavailable`; a disk that cannot take it names the path.
    pub(crate) async fn local_copy(
        &self,
        store: &ObjectStore,
        id: &str,
        format: AudioFormat,
        total_bytes: u64,
    ) -> Result<PathBuf, EngineError> {
        let path = self.path(id, format);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let download = {
            let mut downloads = self
                .downloads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(downloads.entry(id.to_string()).or_default())
        };
        let fetched = {
            let _only_one = download.lock().await;
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                Ok(())
            } else {
                self.download(store, id, &path, total_bytes).await
            }
        };
        self.downloads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
        fetched.map(|()| path)
    }

    /// Streams the object to a temporary file, checks its size and renames it into place.
    async fn download(
        &self,
        store: &ObjectStore,
        id: &str,
        path: &Path,
        total_bytes: u64,
    ) -> Result<(), EngineError> {
        let mut object = store.get(id).await.map_err(|e| match e.kind() {
            GetErrorKind::NotFound => {
                EngineError::NotFound(format!("the audio of generation `{id}` is gone: {e}"))
            }
            _ => super::unavailable("did not give a job's audio", e),
        })?;
        let output = |e: std::io::Error| EngineError::Output {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(output)?;
        // A name of its own: a download that starts while another of the same file still
        // runs (its waiter gave up) never writes into the other's file.
        let unique = NEXT_DOWNLOAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("part-{}-{unique}", std::process::id()));
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(output)?;
            let mut buffer = vec![0; CHUNK];
            let mut written = 0u64;
            loop {
                let n = object
                    .read(&mut buffer)
                    .await
                    .map_err(|e| super::unavailable("stopped sending a job's audio", e))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > total_bytes {
                    break;
                }
                file.write_all(&buffer[..n]).await.map_err(output)?;
            }
            if written != total_bytes {
                return Err(EngineError::Internal(format!(
                    "the broker's audio of generation `{id}` is not {total_bytes} bytes long"
                )));
            }
            file.sync_all().await.map_err(output)?;
            tokio::fs::rename(&tmp, path).await.map_err(output)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    /// Removes the copies (and abandoned partial downloads) older than the retention;
    /// blocking.
    pub(crate) fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > self.retention);
            if old {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), "cannot remove an old copy: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::broker::test_server::NatsServer;
    use crate::jobs::broker::{Broker, BrokerConfig};

    #[tokio::test]
    async fn a_copy_is_fetched_whole_once_and_swept_when_old() {
        let server = NatsServer::start();
        let config = BrokerConfig::new(8, 8, Duration::from_secs(3600));
        let broker = Broker::connect(&server.url, "test", &config).await.unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        broker
            .audio
            .put("job-a", &mut bytes.as_slice())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fetched = FetchedAudio::new(dir.path().join("copies"), Duration::from_secs(3600));
        let total = bytes.len() as u64;

        // Ten readers at once (one download, the others wait for it): every one gets the
        // whole file.
        let fetched = Arc::new(fetched);
        let mut readers = Vec::new();
        for _ in 0..10 {
            let (fetched, store) = (Arc::clone(&fetched), broker.audio.clone());
            readers.push(tokio::spawn(async move {
                fetched
                    .local_copy(&store, "job-a", AudioFormat::Wav, total)
                    .await
            }));
        }
        for reader in readers {
            let path = reader.await.unwrap().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
        let files = std::fs::read_dir(dir.path().join("copies"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "no partial download is left behind");

        // A file the broker does not have is not found; one of another size than its
        // record says is refused and not kept.
        let missing = fetched
            .local_copy(&broker.audio, "job-b", AudioFormat::Wav, 10)
            .await
            .unwrap_err();
        assert!(matches!(missing, EngineError::NotFound(_)), "{missing:?}");
        broker.audio.put("job-c", &mut &b"short"[..]).await.unwrap();
        let wrong = fetched
            .local_copy(&broker.audio, "job-c", AudioFormat::Wav, 10)
            .await
            .unwrap_err();
        assert!(matches!(wrong, EngineError::Internal(_)), "{wrong:?}");
        assert!(!fetched.path("job-c", AudioFormat::Wav).exists());

        // Swept only once older than the retention.
        fetched.sweep();
        assert!(fetched.path("job-a", AudioFormat::Wav).exists());
        let expiring = FetchedAudio::new(dir.path().join("copies"), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(10));
        expiring.sweep();
        assert!(!fetched.path("job-a", AudioFormat::Wav).exists());
    }
}
