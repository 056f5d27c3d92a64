//! The `son1k.v1.GenerationService` implementation: authenticates the caller's tenant,
//! converts requests, hands jobs to the engine and forwards each job's events as a server
//! stream. Async tasks only route messages; models run on the engine's worker threads.

pub(crate) mod convert;
mod requests;
mod stream_slots;

use std::sync::{Arc, OnceLock};

use son1k_engine::jobs::{check_job_id, Engine, EventStream, ListCursor};
use son1k_engine::request::check_cover_mode;
use son1k_engine::EngineError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::tenant;
use crate::proto::v1 as pb;
use crate::proto::v1::generation_service_server::GenerationService;
use crate::status::to_status;
use stream_slots::{StreamSlot, StreamSlots};

pub use requests::{DEFAULT_DURATION_S, MAX_REQUEST_ID_BYTES};

/// Events a stream buffers towards a slow client before the forwarder waits (the engine
/// never waits: a stream that falls behind catches up from the job's log). Audio pieces
/// are up to 1 MiB, so this bounds a stream's buffer to a few MiB.
const STREAM_BUFFER: usize = 4;
/// Default and largest page of ListGenerations.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// The service; answers UNAVAILABLE until the engine is ready (models still loading).
#[derive(Clone)]
pub struct GenerationApi {
    engine: Arc<OnceLock<Engine>>,
    streams: StreamSlots,
}

/// A server stream of job events.
pub type EventResponse = ReceiverStream<Result<pb::GenerationEvent, Status>>;

impl GenerationApi {
    /// The service over an engine that `ready` will hold once models are loaded; each
    /// tenant may have `max_streams_per_tenant` event streams open at once.
    pub fn new(ready: Arc<OnceLock<Engine>>, max_streams_per_tenant: usize) -> Self {
        Self {
            engine: ready,
            streams: StreamSlots::new(max_streams_per_tenant),
        }
    }

    fn engine(&self) -> Result<&Engine, Status> {
        self.engine
            .get()
            .ok_or_else(|| Status::unavailable("the server is still loading its models"))
    }

    /// Submits a job and streams it from its first event.
    async fn start(
        &self,
        tenant: String,
        submission: son1k_engine::jobs::Submission,
        cancel_on_disconnect: bool,
    ) -> Result<Response<EventResponse>, Status> {
        let engine = self.engine()?;
        let slot = self.streams.take(&tenant).map_err(to_status)?;
        let admitted = engine.submit(submission).await.map_err(to_status)?;
        let events = engine
            .watch(&tenant, &admitted.id, 0)
            .await
            .map_err(to_status)?;
        Ok(Response::new(forward(
            engine.clone(),
            tenant,
            events,
            cancel_on_disconnect,
            slot,
        )))
    }
}

