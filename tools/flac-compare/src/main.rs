//! Side-by-side comparison of Son1k's own FLAC encoder (`son1k_engine::audio::encode_flac`)
//! with the `flacenc` crate (0.5.1): encode time (median of several runs, interleaved so both
//! see the same machine state), output size, a lossless round trip through symphonia (the
//! engine's decoder) and the STREAMINFO MD5 against an MD5 computed here.
//!
//! Both encoders get the same 16-bit integers: the built-in synth's mastered output, resampled
//! with the engine's resampler and quantised by `son1k_engine::audio::to_i16` (exactly what
//! `encode_flac` does inside). 24-bit is not compared: the engine's encoder writes 16-bit only.
//!
//! `cargo run --release` in tools/flac-compare.

use std::io::Cursor;
use std::time::Instant;

use flacenc::component::BitRepr;
use flacenc::error::Verify;
use md5::{Digest, Md5};
use son1k_engine::audio::flac::BLOCK_SIZE;
use son1k_engine::audio::resample::resample;
use son1k_engine::audio::{encode_flac, to_i16, Audio};
use son1k_models::synth::{SynthJob, SAMPLE_RATE};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Length of each test piece in seconds.
const SECONDS: f64 = 60.0;
/// Timed encodes per encoder and case; the median is reported.
const REPEATS: usize = 7;
/// Bits per sample of both encoders' streams.
const BITS: u32 = 16;

/// One test piece: the audio for the engine's encoder and the same samples as interleaved
/// integers for flacenc and the checks.
struct Case {
    name: &'static str,
    audio: Audio,
    pcm: Vec<i32>,
}

impl Case {
    fn new(name: &'static str, audio: Audio) -> Self {
        let mut pcm = Vec::with_capacity(audio.frames() * audio.channels.len());
        for i in 0..audio.frames() {
            for channel in &audio.channels {
                pcm.push(i32::from(to_i16(channel[i])));
            }
        }
        Self { name, audio, pcm }
    }
}

/// 60 s of lo-fi hip hop mixed to mono at 32 kHz and of rock in stereo at 48 kHz, rendered by
/// the synth at 44.1 kHz and resampled.
fn cases() -> Res<Vec<Case>> {
    let lofi = SynthJob::from_prompt("lofi hip hop with piano at 84 bpm", SECONDS, 11)
        .finish()?
        .0;
    let rock = SynthJob::from_prompt("energetic rock with guitars in E minor", SECONDS, 7)
        .finish()?
        .0;
    let mono: Vec<f32> = lofi[0]
        .iter()
        .zip(&lofi[1])
        .map(|(l, r)| 0.5 * (l + r))
        .collect();
    let stereo = rock
        .iter()
        .map(|c| resample(c, SAMPLE_RATE, 48_000))
        .collect::<Result<Vec<_>, _>>()?;
    let mono = vec![resample(&mono, SAMPLE_RATE, 32_000)?];
    Ok(vec![
        Case::new(
            "32 kHz mono",
            Audio {
                sample_rate: 32_000,
                channels: mono,
            },
        ),
        Case::new(
            "48 kHz stereo",
            Audio {
                sample_rate: 48_000,
                channels: stereo,
            },
        ),
    ])
}

/// Encodes with flacenc's default configuration (fixed 4096-sample blocks; constant, fixed
/// and LPC up to order 10; all stereo modes), single- or multi-threaded.
///
/// `patch` applies the fix of flacenc PR #255 (merged after 0.5.1, not released): when the
/// last frame is short, 0.5.1 writes it into STREAMINFO's minimum block size, and symphonia
/// then takes the stream for a variable-blocksize one and cannot decode it (flacenc #242).
fn flacenc_encode(case: &Case, threads: bool, patch: bool) -> Vec<u8> {
    let mut config = flacenc::config::Encoder::default();
    config.multithread = threads;
    let config = config.into_verified().expect("flacenc config");
    let source = flacenc::source::MemSource::from_samples(
        &case.pcm,
        case.audio.channels.len(),
        BITS as usize,
        case.audio.sample_rate as usize,
    );
    let mut stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .expect("flacenc encode");
    if patch && stream.frame_count() > 0 {
        let max = stream.stream_info().max_block_size();
        stream
            .stream_info_mut()
            .set_block_sizes(max, max)
            .expect("flacenc block sizes");
    }
    let mut sink = flacenc::bitsink::ByteSink::with_capacity(stream.count_bits());
    stream.write(&mut sink).expect("flacenc write");
    sink.into_inner()
}

/// Decodes a FLAC file with symphonia, MD5 check on: the interleaved samples (as integers of
/// `BITS` bits) and whether symphonia found the STREAMINFO MD5 right.
fn decode(bytes: &[u8]) -> Res<(Vec<i32>, Option<bool>)> {
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut format = symphonia::default::get_probe().probe(
        Hint::new().with_extension("flac"),
        source,
        FormatOptions::default(),
        MetadataOptions::default(),
    )?;
    let track = format
        .first_track_known_codec(TrackType::Audio)
        .ok_or("no audio track")?;
    let id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or("no parameters")?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default().verify(true))?;
    let mut samples = Vec::new();
    let mut packet_samples: Vec<i32> = Vec::new();
    while let Some(packet) = format.next_packet()? {
        if packet.track_id != id {
            continue;
        }
        decoder
            .decode(&packet)?
            .copy_to_vec_interleaved(&mut packet_samples);
        // symphonia's FLAC decoder left-aligns samples in an i32.
        samples.extend(packet_samples.iter().map(|&s| s >> (32 - BITS)));
    }
    Ok((samples, decoder.finalize().verify_ok))
}

