//! The terminal progress bar of long-running commands (hidden when stderr is not a
//! terminal, so logs and pipes stay clean).

use indicatif::{ProgressBar, ProgressStyle};
use son1k_engine::{Progress, Stage};

/// A progress bar fed by engine progress reports.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar drawn on stderr when it is a terminal.
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} steps, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Self { bar }
    }

    /// Shows one report.
    pub fn update(&self, progress: Progress) {
        self.bar.set_length(progress.steps_total as u64);
        self.bar.set_position(progress.steps_done as u64);
        self.bar.set_message(match progress.stage {
            Stage::Encoding => "encoding",
            Stage::Generating => "generating",
            Stage::Decoding => "decoding",
        });
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
