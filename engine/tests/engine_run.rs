//! The engine's generation loop: progress after every step, monotonic, in stage order;
//! audio chunks that tile the output while a job runs (MusicGen's sounding like its final
//! audio); cancellation within one step on every model.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use son1k_engine::musicgen::MusicGenModel;
use son1k_engine::synth::SynthModel;
use son1k_engine::{
    generate, DeviceChoice, EngineError, GenerateRequest, KvCache, Length, Limits, ModelKind,
    MusicModel, Precision, Session, Stage, Update,
};
use son1k_models::musicgen::snr_db;

fn musicgen() -> MusicGenModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/musicgen-tiny-mono");
    MusicGenModel::load(&dir, DeviceChoice::Cpu, Precision::F32, KvCache::Compute).unwrap()
}

fn request(model: &dyn MusicModel, seconds: f64) -> son1k_engine::ValidatedRequest {
    GenerateRequest {
        seed: Some(1),
        ..GenerateRequest::new("rock song", Length::Seconds(seconds))
    }
    .validate(&Limits::default(), model.info())
    .unwrap()
}

#[test]
fn progress_is_monotonic_and_synth_chunks_tile_the_output() {
    let models: [Box<dyn MusicModel>; 2] = [Box::new(SynthModel::default()), Box::new(musicgen())];
    for model in &models {
        let request = request(model.as_ref(), 6.0);
        let mut updates = Vec::new();
        let output = generate(
            model.as_ref(),
            &request,
            &AtomicBool::new(false),
            &mut |u| updates.push(u),
        )
        .unwrap();
        let progress: Vec<_> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Progress(p) => Some(*p),
                Update::Chunk(_) => None,
            })
            .collect();
        let id = &model.info().id;
        assert_eq!(
            progress.first().map(|p| p.stage),
            Some(Stage::Encoding),
            "{id}"
        );
        assert_eq!(
            progress.last().map(|p| p.stage),
            Some(Stage::Decoding),
            "{id}"
        );
        assert!(
            progress
                .windows(2)
                .all(|w| w[0].steps_done <= w[1].steps_done),
            "{id}"
        );
        let total = progress[0].steps_total;
        let generating = progress
            .iter()
            .filter(|p| p.stage == Stage::Generating)
            .count();
        assert_eq!(generating, total, "{id}: one report per step");
        let chunks: Vec<_> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Chunk(c) => Some(c),
                Update::Progress(_) => None,
            })
            .collect();
        assert!(model.info().streams_audio, "{id}");
        assert!(chunks.len() > 1, "{id} streams while it runs");
        let mut next = 0;
        let mut played = vec![Vec::new(); output.audio.channels.len()];
        for chunk in &chunks {
            assert_eq!(chunk.start_frame, next, "{id}: chunks are contiguous");
            next += chunk.audio.frames();
            for (played, samples) in played.iter_mut().zip(&chunk.audio.channels) {
                played.extend_from_slice(samples);
            }
        }
        assert_eq!(
            next,
            output.audio.frames(),
            "{id}: chunks cover the whole piece"
        );
        if model.info().kind == ModelKind::MusicGen {
            // The previews sound like the final audio (the synth's final audio is mastered
            // after its previews, so only MusicGen's can be compared).
            for (want, got) in output.audio.channels.iter().zip(&played) {
                assert!(
                    snr_db(want, got) >= 30.0,
                    "{id}: {:.1} dB",
                    snr_db(want, got)
                );
            }
            // The first comes once a second of frames is finished: a frame is finished
            // `extra_steps` passes after it is started.
            let info = model.info();
            let steps_before_first = updates
                .iter()
                .take_while(|u| matches!(u, Update::Progress(_)))
                .filter(|u| matches!(u, Update::Progress(p) if p.stage == Stage::Generating))
                .count();
            assert_eq!(
                steps_before_first,
                info.frame_rate + info.extra_steps,
                "{id}"
            );
        }
    }
}

#[test]
fn cancel_stops_every_model_within_one_step() {
    let models: [Box<dyn MusicModel>; 2] = [Box::new(SynthModel::default()), Box::new(musicgen())];
    for model in &models {
        let request = request(model.as_ref(), 8.0);
        let cancel = AtomicBool::new(false);
        let mut last_step = 0;
        let result = generate(model.as_ref(), &request, &cancel, &mut |u| {
            if let Update::Progress(p) = u {
                last_step = p.steps_done;
                if p.steps_done == 2 {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        });
        assert!(
            matches!(result, Err(EngineError::Cancelled)),
            "{}",
            model.info().id
        );
        assert_eq!(
            last_step,
            2,
            "{}: no step ran after the cancel",
            model.info().id
        );
    }
}

fn melody_model() -> MusicGenModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/musicgen-tiny-melody");
    MusicGenModel::load(&dir, DeviceChoice::Cpu, Precision::F32, KvCache::Compute).unwrap()
}

/// The progress reports of a run, checked to be one monotonic count that ends at its total.
fn run_to_end(
    model: &dyn MusicModel,
    request: &son1k_engine::ValidatedRequest,
) -> (son1k_engine::GenerationOutput, usize) {
    let mut steps = Vec::new();
    let output = generate(model, request, &AtomicBool::new(false), &mut |u| {
        if let Update::Progress(p) = u {
            steps.push((p.steps_done, p.steps_total));
        }
    })
    .unwrap();
    let total = steps[0].1;
    assert!(steps.iter().all(|&(_, t)| t == total), "one total");
    assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0), "monotonic");
    assert_eq!(steps.last().map(|s| s.0), Some(total));
    (output, total)
}

