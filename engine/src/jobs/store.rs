//! The result store on disk: per job a directory with its record (`record.json`), its event
//! log (`events.jsonl`, appended as events happen) and, once finished, its audio file.
//! Writes happen on one store thread so the async registry never waits on the disk. A write
//! that fails is reported, never dropped in silence: the job's log then stays in memory, and
//! the store's health (writable, room above the free-space floor) is probed until it
//! recovers. Directories are created 0700 and files 0600; temporary files are created anew
//! (never through an existing name or symlink) and strays are removed at start.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::event::{EventBody, JobEvent};
use super::job::{is_job_id, JobInfo};
use crate::audio::AudioFormat;

/// How often the store thread checks its health (free space; writability once a write
/// failed).
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Longest event line read back; a longer one is corrupt, and the log ends before it.
const MAX_EVENT_LINE: u64 = 16 << 20;
/// What a temporary file's name ends with.
const TMP_SUFFIX: &str = ".tmp";

/// Where the jobs of one data directory live.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    jobs_dir: PathBuf,
}

/// Whether the store can take new work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// The last write failed (disk full, read-only, gone) and no probe has succeeded since.
    pub unwritable: bool,
    /// The data directory's free space is under the configured floor.
    pub low_on_space: bool,
}

/// What the store thread tells the registry.
pub(crate) enum StoreReport {
    /// A finished job's log is wholly on disk: the memory copy may go.
    Persisted(String),
    /// A write of this job failed: its log must stay in memory, and an unfinished job
    /// cannot be kept.
    WriteFailed(String),
    /// The store's health changed.
    Health(StoreHealth),
}

/// A write for the store thread.
pub(crate) enum StoreOp {
    /// Replace the job's record.
    Record(Box<JobInfo>),
    /// Append an event to the job's log.
    Event(String, Arc<JobEvent>),
    /// The job ended: flush and close its log, then tell the registry it may forget the
    /// log (replays of the job then read the file).
    Close(String),
    /// The job expired: remove everything of it.
    Delete(String),
    /// Answer once every earlier write is on disk.
    Barrier(oneshot::Sender<()>),
    /// Probe whether the store can be written now (a worker failed to store audio).
    CheckHealth,
}

