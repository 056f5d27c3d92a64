//! The terminal progress bar of long-running commands (hidden when stderr is not a
//! terminal, so logs and pipes stay clean), fed by the engine in-process or by a server's
//! progress events.

use indicatif::{ProgressBar, ProgressStyle};
use son1k_engine::{Progress, Stage};

use crate::proto::v1 as pb;

/// A progress bar fed by engine progress reports or by a server's `Progress` events.
pub(super) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar drawn on stderr when it is a terminal.
    pub(super) fn new() -> Self {
        Self::with_template("{msg:>10} [{bar:40}] {pos}/{len} steps, {elapsed} elapsed, ETA {eta}")
    }

    /// A bar for a job running on a server: frames instead of steps, and the server's own
    /// estimate of the time left (it sees the model's speed; the client sees only events).
    pub(super) fn for_server() -> Self {
        Self::with_template("{msg:>12} [{bar:40}] {pos}/{len} frames, {elapsed} elapsed{prefix}")
    }

    fn with_template(template: &str) -> Self {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        Self { bar }
    }

    /// Shows one report.
    pub(super) fn update(&self, progress: Progress) {
        self.bar.set_length(progress.steps_total as u64);
        self.bar.set_position(progress.steps_done as u64);
        self.bar.set_message(match progress.stage {
            Stage::Encoding => "encoding",
            Stage::Generating => "generating",
            Stage::Decoding => "decoding",
        });
    }

    /// Shows one `Progress` event of a server: its stage ("queued #N" while the job
    /// waits), frames done of the total, and the server's ETA once it has one.
    pub(super) fn update_remote(&self, progress: &pb::Progress) {
        self.bar.set_length(u64::from(progress.frames_total));
        self.bar.set_position(u64::from(progress.frames_done));
        let stage = match pb::Stage::try_from(progress.stage) {
            Ok(pb::Stage::Queued) => format!("queued #{}", progress.queue_position),
            Ok(pb::Stage::Encoding) => "encoding".into(),
            Ok(pb::Stage::Generating) => "generating".into(),
            Ok(pb::Stage::Decoding) => "decoding".into(),
            Ok(pb::Stage::Writing) => "writing".into(),
            Ok(pb::Stage::Unspecified) | Err(_) => format!("{:.0}%", progress.percent),
        };
        self.bar.set_message(stage);
        self.bar.set_prefix(match progress.eta_seconds {
            Some(eta) if eta.is_finite() && eta >= 0.0 => format!(", ETA {}s", eta.ceil()),
            _ => String::new(),
        });
    }

    /// Prints a line on stderr without tearing the bar.
    pub(super) fn note(&self, text: impl std::fmt::Display) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// Removes the bar.
    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