/// STREAMINFO's minimum and maximum block sizes and its MD5.
fn stream_info(bytes: &[u8]) -> (u16, u16, [u8; 16]) {
    assert_eq!(&bytes[..4], b"fLaC");
    assert_eq!(bytes[4] & 0x7F, 0, "the first metadata block is STREAMINFO");
    assert_eq!(&bytes[5..8], &[0, 0, 34], "STREAMINFO has 34 bytes");
    let info = &bytes[8..42];
    let min = u16::from_be_bytes([info[0], info[1]]);
    let max = u16::from_be_bytes([info[2], info[3]]);
    let md5: [u8; 16] = info[18..34].try_into().unwrap();
    (min, max, md5)
}

/// The MD5 FLAC specifies: samples interleaved, little-endian, ceil(bits / 8) bytes each.
fn md5_of(pcm: &[i32]) -> [u8; 16] {
    let width = BITS.div_ceil(8) as usize;
    let mut bytes = Vec::with_capacity(pcm.len() * width);
    for &s in pcm {
        bytes.extend_from_slice(&s.to_le_bytes()[..width]);
    }
    Md5::digest(&bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A named encoder: the label of its row and the function that encodes a case.
type Encoder = (&'static str, fn(&Case) -> Vec<u8>);

/// Times, checks and prints one case; returns whether every check passed.
fn compare(case: &Case, encoders: &[Encoder]) -> bool {
    let frames = case.audio.frames();
    let seconds = case.audio.duration_s();
    let md5 = md5_of(&case.pcm);
    println!(
        "\n{}: {frames} frames ({seconds:.2} s, {frames} % {BLOCK_SIZE} = {}), {} channel(s), \
         MD5 of the samples {}",
        case.name,
        frames % BLOCK_SIZE,
        case.audio.channels.len(),
        hex(&md5)
    );
    let mut times = vec![Vec::new(); encoders.len()];
    let mut outputs = vec![Vec::new(); encoders.len()];
    for _ in 0..REPEATS {
        for (i, (_, encode)) in encoders.iter().enumerate() {
            let start = Instant::now();
            outputs[i] = encode(case);
            times[i].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let pcm_bytes = case.pcm.len() * BITS.div_ceil(8) as usize;
    println!(
        "{:<20} {:>9} {:>7} {:>10} {:>6} {:>9} {:>9} {:>10} {:>8} {:>9} {:>8}",
        "encoder",
        "median ms",
        "x RT",
        "bytes",
        "% PCM",
        "size/ours",
        "time/ours",
        "blocks",
        "lossless",
        "MD5=indep",
        "sym MD5"
    );
    let mut ok = true;
    for (i, (name, _)) in encoders.iter().enumerate() {
        let bytes = &outputs[i];
        let (min, max, header_md5) = stream_info(bytes);
        let (lossless, verified) = match decode(bytes) {
            Ok((samples, verified)) => (samples == case.pcm, verified == Some(true)),
            Err(e) => {
                println!("  {name}: symphonia could not decode it: {e}");
                (false, false)
            }
        };
        let md5_ok = header_md5 == md5;
        ok &= lossless && md5_ok && verified;
        println!(
            "{name:<20} {:>9.1} {:>7.0} {:>10} {:>5.1}% {:>9.3} {:>9.2} {:>10} {:>8} {:>9} {:>8}",
            medians[i],
            seconds * 1e3 / medians[i],
            bytes.len(),
            100.0 * bytes.len() as f64 / pcm_bytes as f64,
            bytes.len() as f64 / outputs[0].len() as f64,
            medians[i] / medians[0],
            format!("{min}/{max}"),
            lossless,
            md5_ok,
            verified
        );
    }
    // What flacenc 0.5.1 writes without the patch, when the last frame is short.
    if !frames.is_multiple_of(BLOCK_SIZE) {
        let raw = flacenc_encode(case, false, false);
        let (min, max, _) = stream_info(&raw);
        let outcome = match decode(&raw) {
            Ok((samples, verified)) => format!(
                "decodes {} of {} samples, lossless {}, MD5 verified {:?}",
                samples.len(),
                case.pcm.len(),
                samples == case.pcm,
                verified
            ),
            Err(e) => format!("symphonia fails: {e}"),
        };
        println!("unpatched flacenc 0.5.1: STREAMINFO blocks {min}/{max}; {outcome}");
    }
    ok
}

fn main() -> Res<()> {
    println!("rendering {SECONDS} s pieces with the built-in synth...");
    let cases = cases()?;
    let encoders: [Encoder; 3] = [
        ("son1k (ours)", |c: &Case| {
            encode_flac(&c.audio).expect("son1k encode")
        }),
        ("flacenc 1 thread", |c: &Case| {
            flacenc_encode(c, false, true)
        }),
        ("flacenc par", |c: &Case| flacenc_encode(c, true, true)),
    ];
    println!(
        "{REPEATS} encodes each, interleaved; x RT = audio seconds per encode second; \
         size/ours and time/ours relative to son1k; blocks = STREAMINFO min/max block size; \
         lossless = symphonia decodes the exact input integers; MD5=indep = STREAMINFO MD5 \
         equals the MD5 computed here; sym MD5 = symphonia's own MD5 check passed. flacenc \
         rows carry the STREAMINFO patch of flacenc PR #255 (see below)."
    );
    let mut all_ok = true;
    for case in &cases {
        all_ok &= compare(case, &encoders);
    }
    assert!(
        all_ok,
        "a round trip or MD5 check failed (see the tables above)"
    );
    println!("\nall round trips are bit-identical and every STREAMINFO MD5 is right");
    Ok(())
}
