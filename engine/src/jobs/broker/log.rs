//! Each job's event log on the broker: one subject per job in one stream. A writer publishes
//! with the subject's expected last stream sequence, which the server checks atomically: a
//! writer that is not the job's owner any more (its lease passed to another node while it
//! was paused) is refused, and stops. Readers replay the stored events from any node in
//! order, each once, up to the terminal one.
//!
//! A message is the event as JSON, and for a preview its PCM after a line feed (the JSON
//! has none), so audio is not spelled out as numbers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::names::events_subject;
use super::unavailable;
use crate::error::EngineError;
use crate::jobs::event::{EventBody, JobEvent};

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this stream sequence: the next append expects it.
    Stored(u64),
    /// Refused: another writer appended since the sequence this one expected. The writer
    /// has lost the job and must stop writing to it.
    Fenced,
}

/// The job logs.
#[derive(Clone)]
pub struct JobLog {
    context: jetstream::Context,
    stream: stream::Stream,
}

/// How long a replay waits for the next event of a job that has not ended before it asks
/// again (the ordered consumer delivers live events as they come; this bounds a stall).
const REPLAY_IDLE: Duration = Duration::from_secs(30);

/// Events a replay asks for at once.
const REPLAY_BATCH: i64 = 16;

impl JobLog {
    pub(super) fn new(context: jetstream::Context, stream: stream::Stream) -> Self {
        Self { context, stream }
    }

    /// Appends `event` to `job`'s log if the log's last stored message is still at stream
    /// sequence `expected` (0: the log is empty). `writer` names this writer's run of the
    /// job (a node and its attempt) in the message's id: an append it repeats because the
    /// first one's answer was lost (the broker restarted, say) finds its own message last
    /// and is answered as stored there, not refused as fenced.
    pub async fn append(
        &self,
        job: &str,
        expected: u64,
        event: &JobEvent,
        writer: &str,
    ) -> Result<Appended, EngineError> {
        let message_id = format!("{job}.{}.{writer}", event.sequence);
        let publish = jetstream::message::PublishMessage::build()
            .payload(encode(event)?)
            .message_id(&message_id)
            .expected_last_subject_sequence(expected);
        let sent = self
            .context
            .send_publish(events_subject(job), publish)
            .await
            .map_err(|e| unavailable("refused an event", e))?;
        match sent.await {
            Ok(ack) => Ok(Appended::Stored(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.stored_as(job, &message_id).await
            }
            Err(e) => Err(unavailable("did not store an event", e)),
        }
    }

    /// After a refused append: stored, if the log's last message is the one with
    /// `message_id` (an earlier try of this very append); fenced otherwise.
    async fn stored_as(&self, job: &str, message_id: &str) -> Result<Appended, EngineError> {
        match self
            .stream
            .direct_get_last_for_subject(events_subject(job))
            .await
        {
            Ok(last) => {
                let id = last.headers.get(async_nats::header::NATS_MESSAGE_ID);
                Ok(if id.is_some_and(|id| id.as_str() == message_id) {
                    Appended::Stored(last.sequence)
                } else {
                    Appended::Fenced
                })
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(Appended::Fenced),
            Err(e) => Err(unavailable("cannot read a job's log", e)),
        }
    }

    /// The last stored event of `job` and its stream sequence; `None` for an empty log.
    pub async fn last(&self, job: &str) -> Result<Option<(u64, JobEvent)>, EngineError> {
        match self
            .stream
            .direct_get_last_for_subject(events_subject(job))
            .await
        {
            Ok(message) => Ok(Some((message.sequence, decode(&message.payload)?))),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("cannot read a job's log", e)),
        }
    }

    /// Removes every event of a job that was refused before any client saw it.
    pub async fn forget(&self, job: &str) -> Result<(), EngineError> {
        self.stream
            .purge()
            .filter(events_subject(job))
            .await
            .map(|_| ())
            .map_err(|e| unavailable("cannot remove a job's log", e))
    }

    /// `job`'s stored events after job sequence `after`, then the live ones, until its
    /// terminal event; each once, in order.
    pub async fn replay(
        &self,
        job: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<JobEvent, EngineError>>, EngineError> {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: events_subject(job),
                deliver_policy: consumer::DeliverPolicy::All,
                max_expires: REPLAY_IDLE,
                // Previews carry their PCM: a few at a time, so a reader that is slower
                // than the broker is not sent more than it can hold (the broker cuts off
                // a client that falls 64 MiB behind).
                max_batch: REPLAY_BATCH,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("cannot replay a job's log", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("cannot replay a job's log", e))?;
        // Events up to and including the terminal one; after it the stream ends without
        // waiting on the consumer again.
        let events = futures_util::stream::unfold(Some(messages), |messages| async move {
            let mut messages = messages?;
            let message = messages.next().await?;
            let event = message
                .map_err(|e| unavailable("stopped a replay", e))
                .and_then(|message| decode(&message.payload));
            let ended = event.as_ref().map_or(true, |e| e.body.is_terminal());
            Some((event, (!ended).then_some(messages)))
        })
        .filter(move |event| {
            let keep = event.as_ref().map_or(true, |e| e.sequence > after);
            std::future::ready(keep)
        });
        Ok(events.boxed())
    }
}

/// The message of an event: its JSON, then a preview's PCM after a line feed.
fn encode(event: &JobEvent) -> Result<Bytes, EngineError> {
    let mut bytes = serde_json::to_vec(event)
        .map_err(|e| EngineError::Internal(format!("cannot encode an event: {e}")))?;
    if let EventBody::AudioChunk(chunk) = &event.body {
        bytes.push(b'\n');
        bytes.extend_from_slice(&chunk.pcm_s16le);
    }
    Ok(bytes.into())
}

/// An event from its message.
fn decode(bytes: &[u8]) -> Result<JobEvent, EngineError> {
    let (json, pcm) = match bytes.iter().position(|&b| b == b'\n') {
        Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
        None => (bytes, None),
    };
    let mut event: JobEvent = serde_json::from_slice(json).map_err(|e| {
        EngineError::Internal(format!("a job's log holds an unreadable event: {e}"))
    })?;
    if let (EventBody::AudioChunk(chunk), Some(pcm)) = (&mut event.body, pcm) {
        chunk.pcm_s16le = pcm.to_vec();
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::event::PcmChunk;

    #[test]
    fn a_preview_travels_with_its_pcm_and_other_events_as_json() {
        let chunk = JobEvent {
            sequence: 4,
            time_unix_ms: 7,
            body: EventBody::AudioChunk(PcmChunk {
                start_frame: 10,
                sample_rate: 32000,
                channels: 1,
                // Bytes that look like a line feed and like JSON stay bytes.
                pcm_s16le: vec![b'\n', b'{', 0, 255],
            }),
        };
        assert_eq!(decode(&encode(&chunk).unwrap()).unwrap(), chunk);
        let cancelled = JobEvent {
            sequence: 5,
            time_unix_ms: 8,
            body: EventBody::Cancelled {
                reason: "a\nb".into(),
            },
        };
        let bytes = encode(&cancelled).unwrap();
        assert!(!bytes.contains(&b'\n'), "JSON escapes its line feeds");
        assert_eq!(decode(&bytes).unwrap(), cancelled);
        assert!(decode(b"not json").is_err());
    }
}
