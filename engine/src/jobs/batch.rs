//! Continuous batching: one batch thread per model that batches steps every active job of
//! that model in one call ([`MusicModel::step_batch`]). Jobs join between steps and leave
//! when they finish, fail or are cancelled, without stalling the others: a starter thread
//! encodes each new job's prompt beside the batch, and a finisher thread renders the
//! previews the batch plans and decodes, encodes and stores each finished job while the
//! batch goes on. Once a job is in the batch, everything it reports after its progress
//! (previews, then how it ended) goes through the finisher, in order: no preview comes
//! after the end.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use super::metrics::JobMetrics;
use super::store::Store;
use super::worker::{panicked, store_output, to_pcm, ReportTo, WorkItem, WorkerReport};
use crate::error::EngineError;
use crate::model::{MusicModel, PreviewRender, Session};
use crate::run::{GenerationOutput, Progress, Stage};

/// A started job: its session and what it was asked.
struct Started {
    item: WorkItem,
    session: Box<dyn Session>,
    total: usize,
}

impl Started {
    fn report(&self, reports: &ReportTo, report: WorkerReport) {
        reports(&self.item.id, report);
    }

    fn progress(&self, stage: Stage) -> WorkerReport {
        WorkerReport::Progress(Progress {
            stage,
            steps_done: self.session.steps_done(),
            steps_total: self.total,
        })
    }
}

/// Starts the threads that run `model`'s jobs, at most `max_batch` in one step; returns
/// where its jobs go. The registry hands it no more jobs than that at once, so none waits
/// here for room.
pub(crate) fn spawn_batch(
    model: Arc<dyn MusicModel>,
    max_batch: usize,
    store: Store,
    reports: ReportTo,
    metrics: Arc<JobMetrics>,
) -> std::io::Result<mpsc::Sender<WorkItem>> {
    let name = &model.info().id;
    let (work_tx, work_rx) = mpsc::channel::<WorkItem>();
    let (joining_tx, joining_rx) = mpsc::channel::<Started>();
    let (done_tx, done_rx) = mpsc::channel::<Finishing>();
    {
        let (model, reports) = (Arc::clone(&model), Arc::clone(&reports));
        std::thread::Builder::new()
            .name(format!("son1k-start-{name}"))
            .spawn(move || {
                for item in work_rx {
                    if let Some(started) = start(item, model.as_ref(), &reports) {
                        if joining_tx.send(started).is_err() {
                            return;
                        }
                    }
                }
            })?;
    }
    {
        let (model, reports) = (Arc::clone(&model), Arc::clone(&reports));
        std::thread::Builder::new()
            .name(format!("son1k-batch-{name}"))
            .spawn(move || {
                run_batch(
                    model.as_ref(),
                    max_batch.max(1),
                    &joining_rx,
                    &done_tx,
                    &reports,
                    &metrics,
                )
            })?;
    }
    std::thread::Builder::new()
        .name(format!("son1k-finish-{name}"))
        .spawn(move || {
            for finishing in done_rx {
                match finishing {
                    Finishing::Preview(id, cancel, span, render) => {
                        if cancel.load(Ordering::Relaxed) {
                            continue;
                        }
                        let _job = span.enter();
                        let chunk = catch_unwind(AssertUnwindSafe(render)).unwrap_or_else(|p| {
                            tracing::warn!("previews stop: {}", panicked(p.as_ref()));
                            None
                        });
                        if let Some(chunk) = chunk {
                            reports(&id, WorkerReport::Chunk(to_pcm(&chunk)));
                        }
                    }
                    Finishing::Ended(id, error) => {
                        reports(&id, WorkerReport::Finished(Err(error)));
                    }
                    Finishing::Done(started) => finish(started, &store, &reports),
                }
            }
        })?;
    Ok(work_tx)
}

/// What the batch hands the finisher, for each job in the order it happened.
enum Finishing {
    /// A preview to render and report (skipped once the job is cancelled), in the job's
    /// span.
    Preview(
        String,
        Arc<std::sync::atomic::AtomicBool>,
        tracing::Span,
        PreviewRender,
    ),
    /// The job ended without finishing its steps.
    Ended(String, EngineError),
    /// The job's steps are done: decode, encode, store.
    Done(Started),
}

/// Starts a job's session (its prompt encoding), or reports why it ended.
fn start(item: WorkItem, model: &dyn MusicModel, reports: &ReportTo) -> Option<Started> {
    let span = item.span.clone();
    let _job = span.enter();
    if item.cancel.load(Ordering::Relaxed) {
        reports(
            &item.id,
            WorkerReport::Finished(Err(EngineError::Cancelled)),
        );
        return None;
    }
    let session = catch_unwind(AssertUnwindSafe(|| model.start(&item.request)))
        .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
    match session {
        Ok(session) => Some(Started {
            total: session.total_steps(),
            item,
            session,
        }),
        Err(e) => {
            reports(&item.id, WorkerReport::Finished(Err(e)));
            None
        }
    }
}

