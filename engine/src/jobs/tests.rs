//! The job system with a model whose steps wait for the test's permission, so queueing,
//! admission and "cancel stops within one step" are checked exactly, without timing.

use std::sync::{Arc, Condvar, Mutex};

use super::*;
use crate::audio::{Audio, AudioFormat};
use crate::error::EngineError;
use crate::model::{MusicModel, Session};
use crate::model_info::{ModelInfo, ModelKind, SamplingDefaults};
use crate::request::{GenerateRequest, Length, ValidatedRequest};

/// Steps granted to the model; each step takes one.
#[derive(Default)]
struct Gate {
    /// (permits left, steps entered so far).
    state: Mutex<(usize, usize)>,
    changed: Condvar,
}

impl Gate {
    fn grant(&self, n: usize) {
        if let Ok(mut state) = self.state.lock() {
            state.0 += n;
        }
        self.changed.notify_all();
    }

    /// Blocks until the model has entered `n` steps (it may be waiting inside the last).
    fn wait_entered(&self, n: usize) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while state.1 < n {
            state = match self.changed.wait(state) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }

    fn take(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.1 += 1;
        self.changed.notify_all();
        while state.0 == 0 {
            state = match self.changed.wait(state) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
        state.0 -= 1;
    }
}

struct GatedModel {
    info: ModelInfo,
    gate: Arc<Gate>,
    /// When set, the first step panics with this text.
    panic_with: Option<&'static str>,
    /// When set, decoding (the session's finish) waits for one of its permits too.
    decode_gate: Option<Arc<Gate>>,
    /// When set, the model batches: a step of all its jobs takes one permit, and the
    /// number of jobs in each step is recorded here.
    batch_sizes: Option<Arc<Mutex<Vec<usize>>>>,
}

impl GatedModel {
    fn new(gate: Arc<Gate>) -> Self {
        Self {
            info: ModelInfo {
                id: "gated".into(),
                kind: ModelKind::Synth,
                device: "cpu".into(),
                streams_audio: false,
                sample_rate: 1000,
                channels: 1,
                frame_rate: 10,
                max_frames: 1000,
                extra_steps: 0,
                vocab_size: 0,
                cover_modes: Vec::new(),
                song_rate: 32000,
                max_clip_frames: 0,
                defaults: SamplingDefaults {
                    top_k: 0,
                    top_p: 0.0,
                    temperature: 1.0,
                    guidance_scale: 1.0,
                },
            },
            gate,
            panic_with: None,
            decode_gate: None,
            batch_sizes: None,
        }
    }
}

impl MusicModel for GatedModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn start(&self, request: &ValidatedRequest) -> Result<Box<dyn Session>, EngineError> {
        if let Some(text) = self.panic_with {
            panic!("{text}");
        }
        Ok(Box::new(GatedSession {
            gate: Arc::clone(&self.gate),
            decode_gate: self.decode_gate.clone(),
            total: request.frames,
            done: 0,
        }))
    }

    fn batches(&self) -> bool {
        self.batch_sizes.is_some()
    }

    fn step_batch(&self, sessions: &mut [&mut dyn Session]) -> Vec<Result<(), EngineError>> {
        if let Some(sizes) = &self.batch_sizes {
            sizes.lock().unwrap().push(sessions.len());
        }
        self.gate.take();
        sessions
            .iter_mut()
            .map(|session| {
                let any: &mut dyn std::any::Any = &mut **session;
                let session = any.downcast_mut::<GatedSession>().unwrap();
                session.done += 1;
                Ok(())
            })
            .collect()
    }
}

struct GatedSession {
    gate: Arc<Gate>,
    decode_gate: Option<Arc<Gate>>,
    total: usize,
    done: usize,
}

impl Session for GatedSession {
    fn total_steps(&self) -> usize {
        self.total
    }

    fn steps_done(&self) -> usize {
        self.done
    }

