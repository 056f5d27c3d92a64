//! The result store on disk: per job a directory with its record (`record.json`), its event
//! log (`events.jsonl`, appended as events happen) and, once finished, its audio file.
//! Writes happen on one store thread so the async registry never waits on the disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use super::event::{EventBody, JobEvent};
use super::job::JobInfo;
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
    /// The job ended: flush and close its log.
    Close(String),
    /// The job expired: remove everything of it.
    Delete(String),
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
    /// corrupt record must not stop the server from starting).
    pub fn load_all(&self) -> io::Result<Vec<(JobInfo, Vec<JobEvent>)>> {
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&self.jobs_dir)? {
            let dir = entry?.path();
            match load_job(&dir) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::warn!(dir = %dir.display(), "skipping a stored job: {e}"),
            }
        }
        Ok(jobs)
    }

    /// Applies one write now (used at startup, before the store thread runs).
    pub fn write_now(&self, op: StoreOp) {
        let mut logs = HashMap::new();
        self.apply(op, &mut logs);
        flush_all(&mut logs);
    }

    /// Starts the store thread; writes sent to the returned channel happen in order.
    pub fn spawn_writer(&self) -> io::Result<mpsc::Sender<StoreOp>> {
        let (tx, rx) = mpsc::channel::<StoreOp>();
        let store = self.clone();
        std::thread::Builder::new()
            .name("son1k-store".into())
            .spawn(move || {
                let mut logs = HashMap::new();
                while let Ok(op) = rx.recv() {
                    store.apply(op, &mut logs);
                    // Batch whatever else is waiting, then flush once.
                    while let Ok(op) = rx.try_recv() {
                        store.apply(op, &mut logs);
                    }
                    flush_all(&mut logs);
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

fn flush_all(logs: &mut HashMap<String, BufWriter<File>>) {
    for log in logs.values_mut() {
        if let Err(e) = log.flush() {
            tracing::warn!("cannot flush a job's event log: {e}");
        }
    }
}

/// Reads one job directory: the record, and the log up to its last complete line (a line
/// cut short by a crash is dropped).
fn load_job(dir: &Path) -> io::Result<(JobInfo, Vec<JobEvent>)> {
    let record = fs::read(dir.join("record.json"))?;
    let info: JobInfo = serde_json::from_slice(&record).map_err(io::Error::other)?;
    let mut log = Vec::new();
    match File::open(dir.join("events.jsonl")) {
        Ok(file) => {
            for line in BufReader::new(file).lines() {
                match serde_json::from_str::<JobEvent>(&line?) {
                    Ok(event) => log.push(event),
                    Err(_) => break,
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok((info, log))
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
