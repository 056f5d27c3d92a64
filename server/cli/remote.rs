//! `son1k generate --server` and `son1k cover --server`: the client side. Sends the job to a
//! running `son1k serve`, shows the server's progress, re-attaches with Watch when the
//! connection drops, assembles the audio file from its pieces (or fetches it with GetAudio)
//! and prints what was made, as the in-process commands do.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use son1k_engine::audio::{AudioFormat, SampleFormat};
use son1k_engine::EngineError;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use super::play_to::PlayTo;
use super::progress::Bar;
use crate::proto::v1 as pb;
use crate::proto::v1::generation_service_client::GenerationServiceClient;

/// Largest message the client accepts: audio pieces are at most 1 MiB, plus framing.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Seconds to wait before each attempt to re-attach to a job whose stream dropped; as many
/// attempts as entries.
const REATTACH_BACKOFF_S: [u64; 5] = [1, 2, 4, 8, 8];
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Ctrl-C waits for the server to take the cancellation.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags that send a command to a running `son1k serve` instead of running the model
/// in this process.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Run the job on a `son1k serve` at this URL (e.g. http://127.0.0.1:50051) instead of
    /// in this process.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token for --server (a server started with --tokens-file needs one).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SON1K_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Idempotency key for --server: sending the same key again returns the job it started
    /// instead of starting another.
    #[arg(long, value_name = "ID", requires = "server")]
    pub request_id: Option<String>,
    /// PEM certificate authority to trust for an https:// --server, besides the public
    /// web roots (for a server whose certificate a private authority signed).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub tls_ca: Option<PathBuf>,
    /// With --server: write the previews as they arrive as a WAV stream to this file, or to
    /// stdout with `-`, so a player hears the music while it is made (`--play-to - |
    /// ffplay -nodisp -`, `| aplay`); the command's own lines then go to stderr.
    #[arg(long, value_name = "FILE|-", requires = "server")]
    pub play_to: Option<PathBuf>,
}

/// Seconds a cover of the song's whole length (duration 0) may stream to `--play-to`.
const MAX_PLAY_SECONDS: f64 = 600.0;

/// A job for the server.
#[derive(Debug)]
pub(super) enum Job {
    /// Text to music.
    Generate(pb::GenerateRequest),
    /// A cover of an uploaded song.
    Cover(pb::CoverRequest),
}