    fn step(&mut self) -> Result<(), EngineError> {
        self.gate.take();
        self.done += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Audio, EngineError> {
        if let Some(gate) = &self.decode_gate {
            gate.take();
        }
        Ok(Audio {
            sample_rate: 1000,
            channels: vec![vec![0.25; self.done * 100]],
        })
    }
}

fn engine(
    dir: &std::path::Path,
    gate: &Arc<Gate>,
    max_running: usize,
    max_queued: usize,
) -> Engine {
    let config = EngineConfig {
        max_running,
        max_queued,
        ..EngineConfig::new(dir)
    };
    Engine::start(config, vec![Arc::new(GatedModel::new(Arc::clone(gate)))]).unwrap()
}

/// A 10-step job.
fn submission(tenant: &str) -> Submission {
    Submission {
        tenant: tenant.into(),
        kind: JobKind::Generation,
        model: None,
        request: GenerateRequest::new("test", Length::Seconds(1.0)),
        format: AudioFormat::Wav,
        request_id: None,
        fingerprint: 0,
        reservation: None,
        cluster_id: None,
    }
}

/// Polls a call once, so its message is in the registry's inbox, without waiting for the
/// answer.
async fn send_only<F: std::future::Future>(call: std::pin::Pin<&mut F>) {
    tokio::select! {
        biased;
        _ = call => panic!("answered before the job stopped"),
        () = std::future::ready(()) => {}
    }
}

async fn next(stream: &mut EventStream) -> EventBody {
    stream.next().await.unwrap().unwrap().body
}

fn steps_of(body: &EventBody) -> Option<u32> {
    match body {
        EventBody::Progress(p) if p.stage == JobStage::Generating => Some(p.frames_done),
        _ => None,
    }
}

#[tokio::test]
async fn cancel_stops_the_job_after_the_step_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = engine(dir.path(), &gate, 1, 4);
    let job = engine.submit(submission("t")).await.unwrap();
    let mut events = engine.watch("t", &job.id, 0).await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        EventBody::Accepted {
            queue_position: 0,
            ..
        }
    ));
    // Started (0 %), then the prompt is read (1 %).
    for percent in [0.0, 1.0] {
        assert!(matches!(
            next(&mut events).await,
            EventBody::Progress(p) if p.stage == JobStage::Encoding && p.percent == percent
        ));
    }

    gate.grant(2);
    assert_eq!(steps_of(&next(&mut events).await), Some(1));
    assert_eq!(steps_of(&next(&mut events).await), Some(2));

    gate.wait_entered(3);
    // The worker now waits inside step 3. Send the cancel; the registry handles calls in
    // order, so once `get` answers, the cancel flag is set.
    let cancelling = engine.cancel("t", &job.id, "test");
    tokio::pin!(cancelling);
    send_only(cancelling.as_mut()).await;
    engine.get("t", &job.id).await.unwrap();
    gate.grant(100);
    // Step 3 finishes; no step 4 starts.
    assert_eq!(steps_of(&next(&mut events).await), Some(3));
    assert!(matches!(next(&mut events).await, EventBody::Cancelled { reason } if reason == "test"));
    assert!(events.next().await.is_none());
    assert_eq!(cancelling.await.unwrap(), JobState::Cancelled);
    let info = engine.get("t", &job.id).await.unwrap();
    assert_eq!(info.state, JobState::Cancelled);
    assert_eq!(info.progress.frames_done, 3);
}

#[tokio::test]
async fn a_full_queue_refuses_with_a_retry_hint_and_a_freed_slot_starts_the_next_job() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = engine(dir.path(), &gate, 1, 1);
    let running = engine.submit(submission("a")).await.unwrap();
    let waiting = engine.submit(submission("b")).await.unwrap();
    match engine.submit(submission("c")).await {
        Err(EngineError::ResourceExhausted {
            message,
            retry_after,
        }) => {
            assert!(message.contains("max_queued"), "{message}");
            assert!(!retry_after.is_zero());
        }
        other => panic!("expected ResourceExhausted, got {other:?}"),
    }
    let mut queued = engine.watch("b", &waiting.id, 0).await.unwrap();
    assert!(matches!(
        next(&mut queued).await,
        EventBody::Accepted {
            queue_position: 1,
            ..
        }
    ));
    assert!(matches!(
        next(&mut queued).await,
        EventBody::Progress(p) if p.stage == JobStage::Queued && p.queue_position == 1
    ));

    // Another tenant cannot see or cancel the job.
    assert!(matches!(
        engine.cancel("b", &running.id, "x").await,
        Err(EngineError::NotFound(_))
    ));
    let cancel = engine.cancel("a", &running.id, "make room");
    tokio::pin!(cancel);
    send_only(cancel.as_mut()).await;
    engine.get("a", &running.id).await.unwrap();
    gate.grant(1);
    assert_eq!(cancel.await.unwrap(), JobState::Cancelled);
    // The waiting job starts at once.
    assert!(
        matches!(next(&mut queued).await, EventBody::Progress(p) if p.stage == JobStage::Encoding)
    );
    gate.grant(100);
    let mut last = None;
    while let Some(event) = queued.next().await {
        last = Some(event.unwrap().body);
    }
    assert!(matches!(last, Some(EventBody::Completed(_))), "{last:?}");
}

