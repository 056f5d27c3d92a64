//! The engine's generation loop: progress after every step, monotonic, in stage order;
//! audio chunks that tile the output while the synth renders; cancellation within one step
//! on every model.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use son1k_engine::musicgen::MusicGenModel;
use son1k_engine::synth::SynthModel;
use son1k_engine::{
    generate, DeviceChoice, EngineError, GenerateRequest, KvCache, Length, Limits, MusicModel,
    Precision, Stage, Update,
};

fn musicgen() -> MusicGenModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny-mono");
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
        if model.info().id.contains("synth") {
            assert!(chunks.len() > 1, "the synth streams while it renders");
            let mut next = 0;
            for chunk in &chunks {
                assert_eq!(chunk.start_frame, next, "chunks are contiguous");
                next += chunk.audio.frames();
            }
            assert_eq!(next, output.audio.frames(), "chunks cover the whole piece");
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