/// Forwards a job's events to the client on a task of its own, which holds the tenant's
/// stream `slot` while it runs. When the client goes away the job keeps running (it may
/// re-attach with Watch) unless it asked to be cancelled.
fn forward(
    engine: Engine,
    tenant: String,
    mut events: EventStream,
    cancel_on_disconnect: bool,
    slot: StreamSlot,
) -> EventResponse {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let _slot = slot;
        let id = events.job_id().to_string();
        let kind = events.kind();
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = tx.closed() => break,
            };
            let Some(next) = next else { return };
            let item = next
                .map(|event| convert::event(&id, kind, event))
                .map_err(to_status);
            if tx.send(item).await.is_err() {
                break;
            }
        }
        if cancel_on_disconnect {
            let reason = "the client disconnected (cancel_on_disconnect)";
            if let Err(e) = engine.cancel(&tenant, &id, reason).await {
                tracing::warn!(job = %id, "cannot cancel after a disconnect: {e}");
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl GenerationService for GenerationApi {
    type GenerateStream = EventResponse;
    type CoverStream = EventResponse;
    type WatchStream = EventResponse;
    type GetAudioStream = ReceiverStream<Result<pb::AudioPiece, Status>>;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        // Before the request is copied or hashed.
        self.engine()?
            .limits()
            .check_prompt(&request.prompt)
            .map_err(to_status)?;
        let submission = requests::generation(&tenant, &request).map_err(to_status)?;
        self.start(tenant, submission, request.cancel_on_disconnect)
            .await
    }

    async fn cover(
        &self,
        request: Request<pb::CoverRequest>,
    ) -> Result<Response<Self::CoverStream>, Status> {
        let tenant = tenant(&request)?;
        let engine = self.engine()?;
        let mut request = request.into_inner();
        let limits = engine.limits().clone();
        if request.song.is_empty() {
            return Err(to_status(EngineError::invalid(
                "song",
                "is empty; send the song's file bytes",
            )));
        }
        if request.song.len() > limits.max_song_bytes {
            return Err(to_status(EngineError::invalid(
                "song",
                format!(
                    "{} bytes is over the upload limit of {} bytes",
                    request.song.len(),
                    limits.max_song_bytes
                ),
            )));
        }
        limits.check_prompt(&request.prompt).map_err(to_status)?;
        // The model and its cover mode are checked before the upload is decoded (at the
        // model's song rate), so a cover the model cannot make costs no decode.
        let mode = convert::cover_mode(request.mode).map_err(to_status)?;
        let model = engine.model(&request.model).map_err(to_status)?;
        check_cover_mode(mode, model).map_err(to_status)?;
        let song_rate = model.song_rate;
        // The admission slot is taken before the upload is decoded, so decoding is only
        // done for a job that will run; it goes back if anything below fails.
        let reservation = engine
            .reserve(&tenant, &model.id)
            .await
            .map_err(to_status)?;
        let bytes = std::mem::take(&mut request.song);
        let song = engine
            .load_song(&tenant, bytes, song_rate)
            .await
            .map_err(to_status)?;
        let mut submission =
            requests::cover(&tenant, &request, song, limits.max_duration_s).map_err(to_status)?;
        submission.reservation = reservation.id();
        let cancel_on_disconnect = request.cancel_on_disconnect;
        let started = self.start(tenant, submission, cancel_on_disconnect).await;
        drop(reservation);
        started
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let tenant = tenant(&request)?;
        let engine = self.engine()?;
        let request = request.into_inner();
        check_job_id("generation_id", &request.generation_id).map_err(to_status)?;
        let slot = self.streams.take(&tenant).map_err(to_status)?;
        let events = engine
            .watch(&tenant, &request.generation_id, request.after_sequence)
            .await
            .map_err(to_status)?;
        Ok(Response::new(forward(
            engine.clone(),
            tenant,
            events,
            false,
            slot,
        )))
    }

    async fn get_generation(
        &self,
        request: Request<pb::GetGenerationRequest>,
    ) -> Result<Response<pb::Generation>, Status> {
        let tenant = tenant(&request)?;
        check_job_id("generation_id", &request.get_ref().generation_id).map_err(to_status)?;
        let info = self
            .engine()?
            .get(&tenant, &request.get_ref().generation_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::generation(&info)))
    }

    async fn get_audio(
        &self,
        request: Request<pb::GetAudioRequest>,
    ) -> Result<Response<Self::GetAudioStream>, Status> {
        let tenant = tenant(&request)?;
        check_job_id("generation_id", &request.get_ref().generation_id).map_err(to_status)?;
        let engine = self.engine()?.clone();
        let slot = self.streams.take(&tenant).map_err(to_status)?;
        let audio = engine
            .audio(&tenant, &request.get_ref().generation_id)
            .await
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let _slot = slot;
            let piece = engine.audio_piece_bytes() as u64;
            let mut offset = 0;
            while offset < audio.total_bytes {
                let len = piece.min(audio.total_bytes - offset);
                let item = engine
                    .read_audio(&audio, offset, len as usize)
                    .await
                    .map(|data| pb::AudioPiece {
                        offset,
                        data,
                        total_bytes: audio.total_bytes,
                        format: convert::format(audio.format) as i32,
                        last: offset + len == audio.total_bytes,
                    })
                    .map_err(to_status);
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
                offset += len;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_generation(
        &self,
        request: Request<pb::CancelGenerationRequest>,
    ) -> Result<Response<pb::CancelGenerationResponse>, Status> {
        let tenant = tenant(&request)?;
        check_job_id("generation_id", &request.get_ref().generation_id).map_err(to_status)?;
        let state = self
            .engine()?
            .cancel(
                &tenant,
                &request.get_ref().generation_id,
                "cancelled by the client",
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CancelGenerationResponse {
            state: convert::state(state) as i32,
        }))
    }

    async fn list_generations(
        &self,
        request: Request<pb::ListGenerationsRequest>,
    ) -> Result<Response<pb::ListGenerationsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        // The page token is a cursor into the tenant's index: a page costs its size.
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(ListCursor::parse(token).map_err(to_status)?),
        };
        let (page, next) = self
            .engine()?
            .list(&tenant, after, page_size)
            .await
            .map_err(to_status)?;
        let next_page_token = next.map_or_else(String::new, |cursor| cursor.token());
        Ok(Response::new(pb::ListGenerationsResponse {
            generations: page.iter().map(convert::generation).collect(),
            next_page_token,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let engine = self.engine()?;
        let limits = engine.limits();
        let max = limits.max_duration_s;
        Ok(Response::new(pb::ListModelsResponse {
            models: engine
                .models()
                .iter()
                .map(|m| convert::model(m, max))
                .collect(),
            limits: Some(convert::request_limits(limits)),
        }))
    }
}