#[tokio::test]
async fn one_tenant_cannot_fill_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let config = EngineConfig {
        max_jobs_per_tenant: 2,
        ..EngineConfig::new(dir.path())
    };
    let engine = Engine::start(config, vec![Arc::new(GatedModel::new(Arc::clone(&gate)))]).unwrap();
    engine.submit(submission("greedy")).await.unwrap();
    engine.submit(submission("greedy")).await.unwrap();
    assert!(matches!(
        engine.submit(submission("greedy")).await,
        Err(EngineError::ResourceExhausted { message, .. }) if message.contains("max_jobs_per_tenant")
    ));
    engine.submit(submission("polite")).await.unwrap();
    gate.grant(1000);
}

#[tokio::test]
async fn finished_jobs_expire_with_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    gate.grant(1000);
    let config = EngineConfig {
        retention: std::time::Duration::from_secs(1),
        ..EngineConfig::new(dir.path())
    };
    let engine = Engine::start(config, vec![Arc::new(GatedModel::new(Arc::clone(&gate)))]).unwrap();
    let job = engine.submit(submission("t")).await.unwrap();
    let mut events = engine.watch("t", &job.id, 0).await.unwrap();
    while events.next().await.is_some() {}
    engine.flush().await;
    let job_dir = dir.path().join("jobs").join(&job.id);
    assert!(job_dir.join("record.json").exists());
    assert!(job_dir.join("audio.wav").exists());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.get("t", &job.id).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The store thread deletes right after; wait for it the same way.
    while job_dir.exists() {
        assert!(std::time::Instant::now() < deadline, "files never deleted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reserved_slot_counts_before_its_job_exists_and_an_unused_one_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = engine(dir.path(), &gate, 1, 1);
    let running = engine.submit(submission("a")).await.unwrap();
    // A cover decoding its upload holds the only queue place ...
    let reservation = engine.reserve("b", "gated").await.unwrap();
    let refused = engine.submit(submission("c")).await;
    assert!(
        matches!(&refused, Err(EngineError::ResourceExhausted { message, .. }) if message.contains("max_queued")),
        "{:?}",
        refused.err()
    );
    assert!(engine.reserve("c", "gated").await.is_err());
    // ... which its submission then takes.
    let cover = Submission {
        reservation: reservation.id(),
        ..submission("b")
    };
    let queued = engine.submit(cover).await.unwrap();
    drop(reservation);
    assert!(engine.submit(submission("c")).await.is_err());
    engine.cancel("b", &queued.id, "test").await.unwrap();
    // A reservation dropped unused gives its place back.
    let unused = engine.reserve("d", "gated").await.unwrap();
    assert!(engine.reserve("e", "gated").await.is_err());
    drop(unused);
    let freed = engine.reserve("e", "gated").await;
    assert!(freed.is_ok(), "{:?}", freed.err());
    gate.grant(10);
    engine.cancel("a", &running.id, "test").await.unwrap();
}

#[tokio::test]
async fn a_cancel_while_decoding_ends_the_job_at_once_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, decode) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
    let model = GatedModel {
        decode_gate: Some(Arc::clone(&decode)),
        ..GatedModel::new(Arc::clone(&gate))
    };
    let config = EngineConfig {
        max_running: 1,
        ..EngineConfig::new(dir.path())
    };
    let engine = Engine::start(config, vec![Arc::new(model)]).unwrap();
    let job = engine.submit(submission("t")).await.unwrap();
    let mut events = engine.watch("t", &job.id, 0).await.unwrap();
    gate.grant(10);
    // The decode is blocked once the job reports its decoding stage.
    loop {
        match events.next().await.map(Result::unwrap).map(|e| e.body) {
            Some(EventBody::Progress(p)) if p.stage == JobStage::Decoding => break,
            Some(_) => {}
            None => panic!("the job ended before decoding"),
        }
    }
    // Answered while the decode still runs (it used to wait for the decode to end).
    let cancel = engine.cancel("t", &job.id, "test");
    let state = tokio::time::timeout(std::time::Duration::from_secs(10), cancel)
        .await
        .expect("the cancel is answered during the decode")
        .unwrap();
    assert_eq!(state, JobState::Cancelled);
    // The model's slot frees once the decode returns; the next job runs in it.
    let next = engine.submit(submission("t")).await.unwrap();
    decode.grant(2);
    gate.grant(10);
    let mut events = engine.watch("t", &next.id, 0).await.unwrap();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event.unwrap().body);
    }
    assert!(matches!(last, Some(EventBody::Completed(_))), "{last:?}");
    let cancelled = engine.get("t", &job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.result.is_none());
    let audio = dir.path().join("jobs").join(&job.id).join("audio.wav");
    assert!(!audio.exists());
}

