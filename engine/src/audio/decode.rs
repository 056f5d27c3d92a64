//! Decoding uploaded audio (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A) with symphonia, packet by
//! packet, under limits on size, length, decoded samples, sample rate and channels. A cover
//! takes the song mixed to mono and resampled as each packet arrives ([`decode_mono`]), so
//! memory follows the output, never what the file expands to. Samples are clamped to
//! [-1, 1] (non-finite ones are 0); symphonia drops the encoder delay and padding a
//! container marks (a LAME info frame, say). Garbage input gives an error, never a panic.

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};

use super::resample::{ResampleError, StreamResampler};
use super::Audio;

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Peak level below which decoded audio counts as silent (-60 dBFS).
pub const SILENCE_PEAK: f32 = 0.001;
/// Consecutive undecodable packets after which a stream is given up.
const MAX_BAD_PACKETS: usize = 64;

/// What an upload may be. [`decode_mono`] holds `max_seconds` of mono output at its rate;
/// [`decode_audio`] holds every channel at the file's rate.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeLimits {
    /// Longest accepted audio in seconds (default 600).
    pub max_seconds: f64,
    /// Largest accepted file in bytes (default 50 MiB).
    pub max_bytes: usize,
    /// Most samples, all channels counted, the file may decode to (default 120 M: 600 s of
    /// 96 kHz stereo). It bounds the work an upload costs whatever its bytes claim.
    pub max_samples: u64,
    /// Lowest accepted sample rate in Hz (default 8 kHz).
    pub min_sample_rate: u32,
    /// Highest accepted sample rate in Hz (default 192 kHz).
    pub max_sample_rate: u32,
    /// Most accepted channels (default 8).
    pub max_channels: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_seconds: 600.0,
            max_bytes: 50 * 1024 * 1024,
            max_samples: 120_000_000,
            min_sample_rate: 8_000,
            max_sample_rate: 192_000,
            max_channels: 8,
        }
    }
}

/// Why an upload could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a container/codec symphonia recognises (or no audio track in it).
    #[error("the file is not audio in a supported format (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A)")]
    NotAudio,
    /// A recognised file without a single decodable sample.
    #[error("the file contains no audio samples")]
    Empty,
    /// Peak below -60 dBFS.
    #[error("the audio is silent (its peak is below -60 dBFS)")]
    Silent,
    /// Longer than [`DecodeLimits::max_seconds`] (`seconds` is a lower bound when the
    /// container does not state the length).
    #[error("the audio is too long: {seconds:.0} s (the limit is {limit:.0} s)")]
    TooLong {
        /// Length of the audio, or how much was decoded before giving up.
        seconds: f64,
        /// The limit.
        limit: f64,
    },
    /// More decoded samples than [`DecodeLimits::max_samples`] (`samples` is what the
    /// container declares, or how many were decoded before giving up).
    #[error(
        "the audio decodes to too many samples: {samples} or more (channels x rate x length; \
         the limit is {limit})"
    )]
    TooManySamples {
        /// Samples declared or decoded.
        samples: u64,
        /// The limit.
        limit: u64,
    },
    /// Larger than [`DecodeLimits::max_bytes`].
    #[error("the file is too large: {bytes} bytes (the limit is {limit} bytes)")]
    TooLarge {
        /// Size of the file.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A sample rate outside the limits.
    #[error("unsupported sample rate {rate} Hz (supported: {min} to {max} Hz)")]
    UnsupportedSampleRate {
        /// The file's rate.
        rate: u32,
        /// Lowest rate accepted.
        min: u32,
        /// Highest rate accepted.
        max: u32,
    },
    /// More channels than the limit.
    #[error("the audio has {channels} channels; at most {max} are supported")]
    UnsupportedChannels {
        /// The file's channel count.
        channels: usize,
        /// The limit.
        max: usize,
    },
    /// The resampler refused the conversion (what it said goes to the log).
    #[error(transparent)]
    Resample(#[from] ResampleError),
    /// The caller stopped the decode (its request went away).
    #[error("the decode was abandoned")]
    Abandoned,
}

/// Checks a sample rate against the limits.
fn check_rate(rate: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let (min, max) = (limits.min_sample_rate, limits.max_sample_rate);
    if (min..=max).contains(&rate) {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedSampleRate { rate, min, max })
    }
}

