//! Operators' metrics in the Prometheus text format (version 0.0.4): histograms with fixed
//! buckets, and a writer that lays out families of samples with their help and type lines.
//! The job system ([`crate::jobs::Engine::metrics`]) and the server's transport both
//! write through it, so `/metrics` is one document in one format.

use std::fmt::Write as _;

/// Buckets of latencies in seconds: a millisecond to ten minutes.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Buckets of real-time factors (seconds of compute per second of audio): a hundredth of
/// real time to fifty times slower.
pub const RTF_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0,
];

/// Observations counted into fixed buckets, with their sum and count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; the writer sums them).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (increasing upper bounds; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one observation. A value that is not a number is not counted: it would make
    /// the sum useless for good.
    pub fn observe(&mut self, value: f64) {
        if value.is_nan() {
            return;
        }
        if let Some(bucket) = self.bounds.iter().position(|&bound| value <= bound) {
            self.counts[bucket] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts); its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A metrics document being written: each family's `# HELP` and `# TYPE` lines, then its
/// samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The `Content-Type` of the document.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// Starts the family `name` (samples follow with [`Self::sample`] or
    /// [`Self::histogram`]).
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A histogram's samples: cumulative buckets up to `+Inf`, the sum and the count.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&number(*bound)));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let _ = write!(self.text, "{name}_bucket");
        write_labels(&mut self.text, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {}", histogram.count);
        let _ = write!(self.text, "{name}_sum");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(histogram.sum));
        let _ = write!(self.text, "{name}_count");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", histogram.count);
    }

    /// Adds another document's families after this one's.
    pub fn append(&mut self, other: Exposition) {
        self.text.push_str(&other.text);
    }

    /// The document.
    pub fn finish(self) -> String {
        self.text
    }
}

/// `{a="x",b="y"}` (with `le` last when given), or nothing without labels.
fn write_labels(text: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    text.push('{');
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (name, value)) in all.enumerate() {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "{name}=\"{}\"", escape(value));
    }
    text.push('}');
}

/// A label value with its backslashes, double quotes and line feeds escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the format writes it (`+Inf`, `-Inf`, `NaN`, else the shortest
/// decimal that reads back the same).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_write_cumulative_buckets_their_sum_and_count() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 7.0, f64::NAN] {
            h.observe(v);
        }
        assert_eq!(h.count(), 4, "NaN is not counted");
        let mut doc = Exposition::default();
        doc.family("step_seconds", "A step.", Kind::Histogram);
        doc.histogram("step_seconds", &[("model", "tiny")], &h);
        let text = doc.finish();
        let expected = "# HELP step_seconds A step.\n\
                        # TYPE step_seconds histogram\n\
                        step_seconds_bucket{model=\"tiny\",le=\"0.1\"} 2\n\
                        step_seconds_bucket{model=\"tiny\",le=\"1\"} 3\n\
                        step_seconds_bucket{model=\"tiny\",le=\"+Inf\"} 4\n\
                        step_seconds_sum{model=\"tiny\"} 7.65\n\
                        step_seconds_count{model=\"tiny\"} 4\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut doc = Exposition::default();
        doc.family("jobs", "Jobs \\ by\nstate.", Kind::Gauge);
        doc.sample("jobs", &[("model", "a\"b\\c\nd")], 3.0);
        doc.sample("jobs", &[], f64::INFINITY);
        assert_eq!(
            doc.finish(),
            "# HELP jobs Jobs \\\\ by\\nstate.\n# TYPE jobs gauge\n\
             jobs{model=\"a\\\"b\\\\c\\nd\"} 3\njobs +Inf\n"
        );
    }
}