impl Store {
    /// The store under `data_dir`, created if it can be: a directory that cannot be
    /// created or written is reported by the store's health once writes are tried, and
    /// what can be read is still served.
    pub(super) fn open(data_dir: &Path) -> Self {
        let jobs_dir = data_dir.join("jobs");
        if let Err(e) = create_private_dir(&jobs_dir) {
            tracing::warn!(dir = %jobs_dir.display(), "cannot create the job store: {e}");
        }
        Self { jobs_dir }
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    /// Where a job's finished audio is.
    pub(super) fn audio_path(&self, id: &str, format: AudioFormat) -> PathBuf {
        self.job_dir(id)
            .join(format!("audio.{}", format.extension()))
    }

    /// Writes a job's audio file (atomically: a reader never sees half a file).
    pub(super) fn write_audio(
        &self,
        id: &str,
        format: AudioFormat,
        bytes: &[u8],
    ) -> io::Result<()> {
        create_private_dir(&self.job_dir(id))?;
        write_atomically(&self.audio_path(id, format), bytes)
    }

    /// Reads `len` bytes at `offset` of a job's audio file.
    pub(super) fn read_audio(
        &self,
        id: &str,
        format: AudioFormat,
        offset: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        read_range(&self.audio_path(id, format), offset, len)
    }

    /// Where a cluster's node keeps the audio of other nodes' jobs it fetched (see
    /// [`FetchedAudio`](super::broker::fetched::FetchedAudio)).
    pub(super) fn fetched_audio_dir(&self) -> PathBuf {
        self.jobs_dir.with_file_name("cluster-audio")
    }

    /// Every stored job with its log. Unreadable entries are skipped with a warning (a
    /// corrupt record must not stop the server from starting); so is a directory whose
    /// record names another job, since ids become file paths. A store that cannot be read
    /// at all has no jobs. Temporary files a crash left are removed.
    pub(super) fn load_all(&self) -> Vec<(JobInfo, Vec<JobEvent>)> {
        let mut jobs = Vec::new();
        let entries = match fs::read_dir(&self.jobs_dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.jobs_dir.display(), "cannot read the job store: {e}");
                return jobs;
            }
        };
        for entry in entries {
            let dir = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    tracing::warn!(dir = %self.jobs_dir.display(), "skipping an entry: {e}");
                    continue;
                }
            };
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            remove_stray_temporaries(&dir);
            let loaded = fs::read(dir.join("record.json"))
                .and_then(|bytes| {
                    serde_json::from_slice::<JobInfo>(&bytes).map_err(io::Error::other)
                })
                .and_then(|info| {
                    if info.id == name && is_job_id(name) {
                        Ok(info)
                    } else {
                        Err(io::Error::other(format!(
                            "the record names job `{}`",
                            info.id
                        )))
                    }
                })
                .and_then(|info| Ok((self.read_events(&info.id)?, info)));
            match loaded {
                Ok((events, info)) => jobs.push((info, events)),
                Err(e) => tracing::warn!(dir = %dir.display(), "skipping a stored job: {e}"),
            }
        }
        jobs
    }

    /// A job's logged events, read line by line up to the last complete one (a line cut
    /// short by a crash, an oversized line, and anything after either, are dropped).
    pub(super) fn read_events(&self, id: &str) -> io::Result<Vec<JobEvent>> {
        let file = match File::open(self.job_dir(id).join("events.jsonl")) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut reader = BufReader::new(file);
        let mut events = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_EVENT_LINE)
                .read_until(b'\n', &mut line)?;
            if read == 0 || line.last() != Some(&b'\n') {
                // The end, a torn last line, or one longer than any event.
                break;
            }
            if line.len() == 1 {
                continue;
            }
            match serde_json::from_slice::<JobEvent>(&line) {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        Ok(events)
    }

    /// Replaces a job's log (at startup, to drop a torn tail before appending).
    pub(super) fn rewrite_events(&self, id: &str, events: &[JobEvent]) -> io::Result<()> {
        let mut text = Vec::new();
        for event in events {
            serde_json::to_writer(&mut text, event).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        write_atomically(&self.job_dir(id).join("events.jsonl"), &text)
    }

    /// Replaces a job's record now (at startup).
    pub(super) fn write_record_now(&self, info: &JobInfo) -> io::Result<()> {
        self.write_record(info)
    }

    /// Starts the store thread; writes sent to the returned channel happen in order.
    /// `report` hears (on the store thread) when a finished job's log is safely on disk,
    /// when a job's write failed, and when the store's health changes; `min_free_bytes` is
    /// the free-space floor under which the store reports itself low on space. Returns
    /// the writer's channel and the store's health as it is now: whether the store can be
    /// written and has room is known before the first submission, not at the first job's
    /// failure or after the thread's first report.
    pub(super) fn spawn_writer(
        &self,
        report: impl Fn(StoreReport) + Send + 'static,
        min_free_bytes: u64,
    ) -> io::Result<(mpsc::Sender<StoreOp>, StoreHealth)> {
        let (tx, rx) = mpsc::channel::<StoreOp>();
        let mut writer = Writer {
            store: self.clone(),
            logs: HashMap::new(),
            failed: HashSet::new(),
            health: StoreHealth::default(),
            min_free_bytes,
            report: Box::new(report),
        };
        writer.health = writer.measure_health(true);
        let health = writer.health;
        if health != StoreHealth::default() {
            tracing::info!(?health, "the store's health at start");
        }
        std::thread::Builder::new()
            .name("son1k-store".into())
            .spawn(move || {
                let mut checked = Instant::now();
                loop {
                    match rx.recv_timeout(HEALTH_EVERY) {
                        Ok(op) => {
                            let mut batch = vec![op];
                            // Batch whatever else is waiting, then flush once.
                            batch.extend(rx.try_iter());
                            writer.write(batch);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if checked.elapsed() >= HEALTH_EVERY {
                        writer.check_health(false);
                        checked = Instant::now();
                    }
                }
            })?;
        Ok((tx, health))
    }

    /// Whether a small file can be written and removed in the store now.
    fn probe(&self) -> io::Result<()> {
        create_private_dir(&self.jobs_dir)?;
        let probe = self.jobs_dir.join("probe");
        write_atomically(&probe, b"son1k")?;
        fs::remove_file(probe)
    }

    /// Free bytes of the store's file system, where the platform says.
    fn free_bytes(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let stat = rustix::fs::statvfs(&self.jobs_dir).ok()?;
            Some(stat.f_bavail.saturating_mul(stat.f_frsize))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    fn write_record(&self, info: &JobInfo) -> io::Result<()> {
        create_private_dir(&self.job_dir(&info.id))?;
        let json = serde_json::to_vec_pretty(info).map_err(io::Error::other)?;
        write_atomically(&self.job_dir(&info.id).join("record.json"), &json)
    }

    fn append_event(
        &self,
        id: &str,
        event: &JobEvent,
        logs: &mut HashMap<String, BufWriter<File>>,
    ) -> io::Result<()> {
        let log = match logs.entry(id.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                create_private_dir(&self.job_dir(id))?;
                let file = private_file()
                    .create(true)
                    .append(true)
                    .open(self.job_dir(id).join("events.jsonl"))?;
                e.insert(BufWriter::new(file))
            }
        };
        serde_json::to_writer(&mut *log, event).map_err(io::Error::other)?;
        log.write_all(b"\n")
    }
}

/// The store thread's state: open logs, jobs whose writes failed, and the health last
/// reported.
struct Writer {
    store: Store,
    logs: HashMap<String, BufWriter<File>>,
    /// Jobs with a failed write since they were last closed: their logs are not whole on
    /// disk.
    failed: HashSet<String>,
    health: StoreHealth,
    min_free_bytes: u64,
    report: Box<dyn Fn(StoreReport) + Send>,
}

impl Writer {
    /// Applies a batch of operations, flushes every open log, then answers barriers and
    /// reports closed jobs.
    fn write(&mut self, batch: Vec<StoreOp>) {
        let mut barriers = Vec::new();
        let mut closed = Vec::new();
        let mut probe = false;
        for op in batch {
            match op {
                StoreOp::Record(info) => {
                    let result = self.store.write_record(&info);
                    self.check(&info.id, result);
                }
                StoreOp::Event(id, event) => {
                    let result = self.store.append_event(&id, &event, &mut self.logs);
                    self.check(&id, result);
                }
                StoreOp::Close(id) => {
                    let result = self.logs.remove(&id).map_or(Ok(()), |mut log| log.flush());
                    self.check(&id, result);
                    closed.push(id);
                }
                StoreOp::Delete(id) => {
                    self.logs.remove(&id);
                    self.failed.remove(&id);
                    if let Err(e) = fs::remove_dir_all(self.store.job_dir(&id)) {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(job = %id, "cannot remove an expired job: {e}");
                        }
                    }
                }
                StoreOp::Barrier(reply) => barriers.push(reply),
                StoreOp::CheckHealth => probe = true,
            }
        }
        if probe {
            self.check_health(true);
        }
        let flushed: Vec<(String, io::Result<()>)> = self
            .logs
            .iter_mut()
            .map(|(id, log)| (id.clone(), log.flush()))
            .collect();
        for (id, result) in flushed {
            self.check(&id, result);
        }
        for reply in barriers {
            let _ = reply.send(());
        }
        for id in closed {
            // A log with a failed write stays in the registry's memory.
            if !self.failed.remove(&id) {
                (self.report)(StoreReport::Persisted(id));
            }
        }
    }

    /// Reports a job's failed write once, and the store as unwritable.
    fn check(&mut self, id: &str, result: io::Result<()>) {
        let Err(e) = result else {
            return;
        };
        tracing::warn!(job = %id, dir = %self.store.jobs_dir.display(), "cannot write a job to the store: {e}");
        // A failed append may have left part of a line: start a fresh writer next time.
        self.logs.remove(id);
        if self.failed.insert(id.to_string()) {
            (self.report)(StoreReport::WriteFailed(id.to_string()));
        }
        if !self.health.unwritable {
            self.health.unwritable = true;
            (self.report)(StoreReport::Health(self.health));
        }
    }

    /// Probes the store (always, or only while it is unwritable) and measures free space;
    /// reports a change.
    fn check_health(&mut self, probe: bool) {
        let health = self.measure_health(probe);
        if health != self.health {
            tracing::info!(?health, "the store's health changed");
            self.health = health;
            (self.report)(StoreReport::Health(health));
        }
    }

    /// The store's health now: probed (always, or only while it is unwritable), and its
    /// free space against the floor.
    fn measure_health(&self, probe: bool) -> StoreHealth {
        let mut health = self.health;
        if probe || health.unwritable {
            health.unwritable = match self.store.probe() {
                Ok(()) => false,
                Err(e) => {
                    if !health.unwritable {
                        tracing::warn!(dir = %self.store.jobs_dir.display(), "the job store cannot be written: {e}");
                    }
                    true
                }
            };
        }
        health.low_on_space = self
            .store
            .free_bytes()
            .is_some_and(|free| free < self.min_free_bytes);
        health
    }
}

/// Creates a directory (and its parents) readable by this user only.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Options for a file readable by this user only.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Removes the temporary files a crash left in a job's directory.
fn remove_stray_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), "cannot remove a stray temporary file: {e}");
            }
        }
    }
}

