//! `son1k bench`: MusicGen speed on this machine, from a checkpoint or a preset shape with
//! random weights made in memory (the same cost as real weights, no download). It reports
//! load and text-encoding time, decoder ms per step, EnCodec time, time to first audio,
//! the real-time factor, peak memory, and how close a step comes to the memory-bandwidth
//! floor, as a table or as JSON (schema `son1k.bench.v1`, documented in the README).

pub mod machine;
mod measure;

use std::path::PathBuf;

use clap::Args;
use son1k_engine::{DeviceChoice, KvCache, Precision};

pub use machine::Threads;
pub use measure::{measure, BenchReport};

/// Arguments of `son1k bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A checkpoint directory, or a Hub id in the Hugging Face cache (else `--preset`).
    #[arg(long, value_name = "DIR|ID", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A preset shape with random weights: musicgen-small, -medium, -large, -stereo-*.
    #[arg(long, default_value = "musicgen-small")]
    pub preset: String,
    // The help text is clap's: `[:N]` is not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Decoder precision.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Self-attention cache: `compute` (the decoder's precision) or `f16`.
    #[arg(long, default_value = "compute")]
    pub kv_cache: KvCache,
    /// Seconds of audio for the end-to-end run (0 skips it).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Decoder steps timed on their own before the end-to-end run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// The global `--threads` value, reported with the figures.
    #[arg(skip)]
    pub threads: Option<usize>,
    /// Jobs run together, their decoder steps batched (1 to 256); figures per batched
    /// step, and aggregate throughput over every job.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// End-to-end runs; each figure reported is their median.
    #[arg(long, default_value_t = 1, value_name = "R")]
    pub repeat: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command and prints its report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    if args.json {
        super::output::line(serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &BenchReport) {
    let line = |text: String| super::output::line(text);
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    line(format!(
        "model {}, device {}, dtype {}, KV cache {}, {}, guidance {}",
        r.model,
        r.device,
        r.dtype,
        r.kv_cache,
        r.threads_env.describe(),
        r.guidance_scale
    ));
    line(format!("{:<28}{}", "concurrent jobs", r.concurrency));
    line(format!("{:<28}{:.0} ms", "load", r.load_ms));
    line(format!("{:<28}{}", "text encoding", ms(r.text_encode_ms)));
    line(format!(
        "{:<28}median {:.2} ms, p95 {:.2} ms",
        "decoder step", r.step_ms_median, r.step_ms_p95
    ));
    if let (Some(steps), Some(mean)) = (r.steps, r.loop_step_ms_mean) {
        let windows = r.windows.unwrap_or(1);
        line(format!(
            "{:<28}{steps} steps in {windows} window{}, {mean:.2} ms per step",
            "generation loop",
            if windows == 1 { "" } else { "s" }
        ));
    }
    line(format!("{:<28}{}", "EnCodec decode", ms(r.encodec_ms)));
    line(format!(
        "{:<28}{} (every job: p50 {}, p95 {})",
        "first audio",
        ms(r.first_audio_ms),
        ms(r.first_audio_ms_p50),
        ms(r.first_audio_ms_p95)
    ));
    if let (Some(after), Some(snr)) = (r.first_preview_after_s, r.preview_snr_db_min) {
        line(format!(
            "{:<28}first after {after:.2} s of audio; played in order, {snr:.1} dB SNR \
             against the final audio (the lowest job)",
            "previews"
        ));
    }
    if let (Some(audio), Some(rtf)) = (r.audio_s, r.rtf) {
        line(format!(
            "{:<28}{rtf:.3} ({audio:.2} s of audio)",
            "real-time factor"
        ));
    }
    if let (Some(frames), Some(rtf)) = (r.aggregate_frames_per_s, r.aggregate_rtf) {
        line(format!(
            "{:<28}{frames:.1} frames/s, real-time factor {rtf:.3} (all {} jobs)",
            "aggregate", r.concurrency
        ));
    }
    if let Some(rss) = r.peak_rss_bytes {
        line(format!(
            "{:<28}{:.0} MiB",
            "peak resident memory",
            rss as f64 / 1048576.0
        ));
    }
    line(format!(
        "{:<28}{:.0} MB weights + {:.0} MB KV cache",
        "read per step",
        r.weight_bytes_per_step as f64 / 1e6,
        r.kv_bytes_per_step as f64 / 1e6
    ));
    let probes: Vec<String> = r
        .bandwidth_probes_gb_s
        .iter()
        .map(|p| format!("{p:.1}"))
        .collect();
    line(format!(
        "{:<28}{:.2} GB/s (all compute threads; median of probes {})",
        "memory bandwidth",
        r.bandwidth_gb_s,
        probes.join(", ")
    ));
    line(format!(
        "{:<28}{:.1} ms; a step takes {:.2}x the floor",
        "bandwidth floor per step", r.floor_ms, r.floor_ratio
    ));
    line(format!(
        "{:<28}{} (kernels: {})",
        "CPU features",
        r.cpu_features.detected.join(" "),
        r.cpu_features.kernels
    ));
    let peaks = &r.gemm_gflops;
    line(format!(
        "{:<28}f32 GEMM {:.1}, f32 FMA {:.1}, int8 {:.1} GFLOP/s",
        "compute peaks", peaks.f32, peaks.f32_fma, peaks.int8
    ));
    line(format!(
        "{:<28}{:.1} GFLOP/s, {:.0}% of the peak",
        "batched step",
        r.step_gflops,
        r.peak_ratio * 100.0
    ));
}
