//! The cluster's work queue: a message per unfinished job on its tenant's subject. The
//! server refuses a message past the tenant's limit or the queue's, atomically, whichever
//! node publishes it. A node takes a message as a lease: it keeps the lease with
//! in-progress acks (which the server confirms) while the job runs, and acks it when the
//! job has ended; a lease not kept goes to another node after the ack wait, until the
//! delivery limit.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream, AckKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::names::work_subject;
use super::unavailable;
use crate::error::EngineError;

/// What a work message says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkOrder {
    /// The job's id.
    pub job: String,
    /// Its tenant.
    pub tenant: String,
}

/// What an offer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued at this stream sequence.
    Queued(u64),
    /// The tenant has its limit of unfinished jobs.
    TenantFull,
    /// The cluster's queue is full.
    QueueFull,
}

/// JetStream's code for a message refused by a stream's limits.
const LIMIT_REACHED: u64 = 10077;
/// JetStream's code for a message to delete that is not there.
const NO_MESSAGE: u64 = 10057;

/// The work queue and the consumer every node takes from.
#[derive(Clone)]
pub struct WorkQueue {
    context: jetstream::Context,
    stream: stream::Stream,
    consumer: consumer::PullConsumer,
}

impl WorkQueue {
    pub(super) fn new(
        context: jetstream::Context,
        stream: stream::Stream,
        consumer: consumer::PullConsumer,
    ) -> Self {
        Self {
            context,
            stream,
            consumer,
        }
    }

    /// Queues `order` on its tenant's subject, deduplicated by job id (a retried publish
    /// of the same job is stored once).
    pub async fn offer(&self, order: &WorkOrder) -> Result<Offer, EngineError> {
        let payload = serde_json::to_vec(order)
            .map_err(|e| EngineError::Internal(format!("cannot encode a work order: {e}")))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(&order.job);
        let sent = self
            .context
            .send_publish(work_subject(&order.tenant), publish)
            .await
            .map_err(|e| unavailable("refused a job", e))?;
        match sent.await {
            Ok(ack) => Ok(Offer::Queued(ack.sequence)),
            Err(e) => match limit_refusal(&e) {
                Some(offer) => Ok(offer),
                None => Err(unavailable("did not queue a job", e)),
            },
        }
    }

    /// Work messages no node has taken yet: the cluster's line.
    pub async fn waiting(&self) -> Result<u32, EngineError> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| unavailable("cannot tell the queue's length", e))?;
        Ok(u32::try_from(info.num_pending).unwrap_or(u32::MAX))
    }

    /// Takes the next work message, waiting up to `wait` for one; `None` when none came.
    pub async fn take(&self, wait: Duration) -> Result<Option<Lease>, EngineError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| unavailable("cannot hand out work", e))?;
        let Some(message) = batch.next().await else {
            return Ok(None);
        };
        let message = message.map_err(|e| unavailable("cannot hand out work", e))?;
        let info = message
            .info()
            .map_err(|e| unavailable("sent work without its delivery", e))?;
        let (stream_sequence, delivered) = (info.stream_sequence, info.delivered);
        let order = match serde_json::from_slice(&message.payload) {
            Ok(order) => order,
            Err(e) => {
                // Nothing can run it: it must not come back, nor hold a place.
                tracing::warn!("dropping an unreadable work order: {e}");
                let _ = message.ack_with(AckKind::Term).await;
                return Ok(None);
            }
        };
        Ok(Some(Lease {
            message,
            order,
            stream_sequence,
            delivered,
        }))
    }

    /// Removes a queued job's message (cancelled before any node took it), which frees
    /// its tenant's place. `false` when it was not there any more.
    pub async fn remove(&self, stream_sequence: u64) -> Result<bool, EngineError> {
        match self.stream.delete_message(stream_sequence).await {
            Ok(deleted) => Ok(deleted),
            // The server's answer for a message that is not there.
            Err(e)
                if matches!(e.kind(), stream::DeleteMessageErrorKind::JetStream(ref s)
                if s.error_code().0 == NO_MESSAGE) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable("cannot remove a job from the queue", e)),
        }
    }
}

/// Which limit refused a publish, from the server's error (10077, "maximum messages per
/// subject exceeded" or "maximum messages exceeded").
fn limit_refusal(error: &jetstream::context::PublishError) -> Option<Offer> {
    Some(match limit_reached(error)? {
        Limit::PerSubject => Offer::TenantFull,
        Limit::Stream => Offer::QueueFull,
    })
}

/// Which of a stream's limits refused a publish (discard-new streams).
pub(super) enum Limit {
    /// Its messages per subject.
    PerSubject,
    /// Its messages in all.
    Stream,
}

/// The limit that refused a publish; `None` for any other error.
pub(super) fn limit_reached(error: &jetstream::context::PublishError) -> Option<Limit> {
    if error.kind() != PublishErrorKind::Other {
        return None;
    }
    let source = std::error::Error::source(error)?;
    let server = source.downcast_ref::<jetstream::Error>()?;
    if server.error_code().0 != LIMIT_REACHED {
        return None;
    }
    Some(if server.to_string().contains("per subject") {
        Limit::PerSubject
    } else {
        Limit::Stream
    })
}

/// A work message a node holds: its job runs on that node until the lease is finished or
/// lost.
pub struct Lease {
    message: jetstream::Message,
    /// The job.
    pub order: WorkOrder,
    /// The message's place in the stream.
    pub stream_sequence: u64,
    /// Deliveries so far, this one included: above 1, an earlier holder stopped.
    pub delivered: i64,
}

impl Lease {
    /// Extends the lease by the ack wait; the server confirms it, so an error means the
    /// lease may be lost.
    pub async fn extend(&self) -> Result<(), EngineError> {
        self.message
            .double_ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable("did not extend a lease", e))
    }

    /// Gives the lease up: the message is redelivered (to another node) at once.
    pub async fn hand_back(&self) -> Result<(), EngineError> {
        self.message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| unavailable("did not take a job back", e))
    }

    /// Ends the lease: the job is done with, and its message leaves the queue (freeing its
    /// tenant's place).
    pub async fn finish(&self) -> Result<(), EngineError> {
        self.message
            .double_ack()
            .await
            .map_err(|e| unavailable("did not take back a finished job", e))
    }
}
