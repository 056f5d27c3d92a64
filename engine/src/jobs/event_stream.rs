//! A job's events as a client reads them: in order, each exactly once, to the terminal
//! event; from the node's registry (and a finished job's log on disk), or from the
//! cluster's log on the broker, read again after the last event delivered when the
//! connection comes back. Audio pieces come with their bytes.

use std::collections::VecDeque;

use futures_util::stream::BoxStream;
use tokio::sync::watch;

use super::command::Feed;
use super::event::{EventBody, JobEvent, JobKind};
use super::handle::{Engine, StoredAudio};
use super::store::kept_after_end;
use crate::error::EngineError;

/// Where a stream's events come from.
pub(super) enum Source {
    /// This node's registry (and a finished job's log on its disk).
    Local {
        feed: Feed,
        /// A finished job's remaining events, read from its stored log.
        from_disk: Option<VecDeque<JobEvent>>,
    },
    /// The cluster's log of the job on the broker, read again after the last event
    /// delivered whenever the connection comes back.
    Cluster {
        events: BoxStream<'static, Result<JobEvent, EngineError>>,
        connection: watch::Receiver<bool>,
    },
}

/// A job's events in order, each exactly once, ending after the terminal event.
pub struct EventStream {
    engine: Engine,
    tenant: String,
    id: String,
    kind: JobKind,
    source: Source,
    cursor: u64,
    ended: bool,
    /// Readings of the cluster's log started again since the last event delivered.
    resumes: u32,
}

/// Readings of a cluster job's log started again in a row, none delivering an event,
/// before the stream ends with UNAVAILABLE (the client may re-attach later).
const MAX_RESUMES: u32 = 8;

impl EventStream {
    /// A stream of job `id` of `tenant` from `source`, after event `after`.
    pub(super) fn new(
        engine: Engine,
        tenant: &str,
        id: &str,
        kind: JobKind,
        source: Source,
        after: u64,
    ) -> Self {
        Self {
            engine,
            tenant: tenant.to_string(),
            id: id.to_string(),
            kind,
            source,
            cursor: after,
            ended: false,
            resumes: 0,
        }
    }

    /// Reads the cluster's log again after the last event delivered; an error ends the
    /// stream.
    async fn resume(&mut self, why: String) -> Result<(), EngineError> {
        self.resumes += 1;
        if self.resumes > MAX_RESUMES {
            return Err(EngineError::Unavailable(format!(
                "the broker kept failing this stream ({why}); re-attach after event {}",
                self.cursor
            )));
        }
        let events = self
            .engine
            .resume_cluster_events(&self.tenant, &self.id, self.cursor, why)
            .await?;
        if let Source::Cluster { events: old, .. } = &mut self.source {
            *old = events;
        }
        Ok(())
    }

    /// The job this stream follows.
    pub fn job_id(&self) -> &str {
        &self.id
    }

    /// Whether the job is a generation or a cover.
    pub fn kind(&self) -> JobKind {
        self.kind
    }

    /// The next event; `None` after the terminal event. Audio pieces come with their
    /// bytes.
    pub async fn next(&mut self) -> Option<Result<JobEvent, EngineError>> {
        loop {
            if self.ended {
                return None;
            }
            let (feed, from_disk) = match &mut self.source {
                Source::Cluster { events, connection } => {
                    let next = tokio::select! {
                        next = futures_util::StreamExt::next(events) => next,
                        // A lost connection can lose what was on the way (the broker
                        // restarted, or cut off a slow reader): once it is back, the
                        // stream reads again after the last event it delivered.
                        Ok(()) = connection.changed() => {
                            if !*connection.borrow_and_update() {
                                continue;
                            }
                            Some(Err(EngineError::Unavailable("the connection was lost".into())))
                        }
                    };
                    let event = match next {
                        Some(Ok(event)) => event,
                        // The broker went away (restarted, say): the log is still there
                        // once it is back, so the stream goes on after the last event
                        // it delivered.
                        Some(Err(EngineError::Unavailable(why))) => {
                            if let Err(e) = self.resume(why).await {
                                self.ended = true;
                                return Some(Err(e));
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            self.ended = true;
                            return Some(Err(e));
                        }
                        None => {
                            self.ended = true;
                            return None;
                        }
                    };
                    self.resumes = 0;
                    if event.sequence <= self.cursor {
                        continue;
                    }
                    self.cursor = event.sequence;
                    self.ended = event.body.is_terminal();
                    return Some(fill(&self.engine, &self.id, &event).await);
                }
                Source::Local { feed, from_disk } => (feed, from_disk),
            };
            if feed.from_disk {
                return self.next_from_disk().await;
            }
            let _ = from_disk;
            match feed.events.recv().await {
                Some(event) if event.sequence <= self.cursor => continue,
                Some(event) => {
                    self.cursor = event.sequence;
                    self.ended = event.body.is_terminal();
                    return Some(fill(&self.engine, &self.id, &event).await);
                }
                None if feed.to_the_end => {
                    self.ended = true;
                    return None;
                }
                // Fell behind (or the log was longer than one channel): catch up from
                // the last event delivered.
                None => match self
                    .engine
                    .subscribe(&self.tenant, &self.id, self.cursor)
                    .await
                {
                    Ok(next) => {
                        self.source = Source::Local {
                            feed: next,
                            from_disk: None,
                        }
                    }
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                },
            }
        }
    }

    /// The next event of a finished job whose log is on disk.
    async fn next_from_disk(&mut self) -> Option<Result<JobEvent, EngineError>> {
        let Source::Local { from_disk, .. } = &mut self.source else {
            return None;
        };
        if from_disk.is_none() {
            let store = self.engine.store.clone();
            let (id, after) = (self.id.clone(), self.cursor);
            let read = tokio::task::spawn_blocking(move || store.read_events(&id)).await;
            match read {
                Ok(Ok(events)) => {
                    let rest = events
                        .into_iter()
                        .filter(|e| e.sequence > after && kept_after_end(e));
                    if let Source::Local { from_disk, .. } = &mut self.source {
                        *from_disk = Some(rest.collect());
                    }
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Some(Err(EngineError::Output {
                        path: format!("the event log of generation {}", self.id),
                        message: e.to_string(),
                    }));
                }
                Err(e) => {
                    self.ended = true;
                    return Some(Err(EngineError::Internal(format!(
                        "reading the event log stopped: {e}"
                    ))));
                }
            }
        }
        let Source::Local { from_disk, .. } = &mut self.source else {
            return None;
        };
        let event = from_disk.as_mut()?.pop_front();
        let Some(event) = event else {
            self.ended = true;
            return None;
        };
        self.cursor = event.sequence;
        self.ended = event.body.is_terminal();
        Some(fill(&self.engine, &self.id, &event).await)
    }
}

/// An event as a client gets it: an audio piece with its bytes.
async fn fill(engine: &Engine, id: &str, event: &JobEvent) -> Result<JobEvent, EngineError> {
    let mut event = event.clone();
    if let EventBody::AudioPiece(piece) = &mut event.body {
        let audio = StoredAudio {
            format: piece.format,
            total_bytes: piece.total_bytes,
            id: id.to_string(),
        };
        piece.data = engine
            .read_audio(&audio, piece.offset, piece.len as usize)
            .await?;
    }
    Ok(event)
}