/// An error the server reported, kept typed so that `main` can give the requests it found
/// invalid exit status 2, like bad arguments of a local run.
#[derive(Debug)]
pub(super) struct ServerError {
    message: String,
    bad_argument: bool,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerError {}

/// Whether `error` is the server turning down a request field (INVALID_ARGUMENT).
pub(super) fn is_bad_argument(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ServerError>()
        .is_some_and(|e| e.bad_argument)
}

/// The sampling flags as the wire carries them (unset = the model's default).
pub(super) fn sampling(
    top_k: Option<usize>,
    top_p: Option<f32>,
    temperature: Option<f32>,
    guidance_scale: Option<f32>,
    seed: Option<u64>,
) -> Result<pb::Sampling, EngineError> {
    let top_k = top_k
        .map(|k| {
            u32::try_from(k)
                .map_err(|_| EngineError::invalid("top_k", format!("{k} is over {}", u32::MAX)))
        })
        .transpose()?;
    Ok(pb::Sampling {
        top_k,
        top_p,
        temperature,
        guidance_scale,
        seed,
    })
}

/// An audio container on the wire.
pub(super) fn audio_format(format: AudioFormat) -> i32 {
    crate::service::convert::format(format) as i32
}

/// A sample format on the wire.
pub(super) fn sample_format(format: SampleFormat) -> i32 {
    match format {
        SampleFormat::S16 => pb::SampleFormat::S16 as i32,
        SampleFormat::F32 => pb::SampleFormat::F32 as i32,
    }
}

/// Runs `job` on the server at `server`, writes its audio file to `out` and prints what was
/// made. Ctrl-C cancels the job on the server.
pub(super) fn run(server: &str, remote: &ServerArgs, job: Job, out: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let duration_s = match &job {
        Job::Generate(r) if r.duration_seconds > 0.0 => r.duration_seconds,
        Job::Generate(_) => 10.0,
        Job::Cover(r) if r.duration_seconds > 0.0 => r.duration_seconds,
        Job::Cover(_) => MAX_PLAY_SECONDS,
    };
    let play_to = match &remote.play_to {
        Some(target) => Some(PlayTo::open(target, duration_s)?),
        None => None,
    };
    let to_stderr = play_to.as_ref().is_some_and(PlayTo::is_stdout);
    runtime.block_on(async {
        let mut session = Session::connect(server, remote).await?;
        session.play_to = play_to;
        let result = tokio::select! {
            result = session.run(job) => Some(result),
            () = interrupted() => None,
        };
        session.bar.finish();
        let Some(result) = result else {
            session.cancel().await;
            bail!("cancelled");
        };
        let (completed, bytes) = result?;
        if let Some(play_to) = session.play_to.take() {
            play_to.finish()?;
        }
        std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
        summary(&completed, out, to_stderr);
        Ok(())
    })
}

/// Resolves on Ctrl-C; never when the signal cannot be watched.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Prints the lines the in-process commands print: the file, and what the model understood
/// (on stderr where stdout carries the `--play-to` stream).
fn summary(completed: &pb::Completed, out: &Path, to_stderr: bool) {
    let mut understood: Vec<(&str, &str)> = completed
        .parameters
        .iter()
        .flat_map(|p| p.understood.iter())
        .map(|(what, value)| (what.as_str(), value.as_str()))
        .collect();
    understood.sort();
    super::output::summary(
        out,
        to_stderr,
        &super::output::Made {
            duration_s: completed.duration_seconds,
            sample_rate: completed.sample_rate,
            channels: completed.channels as usize,
            seed: completed.seed,
            understood,
        },
    );
}

/// How following a stream ended, short of an error.
enum Followed {
    /// The job completed.
    Done(pb::Completed),
    /// The stream broke before the job ended (the reason); the job may still run.
    Broken(String),
}

/// One job on the server: the connection, what has been seen of the job so far and the bar.
struct Session {
    client: GenerationServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    bar: Bar,
    /// The job's id, once an event named it.
    id: Option<String>,
    /// The newest event handled; a re-attached stream starts after it.
    last_sequence: u64,
    pieces: Pieces,
    /// Where the previews go, with `--play-to`.
    play_to: Option<PlayTo>,
}

impl Session {
    /// Connects to `server`, over TLS for an https:// URL.
    async fn connect(server: &str, remote: &ServerArgs) -> anyhow::Result<Self> {
        let token = remote.token.as_deref();
        let url = if server.contains("://") {
            server.to_string()
        } else {
            format!("http://{server}")
        };
        let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| {
            EngineError::invalid(
                "--server",
                format!("`{server}` is not a URL like http://127.0.0.1:50051 ({e})"),
            )
        })?;
        let endpoint = if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(path) = &remote.tls_ca {
                let pem = std::fs::read(path).with_context(|| {
                    format!(
                        "cannot read the certificate authority {} (--tls-ca)",
                        path.display()
                    )
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint
                .tls_config(tls)
                .context("cannot set up TLS (--tls-ca)")?
        } else {
            endpoint
        };
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the server at {url} (--server)"))?;
        let authorization = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                EngineError::invalid("--token", "must be printable ASCII without line breaks")
            })?),
            None => None,
        };
        let client =
            GenerationServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            authorization,
            bar: Bar::for_server(),
            id: None,
            last_sequence: 0,
            pieces: Pieces::default(),
            play_to: None,
        })
    }

    /// A call's request, with the token.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Submits the job and follows it to its end, re-attaching when the stream drops:
    /// returns its result and audio file.
    async fn run(&mut self, job: Job) -> anyhow::Result<(pb::Completed, Vec<u8>)> {
        let started = match job {
            Job::Generate(r) => {
                let request = self.request(r);
                self.client.generate(request).await
            }
            Job::Cover(r) => {
                let request = self.request(r);
                self.client.cover(request).await
            }
        };
        let mut stream = started.map_err(refused)?.into_inner();
        let mut attempts = 0;
        let completed = loop {
            let before = self.last_sequence;
            let reason = match self.follow(&mut stream).await? {
                Followed::Done(completed) => break completed,
                Followed::Broken(reason) => reason,
            };
            if self.last_sequence > before {
                attempts = 0;
            }
            let Some(id) = self.id.clone() else {
                bail!("the server dropped the request before accepting it: {reason}");
            };
            stream = self.reattach(&id, &reason, &mut attempts).await?;
        };
        let bytes = match self.pieces.assemble(completed.audio_bytes) {
            Ok(bytes) => bytes,
            Err(_) => {
                let id = self.id.clone().unwrap_or_default();
                self.fetch_audio(&id, completed.audio_bytes).await?
            }
        };
        Ok((completed, bytes))
    }

    /// Handles a stream's events until the job ends or the stream breaks.
    async fn follow(
        &mut self,
        stream: &mut Streaming<pb::GenerationEvent>,
    ) -> anyhow::Result<Followed> {
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if let Some(completed) = self.handle(event)? {
                        return Ok(Followed::Done(completed));
                    }
                }
                Ok(None) => {
                    return Ok(Followed::Broken(
                        "the stream ended before the job did".into(),
                    ))
                }
                Err(status) if transient(&status) => {
                    return Ok(Followed::Broken(describe(&status)));
                }
                Err(status) => return Err(refused(status).into()),
            }
        }
    }

    /// Handles one event: the job's result when it completed, an error when it failed or
    /// was cancelled. Events already seen (replayed after a re-attach) are skipped.
    fn handle(&mut self, event: pb::GenerationEvent) -> anyhow::Result<Option<pb::Completed>> {
        use pb::generation_event::Event;
        if event.sequence <= self.last_sequence {
            return Ok(None);
        }
        self.last_sequence = event.sequence;
        if self.id.is_none() && !event.generation_id.is_empty() {
            self.id = Some(event.generation_id.clone());
        }
        match event.event {
            Some(Event::Accepted(accepted)) => self.bar.note(format_args!(
                "generation {} accepted (queue position {})",
                event.generation_id, accepted.queue_position
            )),
            Some(Event::Progress(progress)) => self.bar.update_remote(&progress),
            Some(Event::Audio(piece)) => self.pieces.add(piece),
            Some(Event::Completed(completed)) => return Ok(Some(completed)),
            Some(Event::Failed(failed)) => {
                return Err(ServerError {
                    message: format!("generation failed: {}", failed.message),
                    bad_argument: failed.code == pb::ErrorCode::InvalidArgument as i32,
                }
                .into())
            }
            Some(Event::Cancelled(cancelled)) => {
                bail!("generation cancelled: {}", cancelled.reason)
            }
            // Playable previews (the file arrives in pieces).
            Some(Event::AudioChunk(chunk)) => {
                if let Some(play_to) = &mut self.play_to {
                    play_to.chunk(&chunk)?;
                }
            }
            // Events newer than this client.
            None => {}
        }
        Ok(None)
    }

    /// Watches job `id` again after its stream broke (`reason`), from the last event seen,
    /// waiting longer before each attempt; `attempts` counts the tries since events last
    /// arrived.
    async fn reattach(
        &mut self,
        id: &str,
        reason: &str,
        attempts: &mut usize,
    ) -> anyhow::Result<Streaming<pb::GenerationEvent>> {
        let mut reason = reason.to_string();
        loop {
            let Some(wait) = REATTACH_BACKOFF_S.get(*attempts) else {
                bail!(
                    "lost the connection to the server ({reason}) and could not re-attach \
                     after {} tries; generation {id} may still be running",
                    REATTACH_BACKOFF_S.len()
                );
            };
            *attempts += 1;
            self.bar.note(format_args!(
                "lost the stream ({reason}); re-attaching to generation {id} in {wait} s \
                 (try {attempts} of {})",
                REATTACH_BACKOFF_S.len()
            ));
            tokio::time::sleep(Duration::from_secs(*wait)).await;
            let request = self.request(pb::WatchRequest {
                generation_id: id.to_string(),
                after_sequence: self.last_sequence,
            });
            match self.client.watch(request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if transient(&status) => reason = describe(&status),
                Err(status) => return Err(refused(status).into()),
            }
        }
    }

    /// Downloads job `id`'s audio file with GetAudio (when pieces of the event stream went
    /// missing).
    async fn fetch_audio(&mut self, id: &str, expected: u64) -> anyhow::Result<Vec<u8>> {
        let request = self.request(pb::GetAudioRequest {
            generation_id: id.to_string(),
        });
        let mut stream = self
            .client
            .get_audio(request)
            .await
            .map_err(refused)?
            .into_inner();
        let mut pieces = Pieces::default();
        while let Some(piece) = stream.message().await.map_err(refused)? {
            pieces.add(piece);
        }
        pieces
            .assemble(expected)
            .map_err(|e| anyhow::anyhow!("the server sent an incomplete audio file: {e}"))
    }

    /// Asks the server to cancel the job (after Ctrl-C), waiting a little for the answer.
    async fn cancel(&mut self) {
        let Some(id) = self.id.clone() else {
            eprintln!("the server had not accepted the job yet; nothing to cancel");
            return;
        };
        let request = self.request(pb::CancelGenerationRequest {
            generation_id: id.clone(),
        });
        match tokio::time::timeout(CANCEL_TIMEOUT, self.client.cancel_generation(request)).await {
            Ok(Ok(_)) => eprintln!("cancelled generation {id} on the server"),
            Ok(Err(status)) => eprintln!("cannot cancel generation {id}: {}", describe(&status)),
            Err(_) => eprintln!("the server did not answer the cancellation of generation {id}"),
        }
    }
}

