//! Decoding uploaded audio (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A) to planar `f32` with
//! symphonia, under limits on size, length, sample rate and channels; mixing to mono; and
//! band-limited resampling with rubato. Garbage input gives an error, never a panic.

use std::io::Cursor;

use super::Audio;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
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

/// What an upload may be. Decoded audio takes at most about
/// `max_seconds * max_sample_rate * channels * 4` bytes of memory.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeLimits {
    /// Longest accepted audio in seconds (default 600).
    pub max_seconds: f64,
    /// Largest accepted file in bytes (default 50 MiB).
    pub max_bytes: usize,
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
    /// The resampler refused the conversion.
    #[error("could not resample from {from} Hz to {to} Hz: {reason}")]
    Resample {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// What rubato said.
        reason: String,
    },
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

/// Decodes an uploaded file to planar `f32`. `name_hint` (a file name such as `song.mp3`)
/// helps pick the format; content decides. A stream that breaks off part way keeps what was
/// decoded before the break.
pub fn decode_audio(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Audio, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    // The demuxers and decoders are fuzzed upstream; should one still panic on hostile input,
    // report the file as undecodable instead of taking the caller down.
    std::panic::catch_unwind(|| decode_within_limits(bytes, name_hint, limits))
        .unwrap_or(Err(DecodeError::NotAudio))
}

/// [`decode_audio`] after the size check.
fn decode_within_limits(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Audio, DecodeError> {
    let (mut format, mut decoder, track_id) = open(bytes, name_hint)?;
    if let Some(track) = format.tracks().iter().find(|t| t.id == track_id) {
        let params = track.codec_params.as_ref().and_then(|p| p.audio());
        if let Some(rate) = params.and_then(|p| p.sample_rate) {
            check_rate(rate, limits)?;
            if let Some(frames) = track.num_frames {
                let seconds = frames as f64 / f64::from(rate);
                if seconds > limits.max_seconds {
                    return Err(DecodeError::TooLong {
                        seconds,
                        limit: limits.max_seconds,
                    });
                }
            }
        }
        if let Some(channels) = params.and_then(|p| p.channels.as_ref()) {
            check_channels(channels.count(), limits)?;
        }
    }
    let mut out: Vec<Vec<f32>> = Vec::new();
    let mut rate = 0u32;
    let mut scratch: Vec<Vec<f32>> = Vec::new();
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
        if out.is_empty() {
            rate = spec.rate();
            check_rate(rate, limits)?;
            check_channels(spec.channels().count(), limits)?;
            out = vec![Vec::new(); buffer.num_planes()];
        }
        if spec.rate() != rate || buffer.num_planes() != out.len() {
            // A mid-stream format change: keep what we have.
            break;
        }
        buffer.copy_to_vecs_planar(&mut scratch);
        for (channel, plane) in out.iter_mut().zip(&scratch) {
            channel.extend(plane.iter().map(|&s| if s.is_finite() { s } else { 0.0 }));
        }
        let seconds = out[0].len() as f64 / f64::from(rate);
        if seconds > limits.max_seconds {
            return Err(DecodeError::TooLong {
                seconds,
                limit: limits.max_seconds,
            });
        }
    }
    if out.first().is_none_or(Vec::is_empty) {
        return Err(DecodeError::Empty);
    }
    let peak = out.iter().flatten().fold(0.0f32, |m, s| m.max(s.abs()));
    if peak < SILENCE_PEAK {
        return Err(DecodeError::Silent);
    }
    Ok(Audio {
        sample_rate: rate,
        channels: out,
    })
}

/// The average of all channels.
pub fn to_mono(audio: &Audio) -> Vec<f32> {
    let n = audio.channels.len();
    match n {
        0 => Vec::new(),
        1 => audio.channels[0].clone(),
        _ => (0..audio.frames())
            .map(|i| {
                audio
                    .channels
                    .iter()
                    .map(|c| c.get(i).copied().unwrap_or(0.0))
                    .sum::<f32>()
                    / n as f32
            })
            .collect(),
    }
}

/// Resamples mono audio from `from` Hz to `to` Hz with rubato's FFT resampler (band-limited,
/// delay compensated: the output has `len * to / from` samples, rounded up, aligned in time
/// with the input).
pub fn resample(mono: &[f32], from: u32, to: u32) -> Result<Vec<f32>, DecodeError> {
    let fail = |reason: String| DecodeError::Resample { from, to, reason };
    if from == 0 || to == 0 {
        return Err(fail("sample rates must be positive".into()));
    }
    if from == to || mono.is_empty() {
        return Ok(mono.to_vec());
    }
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both)
        .map_err(|e| fail(e.to_string()))?;
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| fail(e.to_string()))?;
    let output = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|e| fail(e.to_string()))?;
    Ok(output.take_data())
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

    /// Frequency from the zero crossings of the middle half of a signal.
    fn zero_crossing_hz(x: &[f32], rate: u32) -> f32 {
        let mid = &x[x.len() / 4..3 * x.len() / 4];
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f32 * rate as f32 / mid.len() as f32
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
        let mono = to_mono(&audio);
        assert!((mono[100] - 0.5 * (audio.channels[0][100] + audio.channels[1][100])).abs() < 1e-6);
        assert!((audio.duration_s() - 1.0).abs() < 1e-3);
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

    #[test]
    fn resampling_keeps_the_pitch() {
        let x = sine(1000.0, 44_100, 1.0, 0.5);
        let y = resample(&x, 44_100, 32_000).unwrap();
        assert!((y.len() as i64 - 32_000).abs() <= 1, "{}", y.len());
        let hz = zero_crossing_hz(&y, 32_000);
        assert!((hz - 1000.0).abs() < 3.0, "{hz}");
        // Band-limited: a 15 kHz tone cannot survive a conversion to 16 kHz.
        let high = resample(&sine(15_000.0, 44_100, 0.5, 0.5), 44_100, 16_000).unwrap();
        let peak = high[2000..high.len() - 2000]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak < 0.01, "{peak}");
        assert_eq!(resample(&x, 44_100, 44_100).unwrap(), x);
        assert!(resample(&x, 0, 16_000).is_err());
        assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
    }
}
