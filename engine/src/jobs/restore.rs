//! Startup: the stored jobs come back as they ended. A job whose log ends without a
//! terminal event was cut off by the process stopping: it is marked failed (interrupted),
//! numbered past anything a client may have seen.

use super::event::{EventBody, FailureCode, JobEvent, JobState};
use super::job::{now_unix_ms, state_after, Job, JobInfo};
use super::store::Store;

/// How far the interrupted event's number skips past the last logged one: events a client
/// saw but the crash kept from the disk must not share a number with it.
pub(crate) const RESTART_GAP: u64 = 1000;

/// What a restart tells a client about a job it cut off.
const INTERRUPTED: &str = "the server stopped while this generation ran; submit it again";

/// Loads every stored job, repairing what a crash left half-written. Repairs are best
/// effort: a job whose repair cannot be written (a full or read-only disk) keeps its
/// repaired log in memory, and is served from there.
pub(crate) fn restore(store: &Store) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (mut info, mut log) in store.load_all() {
        let last = log
            .iter()
            .map(|e| e.sequence)
            .max()
            .unwrap_or(0)
            .max(info.last_sequence);
        let ending = log.iter().rev().find(|e| e.body.is_terminal()).cloned();
        let repaired = match ending {
            // The log has the end; the record may lag behind it.
            Some(end) => {
                let stale = !info.state.is_terminal();
                if stale {
                    settle(&mut info, &end);
                }
                stale
            }
            // The record has the end but the log lost it (a torn last line).
            None if info.state.is_terminal() => {
                let body = ending_from_record(&info);
                push_end(&mut info, &mut log, last.saturating_add(1), body);
                true
            }
            None => {
                let body = EventBody::Failed {
                    code: FailureCode::Interrupted,
                    message: INTERRUPTED.into(),
                };
                push_end(&mut info, &mut log, last.saturating_add(RESTART_GAP), body);
                tracing::info!(job = %info.id, tenant = %info.tenant, "interrupted by a restart");
                true
            }
        };
        info.last_sequence = info.last_sequence.max(log.last().map_or(0, |e| e.sequence));
        if repaired {
            let written = store
                .rewrite_events(&info.id, &log)
                .and_then(|()| store.write_record_now(&info));
            if let Err(e) = written {
                tracing::warn!(job = %info.id, "cannot store the repaired job; serving it from memory: {e}");
                jobs.push(Job::restored_in_memory(info, log));
                continue;
            }
        }
        jobs.push(Job::restored(info));
    }
    jobs
}

/// Appends a terminal event and settles the record on it.
fn push_end(info: &mut JobInfo, log: &mut Vec<JobEvent>, sequence: u64, body: EventBody) {
    let event = JobEvent {
        sequence,
        time_unix_ms: now_unix_ms(),
        body,
    };
    settle(info, &event);
    log.push(event);
}

/// Makes the record say what the terminal event says.
fn settle(info: &mut JobInfo, end: &JobEvent) {
    info.state = state_after(&end.body).unwrap_or(JobState::Failed);
    info.finished_unix_ms = Some(end.time_unix_ms);
    info.last_sequence = info.last_sequence.max(end.sequence);
    match &end.body {
        EventBody::Completed(result) => info.result = Some(result.clone()),
        EventBody::Failed { code, message } => info.failure = Some((*code, message.clone())),
        _ => {}
    }
}

