//! The measurement behind `son1k bench`: build or load the model, time decoder steps on
//! their own, then whole generations (text encoding, steps, EnCodec), and relate a step to
//! the bytes it must read.

use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use son1k_engine::musicgen::DEFAULT_PREVIEW_AFTER_SECONDS;
use son1k_engine::Precision;
use son1k_models::musicgen::decoder::StepBuffers;
use son1k_models::musicgen::presets::{preset, PRESET_NAMES};
use son1k_models::musicgen::{
    snr_db, Generation, GenerationConfig, GenerationParams, LongGeneration, MusicGen, PreviewMixer,
    PreviewSettings, PreviewWindow, Previewer, Windows,
};
use son1k_models::sampling::SamplingParams;
use son1k_models::weights::Weights;

use super::machine::{
    compute_peaks, peak_rss_bytes, read_bandwidth_gb_s, reset_peak_rss, ComputePeaks, Threads,
};
use super::BenchArgs;

/// Guidance scale of every bench run: MusicGen's default, two rows per step.
const GUIDANCE: f32 = 3.0;

/// What one bench run measured: the `son1k.bench.v1` JSON schema. Times are medians over
/// `repeat` end-to-end runs; end-to-end fields are `null` when `--duration 0` skips them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// Always `son1k.bench.v1`.
    pub schema: &'static str,
    /// The preset name or checkpoint directory.
    pub model: String,
    /// The device (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// The decoder's precision.
    pub dtype: String,
    /// The dtype the self-attention cache stores keys and values in (`f32`, `f16`).
    pub kv_cache: String,
    /// The `--threads` value, or `RAYON_NUM_THREADS` when it is a number; `null` when
    /// neither is set (candle's default: all cores).
    pub threads: Option<usize>,
    /// The environment's thread settings as run.
    #[serde(flatten)]
    pub threads_env: Threads,
    /// Classifier-free guidance scale (3.0: two rows per step).
    pub guidance_scale: f32,
    /// Jobs run together (`--concurrency`), their decoder steps batched: step times are
    /// per batched step, the end-to-end times those of the whole batch.
    pub concurrency: usize,
    /// End-to-end runs the medians are taken over.
    pub repeat: usize,
    /// Time to load the checkpoint or build the preset, ms.
    pub load_ms: f64,
    /// Tokenised prompt through T5 and the cross-attention K/V, ms.
    pub text_encode_ms: Option<f64>,
    /// Decoder step, timed on its own early in a clip: median, ms.
    pub step_ms_median: f64,
    /// Decoder step: 95th percentile, ms.
    pub step_ms_p95: f64,
    /// Decoder passes of the end-to-end run (frames plus the delay columns, per window; a
    /// window's prompt columns go in its first pass).
    pub steps: Option<usize>,
    /// Windows of the end-to-end run (MusicGen past 30 s runs in windows).
    pub windows: Option<usize>,
    /// Mean step over the whole end-to-end clip (the KV cache grows along it), ms.
    pub loop_step_ms_mean: Option<f64>,
    /// EnCodec decode of the whole clip, ms.
    pub encodec_ms: Option<f64>,
    /// From the request to the first job's first preview (playable audio), ms.
    pub first_audio_ms: Option<f64>,
    /// From the request to each job's first preview, every job of every run: median, ms.
    pub first_audio_ms_p50: Option<f64>,
    /// The same: 95th percentile, ms.
    pub first_audio_ms_p95: Option<f64>,
    /// Seconds of audio every job had generated when its first preview was planned: the
    /// most over every job of every run.
    pub first_preview_after_s: Option<f64>,
    /// Each job's previews played one after another against its final audio: the lowest
    /// signal-to-noise ratio over every job and channel of every run, dB (capped at 200,
    /// where they are the same bits).
    pub preview_snr_db_min: Option<f64>,
    /// The whole generation, ms.
    pub total_ms: Option<f64>,
    /// Seconds of audio made.
    pub audio_s: Option<f64>,
    /// Real-time factor of one job: its audio seconds per wall second (above 1 is faster
    /// than real time).
    pub rtf: Option<f64>,
    /// Frames every job made together per second of the end-to-end run.
    pub aggregate_frames_per_s: Option<f64>,
    /// Audio seconds every job made together per wall second.
    pub aggregate_rtf: Option<f64>,
    /// Peak resident memory of the process after the bandwidth probe, bytes: the model,
    /// its caches and the runtime (Linux only; `null` elsewhere).
    pub peak_rss_bytes: Option<u64>,
    /// Decoder weight bytes one step reads.
    pub weight_bytes_per_step: u64,
    /// KV-cache bytes one step reads, every job's together, averaged over the end-to-end
    /// clip (or over the timed steps when it is skipped).
    pub kv_bytes_per_step: u64,
    /// Memory read bandwidth of all compute threads together, GB/s: the median of
    /// `bandwidth_probes_gb_s`.
    pub bandwidth_gb_s: f64,
    /// Each probe's bandwidth, GB/s: before loading, after the timed steps, after the
    /// end-to-end runs.
    pub bandwidth_probes_gb_s: Vec<f64>,
    /// (weights + KV) / bandwidth: the least time a step can take, ms.
    pub floor_ms: f64,
    /// Mean end-to-end step (else the median timed step) over the floor.
    pub floor_ratio: f64,
    /// The CPU's vector features (`avx2`, `fma`, `f16c`, `avx512f`, `avx512bw`,
    /// `avx512vnni`, those it has) and the path the kernels took on it.
    pub cpu_features: CpuFeatures,
    /// The CPU's measured compute peaks on the same threads, GFLOP/s.
    pub gemm_gflops: ComputePeaks,
    /// The timed batched step's arithmetic: two operations per weight per row (every job's
    /// two guidance rows), over its median time, GFLOP/s.
    pub step_gflops: f64,
    /// `step_gflops` over the peak that bounds it: the f32 GEMM probe for f32 and bf16/f16
    /// weights, the int8 peak for q8 and q4.
    pub peak_ratio: f64,
}

