//! What the job system counts for operators, per model: jobs submitted and ended, decoder
//! step latency, real-time factor and first-audio latency. The registry and the threads that
//! run models record into one [`JobMetrics`]; the gauges (jobs by state, the queue, busy
//! slots) are read from the registry itself when `/metrics` is scraped ([`Gauges`]), so
//! they cannot drift from the jobs it holds.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::event::JobState;
use crate::metrics::{Exposition, Histogram, Kind, RTF_BUCKETS, SECONDS_BUCKETS};

/// One model's counts.
#[derive(Debug)]
struct ModelCounts {
    submitted: u64,
    /// Ended jobs by terminal state: completed, failed, cancelled.
    ended: [u64; 3],
    step_seconds: Histogram,
    real_time_factor: Histogram,
    first_audio_seconds: Histogram,
}

impl ModelCounts {
    fn new() -> Self {
        Self {
            submitted: 0,
            ended: [0; 3],
            step_seconds: Histogram::new(SECONDS_BUCKETS),
            real_time_factor: Histogram::new(RTF_BUCKETS),
            first_audio_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

/// Which of a model's histograms a family shows.
type PickHistogram = fn(&ModelCounts) -> &Histogram;

/// The terminal states, in the order of [`ModelCounts::ended`], with their label values.
const ENDED: [(JobState, &str); 3] = [
    (JobState::Completed, "completed"),
    (JobState::Failed, "failed"),
    (JobState::Cancelled, "cancelled"),
];

/// Counters and histograms per model, since this node started.
#[derive(Debug, Default)]
pub(crate) struct JobMetrics {
    models: Mutex<BTreeMap<String, ModelCounts>>,
}

impl JobMetrics {
    fn with<T>(&self, model: &str, f: impl FnOnce(&mut ModelCounts) -> T) -> T {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        f(models
            .entry(model.to_string())
            .or_insert_with(ModelCounts::new))
    }

    /// Every model starts at zero, so its families are there before its first job.
    pub(crate) fn register(&self, model: &str) {
        self.with(model, |_| ());
    }

    /// A job was admitted.
    pub(crate) fn submitted(&self, model: &str) {
        self.with(model, |m| m.submitted += 1);
    }

    /// A job ended in `state` (a terminal state; others are ignored).
    pub(crate) fn ended(&self, model: &str, state: JobState) {
        if let Some(index) = ENDED.iter().position(|(s, _)| *s == state) {
            self.with(model, |m| m.ended[index] += 1);
        }
    }

    /// One decoder step (of every job of a batch, or of one job) took `elapsed`.
    pub(crate) fn step(&self, model: &str, elapsed: Duration) {
        self.with(model, |m| m.step_seconds.observe(elapsed.as_secs_f64()));
    }

    /// A job made `audio_s` seconds of audio in `elapsed` from its start.
    pub(crate) fn finished(&self, model: &str, elapsed: Duration, audio_s: f64) {
        if audio_s > 0.0 {
            let rtf = elapsed.as_secs_f64() / audio_s;
            self.with(model, |m| m.real_time_factor.observe(rtf));
        }
    }

    /// A job's first audio (a preview, or its final file) came `elapsed` after it was
    /// admitted.
    pub(crate) fn first_audio(&self, model: &str, elapsed: Duration) {
        self.with(model, |m| {
            m.first_audio_seconds.observe(elapsed.as_secs_f64())
        });
    }

    /// The document: `gauges` first, then every model's counts.
    pub(crate) fn render(&self, gauges: &Gauges) -> Exposition {
        let mut doc = Exposition::default();
        doc.family(
            "son1k_jobs",
            "Jobs this node holds, by state (finished ones until they expire).",
            Kind::Gauge,
        );
        for (state, count) in &gauges.jobs {
            doc.sample("son1k_jobs", &[("state", state)], *count as f64);
        }
        doc.family(
            "son1k_queue_depth",
            "Jobs waiting for a slot (admission slots reserved for uploads included).",
            Kind::Gauge,
        );
        doc.sample("son1k_queue_depth", &[], gauges.queue_depth as f64);
        doc.family(
            "son1k_slots",
            "Jobs that may run at once, per lane: `pool` for models that do not batch, \
             the model's id for one that does.",
            Kind::Gauge,
        );
        for slots in &gauges.slots {
            doc.sample("son1k_slots", &[("lane", &slots.lane)], slots.total as f64);
        }
        doc.family(
            "son1k_running_slots",
            "Slots running a job now, per lane.",
            Kind::Gauge,
        );
        for slots in &gauges.slots {
            let busy = slots.busy as f64;
            doc.sample("son1k_running_slots", &[("lane", &slots.lane)], busy);
        }
        doc.family(
            "son1k_store_writable",
            "1 while the job store can write (0 on a full or read-only disk).",
            Kind::Gauge,
        );
        let writable = if gauges.store_writable { 1.0 } else { 0.0 };
        doc.sample("son1k_store_writable", &[], writable);

        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        doc.family(
            "son1k_jobs_submitted_total",
            "Jobs admitted since the node started.",
            Kind::Counter,
        );
        for (model, m) in models.iter() {
            let value = m.submitted as f64;
            doc.sample("son1k_jobs_submitted_total", &[("model", model)], value);
        }
        doc.family(
            "son1k_jobs_ended_total",
            "Jobs ended since the node started, by how.",
            Kind::Counter,
        );
        for (model, m) in models.iter() {
            for ((_, state), count) in ENDED.iter().zip(m.ended) {
                let labels = [("model", model.as_str()), ("state", state)];
                doc.sample("son1k_jobs_ended_total", &labels, count as f64);
            }
        }
        let histograms: [(&str, &str, PickHistogram); 3] = [
            (
                "son1k_step_seconds",
                "Wall time of one decoder step (a batch's step serves all its jobs at once).",
                |m| &m.step_seconds,
            ),
            (
                "son1k_real_time_factor",
                "Seconds from a job's start to its end per second of audio it made \
                 (completed jobs).",
                |m| &m.real_time_factor,
            ),
            (
                "son1k_first_audio_seconds",
                "Seconds from a job's admission to its first audio: a preview, or the \
                 final file where none came first.",
                |m| &m.first_audio_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            doc.family(name, help, Kind::Histogram);
            for (model, m) in models.iter() {
                doc.histogram(name, &[("model", model)], histogram(m));
            }
        }
        doc
    }
}

/// What the registry holds now, for the gauges.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Gauges {
    /// Jobs by state, with the state's label value.
    pub(crate) jobs: Vec<(&'static str, usize)>,
    /// Jobs waiting.
    pub(crate) queue_depth: usize,
    /// Each lane's slots.
    pub(crate) slots: Vec<LaneSlots>,
    /// Whether the store can write.
    pub(crate) store_writable: bool,
}

/// One lane's slots.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LaneSlots {
    /// `pool`, or the id of a model that batches.
    pub(crate) lane: String,
    /// Running jobs.
    pub(crate) busy: usize,
    /// Jobs that may run at once.
    pub(crate) total: usize,
}

/// A state's label value.
pub(crate) fn state_label(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_model_and_rendered_with_the_gauges() {
        let metrics = JobMetrics::default();
        metrics.register("synth");
        metrics.submitted("tiny");
        metrics.submitted("tiny");
        metrics.ended("tiny", JobState::Completed);
        metrics.ended("tiny", JobState::Running); // not an end: ignored
        metrics.finished("tiny", Duration::from_secs(1), 4.0);
        metrics.finished("tiny", Duration::from_secs(1), 0.0); // no audio: no factor
        let gauges = Gauges {
            jobs: vec![("queued", 1), ("completed", 1)],
            queue_depth: 1,
            slots: vec![LaneSlots {
                lane: "pool".into(),
                busy: 0,
                total: 2,
            }],
            store_writable: true,
        };
        let text = metrics.render(&gauges).finish();
        for line in [
            "son1k_jobs{state=\"queued\"} 1",
            "son1k_queue_depth 1",
            "son1k_slots{lane=\"pool\"} 2",
            "son1k_running_slots{lane=\"pool\"} 0",
            "son1k_store_writable 1",
            "son1k_jobs_submitted_total{model=\"synth\"} 0",
            "son1k_jobs_submitted_total{model=\"tiny\"} 2",
            "son1k_jobs_ended_total{model=\"tiny\",state=\"completed\"} 1",
            "son1k_jobs_ended_total{model=\"tiny\",state=\"failed\"} 0",
            "son1k_real_time_factor_sum{model=\"tiny\"} 0.25",
            "son1k_real_time_factor_count{model=\"tiny\"} 1",
            "son1k_step_seconds_count{model=\"synth\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