#[tokio::test]
async fn a_panicking_model_fails_its_job_without_telling_the_client_the_panic() {
    let dir = tempfile::tempdir().unwrap();
    let model = GatedModel {
        panic_with: Some("index out of bounds in /home/builder/secret/model.rs"),
        ..GatedModel::new(Arc::new(Gate::default()))
    };
    let engine = Engine::start(EngineConfig::new(dir.path()), vec![Arc::new(model)]).unwrap();
    let job = engine.submit(submission("t")).await.unwrap();
    let mut events = engine.watch("t", &job.id, 0).await.unwrap();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event.unwrap().body);
    }
    let Some(EventBody::Failed { code, message }) = last else {
        panic!("expected Failed, got {last:?}");
    };
    assert_eq!(code, FailureCode::Internal);
    assert!(
        !message.contains("secret") && !message.contains('/'),
        "{message}"
    );
    assert!(message.contains("log"), "{message}");
}

#[tokio::test]
async fn reservations_take_free_workers_first_and_then_count_against_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    // One worker, free; one queue place.
    let engine = engine(dir.path(), &gate, 1, 1);
    let starts = engine.reserve("a", "gated").await.unwrap();
    let waits = engine.reserve("b", "gated").await.unwrap();
    let refused = engine.reserve("c", "gated").await;
    assert!(
        matches!(&refused, Err(EngineError::ResourceExhausted { message, .. }) if message.contains("max_queued")),
        "{:?}",
        refused.err()
    );
    assert!(engine.submit(submission("d")).await.is_err());
    // Each submission takes the place its reservation held.
    let first = engine
        .submit(Submission {
            reservation: starts.id(),
            ..submission("a")
        })
        .await
        .unwrap();
    let second = engine
        .submit(Submission {
            reservation: waits.id(),
            ..submission("b")
        })
        .await
        .unwrap();
    assert_eq!(
        engine.get("a", &first.id).await.unwrap().state,
        JobState::Running
    );
    assert_eq!(
        engine.get("b", &second.id).await.unwrap().state,
        JobState::Queued
    );
    gate.grant(20);
    for (tenant, id) in [("a", first.id), ("b", second.id)] {
        let mut events = engine.watch(tenant, &id, 0).await.unwrap();
        while events.next().await.is_some() {}
    }
}

/// The event already in a stream, if any, without waiting for one. (Unconstrained: a
/// task out of its cooperative budget would see a ready channel as empty.)
async fn ready_now(stream: &mut EventStream) -> Option<EventBody> {
    tokio::select! {
        biased;
        event = tokio::task::unconstrained(stream.next()) => Some(event.unwrap().unwrap().body),
        () = std::future::ready(()) => None,
    }
}

fn batching_engine(
    dir: &std::path::Path,
    gate: &Arc<Gate>,
    max_batch: usize,
) -> (Engine, Arc<Mutex<Vec<usize>>>) {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let model = GatedModel {
        batch_sizes: Some(Arc::clone(&sizes)),
        ..GatedModel::new(Arc::clone(gate))
    };
    let config = EngineConfig {
        max_running: 1,
        max_batch,
        ..EngineConfig::new(dir)
    };
    (Engine::start(config, vec![Arc::new(model)]).unwrap(), sizes)
}

/// Reads a stream's events up to its end; the last one.
async fn last_event(stream: &mut EventStream) -> Option<EventBody> {
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = Some(event.unwrap().body);
    }
    last
}

/// Steps of the first job in the joining test: enough for the second job's starter thread
/// to hand it over, however the threads are scheduled.
const LONG_STEPS: usize = 1000;