/// Checks a channel count against the limits.
fn check_channels(channels: usize, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if channels == 0 || channels > limits.max_channels {
        Err(DecodeError::UnsupportedChannels {
            channels,
            max: limits.max_channels,
        })
    } else {
        Ok(())
    }
}

/// A format reader, a decoder for its chosen audio track, and that track's id.
type Opened<'a> = (Box<dyn FormatReader + 'a>, Box<dyn AudioDecoder>, u32);

/// Opens the container and a decoder for its first decodable audio track.
fn open<'a>(bytes: &'a [u8], name_hint: Option<&str>) -> Result<Opened<'a>, DecodeError> {
    let mut hint = Hint::new();
    if let Some(ext) = name_hint
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
    {
        hint.with_extension(&ext);
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let format = symphonia::default::get_probe()
        .probe(
            &hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|_| DecodeError::NotAudio)?;
    let track = format
        .first_track_known_codec(TrackType::Audio)
        .ok_or(DecodeError::NotAudio)?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(DecodeError::NotAudio)?;
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|_| DecodeError::NotAudio)?;
    let id = track.id;
    Ok((format, decoder, id))
}

/// Decodes an uploaded file to planar `f32` at its own rate. `name_hint` (a file name such
/// as `song.mp3`) helps pick the format; content decides. A stream that breaks off part way
/// keeps what was decoded before the break.
pub fn decode_audio(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Audio, DecodeError> {
    let mut channels: Vec<Vec<f32>> = Vec::new();
    let format = decode_packets(bytes, name_hint, limits, |planes, _| {
        channels.resize_with(planes.len(), Vec::new);
        for (channel, plane) in channels.iter_mut().zip(planes) {
            channel.extend_from_slice(plane);
        }
        Ok(())
    })?;
    Ok(Audio {
        sample_rate: format.rate,
        channels,
    })
}

/// Decodes an uploaded file to mono at `rate` Hz, mixing and resampling each packet as it
/// is decoded: memory holds the mono output and one packet, whatever the file's rate and
/// channels. Setting `stop` abandons the decode at the next packet.
pub fn decode_mono(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &DecodeLimits,
    rate: u32,
    stop: &AtomicBool,
) -> Result<Vec<f32>, DecodeError> {
    let mut resampler: Option<StreamResampler> = None;
    let mut mono = Vec::new();
    decode_packets(bytes, name_hint, limits, |planes, from| {
        if stop.load(Ordering::Relaxed) {
            return Err(DecodeError::Abandoned);
        }
        let resampler = match &mut resampler {
            Some(resampler) => resampler,
            None => resampler.insert(StreamResampler::new(from, rate)?),
        };
        let scale = 1.0 / planes.len() as f32;
        mono.clear();
        mono.resize(planes.first().map_or(0, Vec::len), 0.0);
        for plane in planes {
            for (sum, &sample) in mono.iter_mut().zip(plane) {
                *sum += sample * scale;
            }
        }
        Ok(resampler.push(&mono)?)
    })?;
    match resampler {
        Some(resampler) => Ok(resampler.finish()?),
        None => Err(DecodeError::Empty),
    }
}

/// Takes each decoded packet's planes (clamped) and their sample rate.
type PacketSink<'a> = dyn FnMut(&[Vec<f32>], u32) -> Result<(), DecodeError> + 'a;

/// What the packets were.
struct PacketFormat {
    /// Their sample rate.
    rate: u32,
}

/// Checks the size, then runs [`decode_within_limits`]. The demuxers and decoders are fuzzed
/// upstream; should one still panic on hostile input, the file is reported undecodable
/// instead of taking the caller down.
fn decode_packets(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &DecodeLimits,
    mut sink: impl FnMut(&[Vec<f32>], u32) -> Result<(), DecodeError>,
) -> Result<PacketFormat, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_within_limits(bytes, name_hint, limits, &mut sink)
    }))
    .unwrap_or(Err(DecodeError::NotAudio))
}