/// Writes `path` through a temporary file (created anew: an existing file or symlink of
/// that name is removed, never followed), synced, then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    let tmp = path.with_file_name(name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let written = private_file()
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Reads `len` bytes at `offset` of the file at `path`.
pub(super) fn read_range(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = vec![0; len];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// Whether an event is kept in a finished job's log (previews are not).
pub(crate) fn kept_after_end(event: &JobEvent) -> bool {
    !matches!(event.body, EventBody::AudioChunk(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_a_planted_symlink_is_replaced_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.jobs_dir), 0o700);
        let id = "0123456789abcdef0123456789abcdef";
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        create_private_dir(&store.job_dir(id)).unwrap();
        std::os::unix::fs::symlink(&victim, store.job_dir(id).join("audio.wav.tmp")).unwrap();
        store.write_audio(id, AudioFormat::Wav, b"RIFF").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        let audio = store.audio_path(id, AudioFormat::Wav);
        assert_eq!(fs::read(&audio).unwrap(), b"RIFF");
        assert_eq!(mode(&audio), 0o600);
        assert_eq!(mode(&store.job_dir(id)), 0o700);
    }

    #[test]
    fn a_log_is_read_to_its_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let id = "0123456789abcdef0123456789abcdef";
        create_private_dir(&store.job_dir(id)).unwrap();
        let event = |sequence| JobEvent {
            sequence,
            time_unix_ms: 0,
            body: EventBody::Cancelled { reason: "x".into() },
        };
        let mut text = Vec::new();
        for sequence in [1, 2] {
            serde_json::to_writer(&mut text, &event(sequence)).unwrap();
            text.extend(b"\n\n");
        }
        text.extend(b"{\"sequence\": 3, \"torn");
        fs::write(store.job_dir(id).join("events.jsonl"), &text).unwrap();
        let events = store.read_events(id).unwrap();
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
