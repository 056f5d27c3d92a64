//! The result store on disk: per job a directory with its record (`record.json`), its event
//! log (`events.jsonl`, appended as events happen) and, once finished, its audio file.
//! Writes happen on one store thread so the async registry never waits on the disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::command::Command;
use super::event::{EventBody, JobEvent};
use super::job::{is_job_id, JobInfo};
use crate::audio::AudioFormat;

/// Where the jobs of one data directory live.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    jobs_dir: PathBuf,
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
}

impl Store {
    /// The store under `data_dir`, creating it.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let jobs_dir = data_dir.join("jobs");
        fs::create_dir_all(&jobs_dir)?;
        Ok(Self { jobs_dir })
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    /// Where a job's finished audio is.
    pub fn audio_path(&self, id: &str, format: AudioFormat) -> PathBuf {
        self.job_dir(id)
            .join(format!("audio.{}", format.extension()))
    }

    /// Writes a job's audio file (atomically: a reader never sees half a file).
    pub fn write_audio(&self, id: &str, format: AudioFormat, bytes: &[u8]) -> io::Result<()> {
        fs::create_dir_all(self.job_dir(id))?;
        write_atomically(&self.audio_path(id, format), bytes)
    }

    /// Reads `len` bytes at `offset` of a job's audio file.
    pub fn read_audio(
        &self,
        id: &str,
        format: AudioFormat,
        offset: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.audio_path(id, format))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut data = vec![0; len];
        file.read_exact(&mut data)?;
        Ok(data)
    }

    /// Every stored job with its log. Unreadable entries are skipped with a warning (a
    /// corrupt record must not stop the server from starting); so is a directory whose
    /// record names another job, since ids become file paths.
    pub fn load_all(&self) -> io::Result<Vec<(JobInfo, Vec<JobEvent>)>> {
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&self.jobs_dir)? {
            let dir = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    tracing::warn!(dir = %self.jobs_dir.display(), "skipping an entry: {e}");
                    continue;
                }
            };
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
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
        Ok(jobs)
    }

    /// A job's logged events, up to the last complete line (a line cut short by a crash,
    /// and anything after it, is dropped).
    pub fn read_events(&self, id: &str) -> io::Result<Vec<JobEvent>> {
        let bytes = match fs::read(self.job_dir(id).join("events.jsonl")) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut events = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<JobEvent>(line) {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        Ok(events)
    }

    /// Replaces a job's log (at startup, to drop a torn tail before appending).
    pub fn rewrite_events(&self, id: &str, events: &[JobEvent]) -> io::Result<()> {
        let mut text = Vec::new();
        for event in events {
            serde_json::to_writer(&mut text, event).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        write_atomically(&self.job_dir(id).join("events.jsonl"), &text)
    }

    /// Replaces a job's record now (at startup).
    pub fn write_record_now(&self, info: &JobInfo) -> io::Result<()> {
        self.write_record(info)
    }

    /// Starts the store thread; writes sent to the returned channel happen in order.
    /// `registry` hears when a finished job's log is safely on disk.
    pub fn spawn_writer(
        &self,
        registry: tokio_mpsc::Sender<Command>,
    ) -> io::Result<mpsc::Sender<StoreOp>> {
        let (tx, rx) = mpsc::channel::<StoreOp>();
        let store = self.clone();
        std::thread::Builder::new()
            .name("son1k-store".into())
            .spawn(move || {
                let mut logs = HashMap::new();
                let mut waiting = Vec::new();
                while let Ok(op) = rx.recv() {
                    let mut batch = vec![op];
                    // Batch whatever else is waiting, then flush once.
                    batch.extend(rx.try_iter());
                    for op in batch {
                        match op {
                            StoreOp::Barrier(reply) => waiting.push(Reply::Barrier(reply)),
                            StoreOp::Close(id) => {
                                store.apply(StoreOp::Close(id.clone()), &mut logs);
                                waiting.push(Reply::Persisted(id));
                            }
                            op => store.apply(op, &mut logs),
                        }
                    }
                    flush_all(&mut logs);
                    for reply in waiting.drain(..) {
                        match reply {
                            Reply::Barrier(reply) => {
                                let _ = reply.send(());
                            }
                            Reply::Persisted(id) => {
                                // The registry may be gone at shutdown: nothing to tell.
                                let _ = registry.blocking_send(Command::Persisted { id });
                            }
                        }
                    }
                }
            })?;
        Ok(tx)
    }

    fn apply(&self, op: StoreOp, logs: &mut HashMap<String, BufWriter<File>>) {
        let result = match op {
            StoreOp::Record(info) => self.write_record(&info),
            StoreOp::Event(id, event) => self.append_event(&id, &event, logs),
            StoreOp::Close(id) => logs.remove(&id).map_or(Ok(()), |mut log| log.flush()),
            StoreOp::Delete(id) => {
                logs.remove(&id);
                fs::remove_dir_all(self.job_dir(&id))
            }
            StoreOp::Barrier(reply) => {
                let _ = reply.send(());
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(dir = %self.jobs_dir.display(), "cannot write a job to the store: {e}");
        }
    }

    fn write_record(&self, info: &JobInfo) -> io::Result<()> {
        fs::create_dir_all(self.job_dir(&info.id))?;
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
                fs::create_dir_all(self.job_dir(id))?;
                let file = OpenOptions::new()
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

/// An answer the store thread gives once a batch is flushed.
enum Reply {
    Barrier(oneshot::Sender<()>),
    Persisted(String),
}

fn flush_all(logs: &mut HashMap<String, BufWriter<File>>) {
    for log in logs.values_mut() {
        if let Err(e) = log.flush() {
            tracing::warn!("cannot flush a job's event log: {e}");
        }
    }
}

/// Writes `path` through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Whether an event is kept in a finished job's log (previews are not).
pub(crate) fn kept_after_end(event: &JobEvent) -> bool {
    !matches!(event.body, EventBody::AudioChunk(_))
}
