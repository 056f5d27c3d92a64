//! A cluster cover's song, from the node that took the upload to the node that runs the
//! job: the decoded samples (so no node decodes the upload twice, and every run of the job
//! reads the very same song) in the object store
//! [`INPUTS_STORE`](super::names::INPUTS_STORE), named by the job's id,
//! while its record carries how to cover it. The song is removed once the job ends.

use std::sync::Arc;

use async_nats::jetstream::object_store::{GetErrorKind, ObjectStore};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::unavailable;
use crate::cover::{CoverMode, Song};
use crate::error::EngineError;
use crate::limits::Limits;
use crate::request::CoverRequest;

/// A cover's settings as its record keeps them; the samples are in the inputs store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoverSpec {
    /// How to cover the song.
    pub mode: Option<CoverMode>,
    /// Continuation: where the clip starts in the song, in seconds.
    pub clip_start_s: Option<f64>,
    /// Continuation: where it ends.
    pub clip_end_s: Option<f64>,
    /// The song's sample rate (the model's song rate).
    pub sample_rate: u32,
    /// The uploaded file's digest.
    pub digest: u64,
    /// Its samples, to check what the store gives back.
    pub samples: u64,
}

impl CoverSpec {
    /// The settings of `cover`.
    pub fn of(cover: &CoverRequest) -> Self {
        Self {
            mode: cover.mode,
            clip_start_s: cover.clip_start_s,
            clip_end_s: cover.clip_end_s,
            sample_rate: cover.song.sample_rate,
            digest: cover.song.digest,
            samples: cover.song.mono.len() as u64,
        }
    }
}

/// Stores `song` for job `job`.
pub async fn put_song(store: &ObjectStore, job: &str, song: &Song) -> Result<(), EngineError> {
    let bytes: Vec<u8> = song.mono.iter().flat_map(|s| s.to_le_bytes()).collect();
    store
        .put(job, &mut bytes.as_slice())
        .await
        .map(|_| ())
        .map_err(|e| unavailable("did not store a cover's song", e))
}

/// Job `job`'s cover as its node runs it: the song read back from the store, at most as
/// long as `limits` allow any song to be, and checked against its record's `spec`.
pub async fn get_cover(
    store: &ObjectStore,
    job: &str,
    spec: &CoverSpec,
    limits: &Limits,
) -> Result<CoverRequest, EngineError> {
    let most = (limits.max_song_seconds * f64::from(spec.sample_rate)).ceil() as u64 + 1;
    if spec.samples > most {
        return Err(EngineError::invalid(
            "song",
            format!(
                "the stored song has {} samples, over this node's limit of {most} \
                 (max_song_seconds); give every node the same limits",
                spec.samples
            ),
        ));
    }
    let mut object = store.get(job).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound => {
            EngineError::invalid("song", format!("the song of cover {job} is gone: {e}"))
        }
        _ => unavailable(&format!("did not give the song of cover {job}"), e),
    })?;
    let expected = spec.samples * 4;
    let mut bytes = Vec::with_capacity(expected as usize);
    // One byte over what the record says is enough to tell a wrong object.
    (&mut object)
        .take(expected + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| unavailable("did not send a cover's song", e))?;
    if bytes.len() as u64 != expected {
        return Err(EngineError::Internal(format!(
            "cover {job}'s stored song has {} bytes where its record says {expected}",
            bytes.len()
        )));
    }
    let mono = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(CoverRequest {
        song: Arc::new(Song {
            sample_rate: spec.sample_rate,
            mono,
            digest: spec.digest,
        }),
        mode: spec.mode,
        clip_start_s: spec.clip_start_s,
        clip_end_s: spec.clip_end_s,
    })
}

/// Removes job `job`'s song, if it has one (after the job ended, or was refused).
pub async fn remove_song(store: &ObjectStore, job: &str) {
    if let Err(e) = store.delete(job).await {
        tracing::debug!(job, "no cover song to remove ({e})");
    }
}