/// The terminal event a finished record implies.
fn ending_from_record(info: &JobInfo) -> EventBody {
    match (&info.state, &info.result, &info.failure) {
        (JobState::Completed, Some(result), _) => EventBody::Completed(result.clone()),
        (JobState::Cancelled, _, _) => EventBody::Cancelled {
            reason: "cancelled".into(),
        },
        (_, _, Some((code, message))) => EventBody::Failed {
            code: *code,
            message: message.clone(),
        },
        _ => EventBody::Failed {
            code: FailureCode::Interrupted,
            message: INTERRUPTED.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::event::{JobKind, ProgressReport};
    use crate::jobs::job::queued_progress;

    fn info(id: &str, state: JobState) -> JobInfo {
        JobInfo {
            id: id.into(),
            tenant: "t".into(),
            kind: JobKind::Generation,
            model: "m".into(),
            prompt: "p".into(),
            request_id: None,
            fingerprint: 0,
            state,
            progress: queued_progress(0),
            result: None,
            failure: None,
            created_unix_ms: 1,
            finished_unix_ms: None,
            last_sequence: 1,
        }
    }

    fn event(sequence: u64, body: EventBody) -> JobEvent {
        JobEvent {
            sequence,
            time_unix_ms: 2,
            body,
        }
    }

    fn progress() -> EventBody {
        EventBody::Progress(ProgressReport {
            percent: 50.0,
            ..queued_progress(0)
        })
    }

    /// Writes a job's record and log lines (the last one may be torn).
    fn store_job(
        store: &Store,
        dir: &std::path::Path,
        info: &JobInfo,
        log: &[JobEvent],
        tail: &str,
    ) {
        store.write_record_now(info).unwrap();
        let mut text = String::new();
        for e in log {
            text.push_str(&serde_json::to_string(e).unwrap());
            text.push('\n');
        }
        text.push_str(tail);
        std::fs::write(dir.join("jobs").join(&info.id).join("events.jsonl"), text).unwrap();
    }

    #[test]
    fn a_cut_off_job_fails_interrupted_past_its_torn_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let id = "0123456789abcdef0123456789abcdef";
        let log = [event(1, progress()), event(2, progress())];
        store_job(
            &store,
            dir.path(),
            &info(id, JobState::Running),
            &log,
            "{\"sequence\":3,\"ti",
        );

        let jobs = restore(&store);
        assert_eq!(jobs.len(), 1);
        let restored = &jobs[0].info;
        assert_eq!(restored.state, JobState::Failed);
        assert_eq!(
            restored.failure.as_ref().map(|f| f.0),
            Some(FailureCode::Interrupted)
        );
        assert_eq!(restored.last_sequence, 2 + RESTART_GAP);
        // The torn line is gone; the log ends with the interrupted event, and a second
        // restart changes nothing.
        let events = store.read_events(id).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2].sequence, 2 + RESTART_GAP);
        let again = restore(&store);
        assert_eq!(again[0].info, *restored);
        assert_eq!(store.read_events(id).unwrap(), events);
    }

    #[test]
    fn sequence_numbers_near_the_top_saturate_instead_of_overflowing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let id = "00000000000000000000000000000001";
        let top = u64::MAX - 3;
        store_job(
            &store,
            dir.path(),
            &info(id, JobState::Running),
            &[event(top, progress())],
            "",
        );
        let jobs = restore(&store);
        assert_eq!(jobs[0].info.state, JobState::Failed);
        assert_eq!(jobs[0].info.last_sequence, u64::MAX);
    }

    #[test]
    fn a_record_behind_its_log_takes_the_logged_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let id = "fedcba9876543210fedcba9876543210";
        let cancelled = EventBody::Cancelled {
            reason: "by the client".into(),
        };
        let log = [event(1, progress()), event(2, cancelled)];
        store_job(&store, dir.path(), &info(id, JobState::Running), &log, "");
        let jobs = restore(&store);
        assert_eq!(jobs[0].info.state, JobState::Cancelled);
        assert_eq!(jobs[0].info.last_sequence, 2);
    }

    #[test]
    fn a_directory_whose_record_names_another_job_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let good = "00000000000000000000000000000001";
        store_job(
            &store,
            dir.path(),
            &info(good, JobState::Completed),
            &[],
            "",
        );
        // A record claiming to be `..` in a directory of another name.
        let evil = dir
            .path()
            .join("jobs")
            .join("11111111111111111111111111111111");
        std::fs::create_dir_all(&evil).unwrap();
        let mut record = info(good, JobState::Completed);
        record.id = "..".into();
        std::fs::write(
            evil.join("record.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let jobs = restore(&store);
        let ids: Vec<&str> = jobs.iter().map(|j| j.info.id.as_str()).collect();
        assert_eq!(ids, [good]);
    }
}