/// 70 s at 50 frames/s past a 30 s window, stride 18 s: windows of 1500 frames at 0, 900
/// and 1800, then 800 at 2700, each after the first prompted with 600 frames of the one
/// before (fed with the start column in 10 passes of at most 64 columns), every one with
/// its 3 delay columns: 3539 passes in one progress count, and exactly 70 s of audio.
#[test]
fn seventy_seconds_run_through_four_windows_to_the_exact_length() {
    let model = musicgen();
    let request = request(&model, 70.0);
    let (output, total) = run_to_end(&model, &request);
    assert_eq!(total, 1503 + 3 * 9 + (903 + 903 + 203));
    assert_eq!(output.audio.channels[0].len(), 70 * 32_000);
    // A cancel in the third window (steps 2416 to 3327) stops it there.
    let cancel = AtomicBool::new(false);
    let mut last = 0;
    let result = generate(&model, &request, &cancel, &mut |u| {
        if let Update::Progress(p) = u {
            last = p.steps_done;
            if p.steps_done == 2500 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    });
    assert!(matches!(result, Err(EngineError::Cancelled)));
    assert_eq!(last, 2500);
}

/// A melody cover of a 40 s song for 70 s runs in the same windows, with one monotonic
/// progress, to exactly 70 s (which part of the song each window reads is checked in
/// `long_form`'s tests).
#[test]
fn a_melody_cover_of_a_song_past_thirty_seconds_runs_in_windows() {
    let model = melody_model();
    let rate = 32_000;
    let mono: Vec<f32> = (0..40 * rate)
        .map(|i| {
            let note = [220.0, 247.0, 262.0, 294.0][(i / rate) % 4];
            0.5 * (2.0 * std::f32::consts::PI * note * i as f32 / rate as f32).sin()
        })
        .collect();
    let song = son1k_engine::cover::Song {
        sample_rate: rate as u32,
        mono,
        digest: 0,
    };
    let request = GenerateRequest {
        seed: Some(2),
        cover: Some(son1k_engine::CoverRequest {
            mode: Some(son1k_engine::CoverMode::Melody),
            ..son1k_engine::CoverRequest::new(std::sync::Arc::new(song))
        }),
        ..GenerateRequest::new("jazz", Length::Seconds(70.0))
    }
    .validate(&Limits::default(), model.info())
    .unwrap();
    let (output, total) = run_to_end(&model, &request);
    assert_eq!(total, 1503 + 3 * 9 + (903 + 903 + 203));
    assert_eq!(output.audio.channels[0].len(), 70 * 32_000);
}

/// Jobs with different prompts, lengths, guidance and samplers, joining a running batch at
/// different steps, one cancelled (dropped) halfway: each job's audio is bit for bit what
/// it makes alone, through the engine's batched step.
#[test]
fn each_job_gives_the_same_audio_alone_or_in_a_batch() {
    let model = musicgen();
    assert!(model.batches(), "MusicGen on the CPU batches");
    let job = |prompt: &str, seconds: f64, top_k: usize, guidance: f32, seed: u64| {
        GenerateRequest {
            top_k: Some(top_k),
            guidance_scale: Some(guidance),
            seed: Some(seed),
            ..GenerateRequest::new(prompt, Length::Seconds(seconds))
        }
        .validate(&Limits::default(), model.info())
        .unwrap()
    };
    // (request, the step of the batch it joins at, the step it is dropped at)
    let jobs = [
        (job("rock song", 0.6, 1, 3.0, 1), 0, None),
        (job("soft piano ballad", 0.3, 50, 1.0, 7), 3, None),
        (
            job("fast techno beat with a loud kick", 0.5, 250, 5.0, 9),
            5,
            None,
        ),
        (job("jazz", 0.6, 1, 3.0, 2), 0, Some(6)),
    ];
    let solo: Vec<Vec<Vec<f32>>> = jobs[..3]
        .iter()
        .map(|(request, _, _)| run_to_end(&model, request).0.audio.channels)
        .collect();

    let mut active: Vec<(usize, Box<dyn Session>)> = Vec::new();
    let mut finished: Vec<(usize, Box<dyn Session>)> = Vec::new();
    let mut step = 0;
    while finished.len() < 3 {
        for (n, (request, joins, _)) in jobs.iter().enumerate() {
            if *joins == step {
                active.push((n, model.start(request).unwrap()));
            }
        }
        active.retain(|(n, _)| jobs[*n].2 != Some(step));
        let mut sessions: Vec<&mut dyn Session> =
            active.iter_mut().map(|(_, s)| s.as_mut()).collect();
        for result in model.step_batch(&mut sessions) {
            result.unwrap();
        }
        let (done, running) = active
            .into_iter()
            .partition(|(_, s)| s.steps_done() == s.total_steps());
        finished.extend::<Vec<_>>(done);
        active = running;
        step += 1;
    }
    for (n, session) in finished {
        let audio = session.finish().unwrap();
        assert_eq!(audio.channels, solo[n], "job {n}");
    }
}