/// Which vector instructions the CPU has and the kernels use.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuFeatures {
    /// The features found.
    pub detected: Vec<&'static str>,
    /// The kernels' paths, f32 then int8 (e.g. `f32 avx512f, int8 avx512vnni`), or
    /// `portable`.
    pub kernels: &'static str,
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let i = ((sorted_ms.len().max(1) as f64 - 1.0) * p).round() as usize;
    sorted_ms
        .get(i.min(sorted_ms.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    (!values.is_empty()).then(|| percentile(values, 0.5))
}

/// One end-to-end run of every job together, ms: (text encoding, step loop, EnCodec,
/// total); audio s of one job.
struct Run {
    text_ms: f64,
    loop_ms: f64,
    encodec_ms: f64,
    total_ms: f64,
    audio_s: f64,
    /// Each job's first preview, ms from the start of the run.
    first_audio_ms: Vec<f64>,
    /// Each job's finished frames when its first preview was planned.
    first_preview_frames: Vec<usize>,
    /// Each job's previews against its final audio, the lowest over its channels, dB.
    preview_snr_db: Vec<f64>,
    steps: usize,
    /// Each window's passes and the cache position after its first (prefix and prompt
    /// included): `(passes, first)`.
    windows: Vec<(usize, usize)>,
}

/// Runs the measurement.
pub fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message("measuring memory bandwidth");
    // Bandwidth is probed three times: before loading, between the timed steps and the
    // end-to-end runs, and after them. Neighbours on a shared machine take (or leave)
    // bandwidth for seconds at a time; the median of the three describes the period the
    // steps ran in, where one probe alone could catch a dip or a burst.
    let mut bandwidth_probes = vec![read_bandwidth_gb_s()];
    let peak_rss_counted = reset_peak_rss();

    let device = args.device.open()?;
    let dtype = args.dtype.dtype_on(&device)?;
    let format = args.dtype.weight_format();
    bar.set_message("loading");
    let start = Instant::now();
    let mut model = match &args.model {
        Some(model) => {
            let (dir, _) = son1k_engine::hub::locate(model)?;
            MusicGen::load(&dir, &device, dtype, format)?
        }
        None => {
            let config = preset(&args.preset).with_context(|| {
                format!(
                    "unknown preset `{}` (one of {})",
                    args.preset,
                    PRESET_NAMES.join(", ")
                )
            })?;
            let weights = Weights::random(0, &device);
            let generation = GenerationConfig::default();
            MusicGen::from_weights(config, generation, None, &weights, dtype, format)?
        }
    };
    model.set_kv_cache_dtype(args.kv_cache.dtype(dtype))?;
    let kv_dtype = model.kv_cache_dtype();
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    // "90s rock song with loud guitars and heavy drums" in T5's vocabulary, clipped to the
    // model's vocabulary so tiny checkpoints work too.
    let vocab = model.config().text_encoder.vocab_size as u32;
    let prompt: Vec<u32> = [2777, 7, 2480, 2324, 28, 8002, 5507, 7, 11, 2437, 5253, 7, 1]
        .iter()
        .map(|id| id % vocab)
        .collect();
    // Each job samples from its own seed, so batched jobs make different music.
    let params = |frames, seed| GenerationParams {
        frames,
        guidance_scale: GUIDANCE,
        sampling: SamplingParams {
            top_k: 250,
            top_p: 0.0,
            temperature: 1.0,
        },
        seed,
    };
    let frame_rate = model.config().frame_rate() as f64;

    let concurrency = usize::from(args.concurrency.max(1));
    let mut buffers = StepBuffers::new();
    bar.set_message(format!("timing decoder steps of {concurrency} job(s)"));
    bar.set_length(args.steps as u64);
    let mut jobs = (0..concurrency)
        .map(|i| Generation::new(&model, &prompt, &params(args.steps + 8, i as u64)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut step_all = |jobs: &mut [Generation]| -> anyhow::Result<()> {
        let mut refs: Vec<&mut Generation> = jobs.iter_mut().collect();
        for result in Generation::step_batch(&model, &mut refs, &mut buffers) {
            result?;
        }
        Ok(())
    };
    step_all(&mut jobs)?; // warm-up
    let mut step_ms = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        step_all(&mut jobs)?;
        device.synchronize()?;
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
        bar.inc(1);
    }
    step_ms.sort_by(f64::total_cmp);
    drop(jobs);
    // The probe's buffer would raise the peak: read it first, and restart it once the
    // buffer is freed.
    let peak_after_steps = peak_rss_bytes();
    bandwidth_probes.push(read_bandwidth_gb_s());
    reset_peak_rss();

    let frames = (args.duration * model.config().frame_rate() as f64).round() as usize;
    let mut runs = Vec::new();
    if frames > 0 {
        for r in 0..args.repeat.max(1) {
            bar.set_message(format!(
                "generating {:.1} s ({}/{})",
                args.duration,
                r + 1,
                args.repeat.max(1)
            ));
            bar.set_position(0);
            let t = Instant::now();
            // Past 30 s in audiocraft's windows, as the engine runs it.
            let windows = Windows::audiocraft(model.config());
            let mut jobs = (0..concurrency)
                .map(|i| {
                    let params = params(frames, i as u64);
                    LongGeneration::new(&model, &prompt, &params, Vec::new(), None, windows)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let job = &jobs[0];
            device.synchronize()?;
            let text_ms = t.elapsed().as_secs_f64() * 1e3;
            bar.set_length(job.total_steps() as u64);
            let extra = model.config().decoder.channel_codebooks() - 1;
            let prefix = model.config().prefix_positions(prompt.len());
            let window_passes = job
                .plan()
                .iter()
                .map(|w| {
                    (
                        Generation::passes(w.frames + extra, w.prompt),
                        prefix + w.prompt + 1,
                    )
                })
                .collect();
            let steps = job.total_steps();
            // Previews as the server streams them: planned between steps, rendered on a
            // thread of their own while the batch goes on.
            let settings = PreviewSettings::new(frame_rate as usize, DEFAULT_PREVIEW_AFTER_SECONDS);
            let mut previewers = vec![Previewer::new(settings); concurrency];
            let mut first_preview_frames = vec![None; concurrency];
            let (first_audio_ms, played) = std::thread::scope(|scope| {
                let (windows_tx, windows_rx) = std::sync::mpsc::channel::<(usize, PreviewWindow)>();
                let model = &model;
                let renders = scope.spawn(move || {
                    let mut mixers = vec![PreviewMixer::default(); concurrency];
                    let mut first_audio_ms = vec![None; concurrency];
                    // Each job's previews played one after another, one row per channel.
                    let mut played: Vec<Vec<Vec<f32>>> = vec![Vec::new(); concurrency];
                    for (i, window) in windows_rx {
                        let chunk = mixers[i].render(model, window)?;
                        first_audio_ms[i].get_or_insert(t.elapsed().as_secs_f64() * 1e3);
                        played[i].resize(chunk.channels.len(), Vec::new());
                        for (played, samples) in played[i].iter_mut().zip(chunk.channels) {
                            played.extend(samples);
                        }
                    }
                    anyhow::Ok((first_audio_ms, played))
                });
                while !jobs.iter().all(LongGeneration::is_done) {
                    let mut refs: Vec<&mut LongGeneration> = jobs.iter_mut().collect();
                    for result in LongGeneration::step_batch(model, &mut refs, &mut buffers) {
                        result?;
                    }
                    for (i, (job, previewer)) in jobs.iter().zip(&mut previewers).enumerate() {
                        if let Some(window) = previewer.plan(model, job) {
                            first_preview_frames[i].get_or_insert(job.finished_frames());
                            // The render thread only stops on an error, reported below.
                            let _ = windows_tx.send((i, window));
                        }
                    }
                    bar.inc(1);
                }
                drop(windows_tx);
                match renders.join() {
                    Ok(first) => first,
                    Err(_) => anyhow::bail!("the preview thread panicked"),
                }
            })?;
            let stepped_ms = t.elapsed().as_secs_f64() * 1e3;
            bar.set_message("decoding with EnCodec");
            let mut samples = 0;
            let mut finals = Vec::with_capacity(concurrency);
            for job in jobs {
                let audio = model.decode_audio(&job.into_frames())?;
                samples = audio.dim(1)?;
                finals.push(audio);
            }
            device.synchronize()?;
            let total_ms = t.elapsed().as_secs_f64() * 1e3;
            let preview_snr_db = finals
                .into_iter()
                .zip(&played)
                .map(|(audio, played)| {
                    let finale = audio.to_vec2::<f32>()?;
                    Ok(finale
                        .iter()
                        .zip(played)
                        .map(|(want, got)| snr_db(want, got))
                        .fold(f64::INFINITY, f64::min))
                })
                .collect::<anyhow::Result<Vec<f64>>>()?;
            runs.push(Run {
                text_ms,
                loop_ms: stepped_ms - text_ms,
                encodec_ms: total_ms - stepped_ms,
                total_ms,
                audio_s: samples as f64 / model.sample_rate() as f64,
                first_audio_ms: first_audio_ms.into_iter().flatten().collect(),
                first_preview_frames: first_preview_frames.into_iter().flatten().collect(),
                preview_snr_db,
                steps,
                windows: window_passes,
            });
        }
    }
    let peak_rss_bytes = peak_after_steps
        .max(peak_rss_bytes())
        .filter(|_| peak_rss_counted);
    bar.set_message("measuring compute peaks");
    let gemm_gflops = compute_peaks()?;
    bar.set_message("measuring memory bandwidth again");
    bandwidth_probes.push(read_bandwidth_gb_s());
    let bandwidth_gb_s = median(&mut bandwidth_probes.clone()).unwrap_or(f64::NAN);
    bar.finish_and_clear();

    let pick = |f: fn(&Run) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let steps = runs.first().map(|r| r.steps);
    let windows = runs.first().map(|r| r.windows.len());
    let rtf = pick(|r| r.audio_s / (r.total_ms / 1e3));
    let jobs = concurrency as f64;
    let loop_step_ms_mean = pick(|r| r.loop_ms / r.steps as f64);
    let decoder = &model.config().decoder;
    // Every projection a step reads has rows of `hidden` or `ffn_dim` weights; both take the
    // same block format at the published sizes.
    let per_weight = format.bytes_per_weight(decoder.hidden_size, dtype, &device);
    let weight_bytes_per_step = (model.config().weights_read_per_step() as f64 * per_weight) as u64;
    // Mean KV position over the steps the ratio describes; each window starts its cache
    // afresh, its first pass at the position after its prompt.
    let mean_position = match runs.first() {
        Some(run) => {
            let sum: f64 = run
                .windows
                .iter()
                .map(|&(passes, first)| passes as f64 * (first as f64 + (passes - 1) as f64 / 2.0))
                .sum();
            sum / run.steps.max(1) as f64
        }
        None => 2.0 + args.steps as f64 / 2.0,
    };
    let kv_bytes_per_step = (decoder.kv_elements_read_at(1, 2) as f64 * mean_position) as u64
        * kv_dtype.size_in_bytes() as u64
        * concurrency as u64;
    let floor_ms =
        (weight_bytes_per_step + kv_bytes_per_step) as f64 / (bandwidth_gb_s * 1e9) * 1e3;
    let step_ms_median = percentile(&step_ms, 0.5);
    let mut first_audio: Vec<f64> = runs.iter().flat_map(|r| r.first_audio_ms.clone()).collect();
    first_audio.sort_by(f64::total_cmp);
    let threads_env = Threads::current();
    let rows = concurrency as f64 * if GUIDANCE == 1.0 { 1.0 } else { 2.0 };
    let step_gflops =
        2.0 * model.config().weights_read_per_step() as f64 * rows / (step_ms_median * 1e6);
    let peak = match args.dtype {
        Precision::Q8 | Precision::Q4 => gemm_gflops.int8,
        _ => gemm_gflops.f32,
    };
    let (detected, kernels) = son1k_models::kernels::cpu_features();
    Ok(BenchReport {
        schema: "son1k.bench.v1",
        model: args
            .model
            .as_ref()
            .map_or(args.preset.clone(), |d| d.display().to_string()),
        device: args.device.to_string(),
        dtype: args.dtype.to_string(),
        kv_cache: kv_dtype.as_str().into(),
        threads: args.threads.or_else(|| {
            threads_env
                .rayon_num_threads
                .as_deref()
                .and_then(|v| v.parse().ok())
        }),
        threads_env,
        guidance_scale: GUIDANCE,
        concurrency,
        repeat: runs.len(),
        load_ms,
        text_encode_ms: pick(|r| r.text_ms),
        step_ms_median,
        step_ms_p95: percentile(&step_ms, 0.95),
        steps,
        windows,
        loop_step_ms_mean,
        encodec_ms: pick(|r| r.encodec_ms),
        first_audio_ms: pick(|r| r.first_audio_ms.first().copied().unwrap_or(r.total_ms)),
        first_audio_ms_p50: (!first_audio.is_empty()).then(|| percentile(&first_audio, 0.5)),
        first_audio_ms_p95: (!first_audio.is_empty()).then(|| percentile(&first_audio, 0.95)),
        first_preview_after_s: runs
            .iter()
            .flat_map(|r| r.first_preview_frames.iter())
            .max()
            .map(|&frames| frames as f64 / model.config().frame_rate().max(1) as f64),
        preview_snr_db_min: runs
            .iter()
            .flat_map(|r| r.preview_snr_db.iter().copied())
            .reduce(f64::min),
        total_ms: pick(|r| r.total_ms),
        audio_s: pick(|r| r.audio_s),
        rtf,
        aggregate_frames_per_s: rtf.map(|rtf| jobs * rtf * frame_rate),
        aggregate_rtf: rtf.map(|rtf| jobs * rtf),
        peak_rss_bytes,
        weight_bytes_per_step,
        kv_bytes_per_step,
        bandwidth_gb_s,
        bandwidth_probes_gb_s: bandwidth_probes,
        floor_ms,
        floor_ratio: loop_step_ms_mean.unwrap_or(step_ms_median) / floor_ms,
        cpu_features: CpuFeatures { detected, kernels },
        gemm_gflops,
        step_gflops,
        peak_ratio: step_gflops / peak,
    })
}