/// The pieces of the audio file received so far, by byte offset.
#[derive(Default)]
struct Pieces {
    by_offset: BTreeMap<u64, Vec<u8>>,
    total: Option<u64>,
}

impl Pieces {
    fn add(&mut self, piece: pb::AudioPiece) {
        self.total = Some(piece.total_bytes);
        self.by_offset.insert(piece.offset, piece.data);
    }

    /// The whole file, if the pieces cover it without a gap (`expected` bytes when the
    /// server said so, 0 = unknown); else what is missing.
    fn assemble(&self, expected: u64) -> Result<Vec<u8>, String> {
        let total = match (self.total, expected) {
            (None, _) => return Err("no audio arrived".into()),
            (Some(total), 0) => total,
            (Some(total), expected) if total == expected => total,
            (Some(total), expected) => {
                return Err(format!(
                    "the pieces say {total} bytes, the result {expected} bytes"
                ))
            }
        };
        let mut file = Vec::new();
        for (&offset, data) in &self.by_offset {
            let end = offset.saturating_add(data.len() as u64);
            let at = file.len() as u64;
            if offset > at {
                return Err(format!("bytes {at} to {offset} are missing"));
            }
            if end > at {
                // `at - offset` < data.len(), as end > at.
                file.extend_from_slice(&data[(at - offset) as usize..]);
            }
        }
        match file.len() as u64 {
            len if len == total => Ok(file),
            len if len < total => Err(format!("got {len} of {total} bytes")),
            len => Err(format!("got {len} bytes, more than the {total} announced")),
        }
    }
}