/// The batch loop: take the jobs that joined, drop the cancelled ones, run one step of
/// all, report each job's progress and previews, pass the finished ones on.
fn run_batch(
    model: &dyn MusicModel,
    max_batch: usize,
    joining: &mpsc::Receiver<Started>,
    done: &mpsc::Sender<Finishing>,
    reports: &ReportTo,
    metrics: &JobMetrics,
) {
    let name = &model.info().id;
    let mut active: Vec<Started> = Vec::new();
    let mut open = true;
    loop {
        while open && active.len() < max_batch {
            // Idle, the thread waits for a job; busy, it takes only those already here.
            let next = if active.is_empty() {
                joining.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
            } else {
                joining.try_recv()
            };
            match next {
                Ok(started) => {
                    started.report(reports, started.progress(Stage::Encoding));
                    active.push(started);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        let mut stepping = Vec::with_capacity(active.len());
        for started in active.drain(..) {
            if started.item.cancel.load(Ordering::Relaxed) {
                end(started, EngineError::Cancelled, done, reports);
            } else if started.session.steps_done() >= started.total {
                pass_on(started, done, reports);
            } else {
                stepping.push(started);
            }
        }
        if stepping.is_empty() {
            if open {
                continue;
            }
            return;
        }
        let stepped = std::time::Instant::now();
        let results = catch_unwind(AssertUnwindSafe(|| {
            let mut sessions: Vec<&mut dyn Session> =
                stepping.iter_mut().map(|s| s.session.as_mut()).collect();
            model.step_batch(&mut sessions)
        }));
        metrics.step(name, stepped.elapsed());
        let results = match results {
            Ok(results) if results.len() == stepping.len() => results,
            Ok(results) => {
                let message = format!(
                    "the model answered {} of {} jobs in its batch",
                    results.len(),
                    stepping.len()
                );
                fail_all(stepping, &EngineError::Internal(message), done, reports);
                continue;
            }
            Err(panic) => {
                fail_all(stepping, &panicked(panic.as_ref()), done, reports);
                continue;
            }
        };
        for (mut started, result) in stepping.into_iter().zip(results) {
            if let Err(e) = result {
                end(started, e, done, reports);
                continue;
            }
            started.report(reports, started.progress(Stage::Generating));
            if let Some(render) = started.session.take_preview() {
                let item = &started.item;
                let preview = Finishing::Preview(
                    item.id.clone(),
                    Arc::clone(&item.cancel),
                    item.span.clone(),
                    render,
                );
                // A finisher that stopped fails the job when it is passed on.
                let _ = done.send(preview);
            }
            if started.session.steps_done() >= started.total {
                pass_on(started, done, reports);
            } else {
                active.push(started);
            }
        }
    }
}

/// Every job of a step that failed as a whole fails with its error.
fn fail_all(
    stepping: Vec<Started>,
    error: &EngineError,
    done: &mpsc::Sender<Finishing>,
    reports: &ReportTo,
) {
    for started in stepping {
        end(
            started,
            EngineError::Internal(error.to_string()),
            done,
            reports,
        );
    }
}

/// Reports, through the finisher (after the job's previews), that a job ended unfinished.
fn end(started: Started, error: EngineError, done: &mpsc::Sender<Finishing>, reports: &ReportTo) {
    let id = started.item.id.clone();
    if let Err(mpsc::SendError(Finishing::Ended(_, error))) = done.send(Finishing::Ended(id, error))
    {
        started.report(reports, WorkerReport::Finished(Err(error)));
    }
}

/// Hands a job whose steps are done to the finisher.
fn pass_on(started: Started, done: &mpsc::Sender<Finishing>, reports: &ReportTo) {
    if let Err(mpsc::SendError(Finishing::Done(started))) = done.send(Finishing::Done(started)) {
        let error = EngineError::Internal("the finishing thread stopped".into());
        started.report(reports, WorkerReport::Finished(Err(error)));
    }
}

/// Decodes, encodes and stores a job whose steps are done, and reports how it ended.
fn finish(started: Started, store: &Store, reports: &ReportTo) {
    let decoding = started.progress(Stage::Decoding);
    let Started { item, session, .. } = started;
    let _job = item.span.enter();
    let report = |report: WorkerReport| reports(&item.id, report);
    if item.cancel.load(Ordering::Relaxed) {
        report(WorkerReport::Finished(Err(EngineError::Cancelled)));
        return;
    }
    report(decoding);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let understood = session.understood();
        let audio = session.finish()?;
        let output = GenerationOutput {
            audio,
            request: item.request.clone(),
            understood,
        };
        store_output(&item, output, store, &report)
    }))
    .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
    report(WorkerReport::Finished(outcome));
}