#[tokio::test]
async fn a_job_joins_a_running_batch_within_one_step_and_a_cancel_leaves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let (engine, sizes) = batching_engine(dir.path(), &gate, 3);
    let long = Submission {
        request: GenerateRequest::new("test", Length::Seconds(LONG_STEPS as f64 / 10.0)),
        ..submission("a")
    };
    let first = engine.submit(long).await.unwrap();
    let mut a = engine.watch("a", &first.id, 0).await.unwrap();
    gate.grant(1);
    while steps_of(&next(&mut a).await) != Some(1) {}
    // The batch runs step 2 of the first job; a second job comes.
    gate.wait_entered(2);
    let second = engine.submit(submission("b")).await.unwrap();
    let mut b = engine.watch("b", &second.id, 0).await.unwrap();
    assert!(matches!(
        next(&mut b).await,
        EventBody::Accepted {
            queue_position: 0,
            ..
        }
    ));
    assert!(matches!(next(&mut b).await, EventBody::Progress(p) if p.stage == JobStage::Encoding));
    // Step by step until the batch has taken it in (its prompt is read beside the batch,
    // so it joins at the first step after that).
    let mut entered = 2;
    loop {
        std::thread::yield_now();
        gate.grant(1);
        entered += 1;
        gate.wait_entered(entered);
        // Reports reach the registry in order: once it answers, the batch's reports
        // before this step are in the streams.
        engine.get("b", &second.id).await.unwrap();
        match ready_now(&mut b).await {
            Some(EventBody::Progress(p)) if p.stage == JobStage::Encoding => break,
            // Its starter thread has not handed it over yet: another step.
            None => assert!(entered < LONG_STEPS, "the second job never joined"),
            Some(other) => panic!("{other:?} before the job joined"),
        }
    }
    // The step under way is the joined job's first: one permit, and it has made a step.
    gate.grant(1);
    assert_eq!(steps_of(&next(&mut b).await), Some(1));
    assert_eq!(sizes.lock().unwrap().last(), Some(&2));

    // Cancel the second job inside a step; the first goes on to all its steps.
    gate.wait_entered(entered + 1);
    let cancelling = engine.cancel("b", &second.id, "test");
    tokio::pin!(cancelling);
    send_only(cancelling.as_mut()).await;
    engine.get("b", &second.id).await.unwrap();
    gate.grant(LONG_STEPS);
    assert_eq!(cancelling.await.unwrap(), JobState::Cancelled);
    assert!(matches!(
        last_event(&mut b).await,
        Some(EventBody::Cancelled { .. })
    ));
    let mut frames = Vec::new();
    let mut end = None;
    while let Some(event) = a.next().await {
        let body = event.unwrap().body;
        frames.extend(steps_of(&body));
        end = Some(body);
    }
    assert!(matches!(end, Some(EventBody::Completed(_))), "{end:?}");
    assert_eq!(frames, (2..=LONG_STEPS as u32).collect::<Vec<u32>>());
    let sizes = sizes.lock().unwrap();
    let shared = sizes.iter().filter(|&&n| n == 2).count();
    assert_eq!(sizes.iter().sum::<usize>(), LONG_STEPS + shared);
    assert_eq!(sizes.last(), Some(&1), "the cancelled job left the batch");
}

#[tokio::test]
async fn a_full_batch_queues_the_next_job_until_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let (engine, sizes) = batching_engine(dir.path(), &gate, 2);
    let jobs = [
        engine.submit(submission("a")).await.unwrap(),
        engine.submit(submission("b")).await.unwrap(),
        engine.submit(submission("c")).await.unwrap(),
    ];
    let mut third = engine.watch("c", &jobs[2].id, 0).await.unwrap();
    assert!(matches!(
        next(&mut third).await,
        EventBody::Accepted {
            queue_position: 1,
            ..
        }
    ));
    gate.grant(1000);
    assert!(matches!(
        last_event(&mut third).await,
        Some(EventBody::Completed(_))
    ));
    for (job, tenant) in jobs.iter().zip(["a", "b"]) {
        let info = engine.get(tenant, &job.id).await.unwrap();
        assert_eq!(info.state, JobState::Completed);
    }
    let steps = {
        let sizes = sizes.lock().unwrap();
        assert!(sizes.iter().all(|&n| n <= 2), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 30);
        sizes.len()
    };
    // Each batched step is one observation, whatever its size; the model's lane has the
    // batch's slots.
    let text = engine.metrics().await.unwrap().finish();
    let model = &engine.models()[0].id;
    for line in [
        format!("son1k_step_seconds_count{{model=\"{model}\"}} {steps}"),
        format!("son1k_slots{{lane=\"{model}\"}} 2"),
        format!("son1k_running_slots{{lane=\"{model}\"}} 0"),
        format!("son1k_jobs_ended_total{{model=\"{model}\",state=\"completed\"}} 3"),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}