/// Whether a stream error is a dropped connection (worth re-attaching) rather than the
/// server's answer.
fn transient(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown)
}

/// A status as one line: its message and code.
fn describe(status: &Status) -> String {
    let name = code_name(status.code());
    if status.message().is_empty() {
        name.to_string()
    } else {
        format!("{} ({name})", status.message())
    }
}

/// The error for a call the server answered with `status`.
fn refused(status: Status) -> ServerError {
    ServerError {
        message: format!("the server refused the request: {}", describe(&status)),
        bad_argument: status.code() == Code::InvalidArgument,
    }
}

/// A status code as gRPC spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(offset: u64, data: &[u8], total: u64) -> pb::AudioPiece {
        pb::AudioPiece {
            offset,
            data: data.to_vec(),
            total_bytes: total,
            format: pb::AudioFormat::Wav as i32,
            last: offset + data.len() as u64 == total,
        }
    }

    #[test]
    fn pieces_assemble_in_offset_order_and_report_gaps() {
        let mut pieces = Pieces::default();
        assert!(pieces.assemble(0).is_err());
        pieces.add(piece(3, b"def", 7));
        pieces.add(piece(0, b"abc", 7));
        assert_eq!(pieces.assemble(7).unwrap_err(), "got 6 of 7 bytes");
        pieces.add(piece(6, b"g", 7));
        assert_eq!(pieces.assemble(7).unwrap(), b"abcdefg");
        assert!(pieces.assemble(8).is_err());

        let mut gap = Pieces::default();
        gap.add(piece(0, b"ab", 6));
        gap.add(piece(4, b"ef", 6));
        assert_eq!(gap.assemble(6).unwrap_err(), "bytes 2 to 4 are missing");
    }

    #[test]
    fn server_errors_keep_their_code() {
        let error: anyhow::Error = refused(Status::invalid_argument("invalid duration")).into();
        assert!(is_bad_argument(&error));
        assert_eq!(
            error.to_string(),
            "the server refused the request: invalid duration (INVALID_ARGUMENT)"
        );
        let error: anyhow::Error = refused(Status::unavailable("loading")).into();
        assert!(!is_bad_argument(&error));
    }
}