/// Checks what the container declares (rate, channels, length, samples), then hands each
/// decoded packet's planes, clamped, to `sink`, counting length and samples as it goes.
/// Fails on silence (judged on every channel's peak) and on a stream without samples.
fn decode_within_limits(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &DecodeLimits,
    sink: &mut PacketSink<'_>,
) -> Result<PacketFormat, DecodeError> {
    let (mut format, mut decoder, track_id) = open(bytes, name_hint)?;
    if let Some(track) = format.tracks().iter().find(|t| t.id == track_id) {
        let params = track.codec_params.as_ref().and_then(|p| p.audio());
        let channels = params.and_then(|p| p.channels.as_ref()).map(|c| c.count());
        if let Some(channels) = channels {
            check_channels(channels, limits)?;
        }
        if let Some(rate) = params.and_then(|p| p.sample_rate) {
            check_rate(rate, limits)?;
            if let Some(frames) = track.num_frames {
                check_length(frames, rate, limits)?;
                check_samples(frames.saturating_mul(channels.unwrap_or(1) as u64), limits)?;
            }
        }
    }
    let mut rate = 0u32;
    let mut channels = 0usize;
    let (mut frames, mut peak) = (0u64, 0.0f32);
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut bad_packets = 0;
    // Stops at the end of the stream, a truncated file, or a chained stream we do not follow.
    while let Ok(Some(packet)) = format.next_packet() {
        if packet.track_id != track_id {
            continue;
        }
        let buffer = match decoder.decode(&packet) {
            Ok(buffer) => buffer,
            Err(SymphoniaError::DecodeError(_) | SymphoniaError::IoError(_)) => {
                bad_packets += 1;
                if bad_packets > MAX_BAD_PACKETS {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        bad_packets = 0;
        let spec = buffer.spec();
        if frames == 0 && rate == 0 {
            rate = spec.rate();
            channels = buffer.num_planes();
            check_rate(rate, limits)?;
            check_channels(channels, limits)?;
        }
        if spec.rate() != rate || buffer.num_planes() != channels {
            // A mid-stream format change: keep what we have.
            break;
        }
        buffer.copy_to_vecs_planar(&mut planes);
        let packet_frames = planes.first().map_or(0, Vec::len) as u64;
        if packet_frames == 0 {
            continue;
        }
        frames += packet_frames;
        check_length(frames, rate, limits)?;
        check_samples(frames.saturating_mul(channels as u64), limits)?;
        for plane in &mut planes {
            for sample in plane.iter_mut() {
                *sample = if sample.is_finite() {
                    sample.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
                peak = peak.max(sample.abs());
            }
        }
        sink(&planes, rate)?;
    }
    if frames == 0 {
        return Err(DecodeError::Empty);
    }
    if peak < SILENCE_PEAK {
        return Err(DecodeError::Silent);
    }
    Ok(PacketFormat { rate })
}

/// Refuses audio longer than the limit (`frames` declared, or decoded so far).
fn check_length(frames: u64, rate: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let seconds = frames as f64 / f64::from(rate.max(1));
    if seconds > limits.max_seconds {
        return Err(DecodeError::TooLong {
            seconds,
            limit: limits.max_seconds,
        });
    }
    Ok(())
}

/// Refuses more samples than the limit (declared, or decoded so far).
fn check_samples(samples: u64, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if samples > limits.max_samples {
        return Err(DecodeError::TooManySamples {
            samples,
            limit: limits.max_samples,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit WAV file of the given channels, built in memory.
    fn wav(rate: u32, channels: &[Vec<f32>]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: channels.len() as u16,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for i in 0..channels[0].len() {
            for c in channels {
                writer.write_sample((c[i] * 32767.0) as i16).unwrap();
            }
        }
        writer.finalize().unwrap();
        cursor.into_inner()
    }

    fn sine(hz: f32, rate: u32, seconds: f32, amp: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| amp * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Deterministic pseudo-random bytes.
    fn noise_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn wav_round_trips() {
        let left = sine(440.0, 22_050, 1.0, 0.5);
        let right = sine(220.0, 22_050, 1.0, 0.25);
        let audio = decode_audio(
            &wav(22_050, &[left.clone(), right]),
            Some("x.wav"),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(audio.sample_rate, 22_050);
        assert_eq!(audio.channels.len(), 2);
        assert_eq!(audio.frames(), left.len());
        assert!(audio.channels[0]
            .iter()
            .zip(&left)
            .all(|(a, b)| (a - b).abs() < 1e-3));
        assert!((audio.duration_s() - 1.0).abs() < 1e-3);
        // The same file as mono, mixed and resampled packet by packet.
        let mono = decode_mono(
            &wav(22_050, &[left.clone(), sine(220.0, 22_050, 1.0, 0.25)]),
            Some("x.wav"),
            &DecodeLimits::default(),
            22_050,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(mono.len(), left.len());
        assert!((mono[100] - 0.5 * (audio.channels[0][100] + audio.channels[1][100])).abs() < 1e-6);
    }

    #[test]
    fn limits_and_bad_input_give_clear_errors() {
        let limits = DecodeLimits::default();
        let fail = |bytes: &[u8], limits: &DecodeLimits| decode_audio(bytes, None, limits).err();
        let err = fail(b"definitely not audio", &limits).unwrap();
        assert_eq!(err, DecodeError::NotAudio);
        assert!(err.to_string().contains("WAV, FLAC, MP3"), "{err}");
        assert_eq!(fail(&[], &limits), Some(DecodeError::NotAudio));
        let silent = wav(16_000, &[vec![0.0; 16_000]]);
        assert_eq!(fail(&silent, &limits), Some(DecodeError::Silent));
        let tone = wav(16_000, &[sine(300.0, 16_000, 3.0, 0.5)]);
        let mut short = limits.clone();
        short.max_seconds = 2.0;
        let err = fail(&tone, &short).unwrap().to_string();
        assert_eq!(err, "the audio is too long: 3 s (the limit is 2 s)");
        let mut small = limits.clone();
        small.max_bytes = 1000;
        let err = fail(&tone, &small).unwrap();
        assert!(
            matches!(err, DecodeError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
        let low = wav(4_000, &[sine(300.0, 4_000, 1.0, 0.5)]);
        let err = fail(&low, &limits).unwrap().to_string();
        assert_eq!(
            err,
            "unsupported sample rate 4000 Hz (supported: 8000 to 192000 Hz)"
        );
        let mut mono_only = limits;
        mono_only.max_channels = 1;
        let stereo = wav(16_000, &[sine(300.0, 16_000, 0.5, 0.5), vec![0.1; 8_000]]);
        let err = fail(&stereo, &mono_only).unwrap().to_string();
        assert_eq!(err, "the audio has 2 channels; at most 1 are supported");
    }

    #[test]
    fn garbage_and_truncated_files_never_panic() {
        let limits = DecodeLimits::default();
        for seed in 0..40 {
            let bytes = noise_bytes(200 + 997 * seed as usize, seed);
            for hint in [
                None,
                Some("a.mp3"),
                Some("a.wav"),
                Some("a.flac"),
                Some("a.ogg"),
                Some("a.m4a"),
            ] {
                assert_eq!(
                    decode_audio(&bytes, hint, &limits),
                    Err(DecodeError::NotAudio),
                    "{seed} {hint:?}"
                );
            }
        }
        // Valid-looking headers followed by noise exercise the demuxers and decoders.
        let mut mp3 = Vec::new();
        for frame in 0..40 {
            mp3.extend([0xFF, 0xFB, 0x90, 0x64]);
            mp3.extend(noise_bytes(413, frame));
        }
        let heads: [&[u8]; 6] = [
            b"RIFF\x24\x08\0\0WAVEfmt ",
            b"fLaC",
            b"OggS\0\x02",
            b"ID3\x03\0\0\0\0\0\0",
            b"\0\0\0\x20ftypM4A ",
            &mp3,
        ];
        for (i, head) in heads.iter().enumerate() {
            let mut bytes = head.to_vec();
            bytes.extend(noise_bytes(5000, i as u64));
            let _ = decode_audio(&bytes, None, &limits);
        }
        let file = wav(16_000, &[sine(300.0, 16_000, 1.0, 0.5)]);
        for cut in [0, 4, 12, 40, 43, 44, 45, 100, 1001, file.len() / 2] {
            match decode_audio(&file[..cut], Some("a.wav"), &limits) {
                Ok(audio) => assert!(audio.frames() <= 16_000),
                Err(e) => assert!(
                    matches!(e, DecodeError::NotAudio | DecodeError::Empty),
                    "{cut}: {e}"
                ),
            }
        }
        let mut corrupted = file.clone();
        for (i, b) in noise_bytes(2000, 7).into_iter().enumerate() {
            corrupted[44 + i * 7] = b;
        }
        let _ = decode_audio(&corrupted, None, &limits);
    }

    /// A stop flag that is never set.
    fn go() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn a_set_stop_flag_abandons_the_decode() {
        let tone = wav(16_000, &[sine(300.0, 16_000, 1.0, 0.5)]);
        let stopped = decode_mono(
            &tone,
            None,
            &DecodeLimits::default(),
            16_000,
            &AtomicBool::new(true),
        );
        assert_eq!(stopped, Err(DecodeError::Abandoned));
    }

    /// A 32-bit float WAV of one channel, built in memory.
    fn float_wav(rate: u32, samples: &[f32]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for &s in samples {
            writer.write_sample(s).unwrap();
        }
        writer.finalize().unwrap();
        cursor.into_inner()
    }

    #[test]
    fn samples_are_clamped_so_huge_floats_resample_without_a_panic() {
        let hot: Vec<f32> = (0..44_100)
            .map(|i| match i % 4 {
                0 => 3e38,
                1 => -3e38,
                2 => f32::INFINITY,
                _ => f32::NAN,
            })
            .collect();
        let limits = DecodeLimits::default();
        let audio = decode_audio(&float_wav(44_100, &hot), None, &limits).unwrap();
        assert_eq!(&audio.channels[0][..4], &[1.0, -1.0, 0.0, 0.0]);
        let mono = decode_mono(&float_wav(44_100, &hot), None, &limits, 22_050, &go()).unwrap();
        assert_eq!(mono.len(), 22_050);
        assert!(mono.iter().all(|s| s.is_finite() && s.abs() <= 2.0));
    }

    #[test]
    fn the_sample_cap_is_checked_against_the_declared_length_and_the_running_count() {
        let tone = wav(
            16_000,
            &[sine(300.0, 16_000, 1.0, 0.5), sine(200.0, 16_000, 1.0, 0.5)],
        );
        let capped = DecodeLimits {
            max_samples: 20_000,
            ..DecodeLimits::default()
        };
        // The WAV header declares 16,000 frames of 2 channels.
        let err = decode_mono(&tone, None, &capped, 16_000, &go()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManySamples {
                samples: 32_000,
                limit: 20_000
            }
        );
        assert!(err.to_string().contains("the limit is 20000"), "{err}");
        // A FLAC whose STREAMINFO leaves the length unknown: the running count stops it.
        let audio = Audio {
            sample_rate: 16_000,
            channels: vec![sine(300.0, 16_000, 1.0, 0.5), sine(200.0, 16_000, 1.0, 0.5)],
        };
        let mut streamed = crate::audio::encode_flac(&audio).unwrap();
        // The 36-bit total sample count ends STREAMINFO's packed rate/channels/bits word.
        let packed = u64::from_be_bytes(streamed[18..26].try_into().unwrap());
        assert_eq!(packed & 0xF_FFFF_FFFF, 16_000);
        streamed[18..26].copy_from_slice(&(packed & !0xF_FFFF_FFFF).to_be_bytes());
        assert!(decode_mono(&streamed, None, &DecodeLimits::default(), 16_000, &go()).is_ok());
        match decode_mono(&streamed, None, &capped, 16_000, &go()) {
            Err(DecodeError::TooManySamples { samples, limit }) => {
                assert_eq!(limit, 20_000);
                assert!(samples > 20_000 && samples <= 32_000, "{samples}");
            }
            other => panic!("{other:?}"),
        }
    }
}
