//! MP3 files, encoded by LAME (through `mp3lame-encoder`): constant 160 kbit/s per channel
//! (320 stereo), LAME's recommended quality search (`-q 2`; `-q 0` measured 2.3 times
//! slower in `cargo bench --bench audio_formats`), and a LAME info frame first, so players
//! that read it (symphonia, ffmpeg, browsers) trim the encoder's delay and padding and play
//! exactly the samples given.

use mp3lame_encoder::{Bitrate, Builder, DualPcm, Encoder, FlushGap, Mode, MonoPcm, Quality};

use crate::audio::Audio;
use crate::error::EngineError;

/// Sample rates an MP3 stores as they are (MPEG-1, 2 and 2.5); LAME resamples any other.
const MP3_RATES: [u32; 9] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];

/// Samples per channel handed to LAME at a time, to bound its output buffer.
const BLOCK: usize = 1 << 16;

/// The error of a failed encode.
fn mp3_error(what: &str, error: impl std::fmt::Display) -> EngineError {
    EngineError::Output {
        path: "MP3 buffer".into(),
        message: format!("{what}: {error}"),
    }
}

/// The error for audio of `n` channels, which MP3 cannot hold.
fn channels_error(n: usize) -> EngineError {
    EngineError::invalid(
        "audio_format",
        format!("MP3 holds one or two channels, not {n}"),
    )
}

/// An MP3 encoder for `audio`'s rate and channels.
fn encoder(audio: &Audio) -> Result<Encoder, EngineError> {
    let (mode, bitrate) = match audio.channels.len() {
        1 => (Mode::Mono, Bitrate::Kbps160),
        2 => (Mode::JointStereo, Bitrate::Kbps320),
        n => return Err(channels_error(n)),
    };
    let mut builder = Builder::new().ok_or_else(|| mp3_error("LAME", "cannot allocate"))?;
    let rate = audio.sample_rate;
    builder
        .set_num_channels(audio.channels.len() as u8)
        .map_err(|e| mp3_error("channels", e))?;
    builder
        .set_sample_rate(rate)
        .map_err(|e| mp3_error("sample rate", e))?;
    if MP3_RATES.contains(&rate) {
        builder
            .set_output_sample_rate(std::num::NonZeroU32::new(rate))
            .map_err(|e| mp3_error("output sample rate", e))?;
    }
    builder.set_mode(mode).map_err(|e| mp3_error("mode", e))?;
    builder
        .set_brate(bitrate)
        .map_err(|e| mp3_error("bitrate", e))?;
    builder
        .set_quality(Quality::NearBest)
        .map_err(|e| mp3_error("quality", e))?;
    builder
        .set_to_write_vbr_tag(true)
        .map_err(|e| mp3_error("info frame", e))?;
    builder.build().map_err(|e| mp3_error("LAME setup", e))
}

/// Encodes audio (one or two channels) as an MP3 file in memory.
pub fn encode_mp3(audio: &Audio) -> Result<Vec<u8>, EngineError> {
    let mut encoder = encoder(audio)?;
    let frames = audio.frames();
    let mut bytes = Vec::with_capacity(frames / 4 + 8192);
    let mut start = 0;
    while start < frames {
        let end = (start + BLOCK).min(frames);
        bytes.reserve(mp3lame_encoder::max_required_buffer_size(end - start));
        let written = match audio.channels.as_slice() {
            [mono] => encoder.encode_to_vec(MonoPcm(&mono[start..end]), &mut bytes),
            [left, right] => encoder.encode_to_vec(
                DualPcm {
                    left: &left[start..end],
                    right: &right[start..end],
                },
                &mut bytes,
            ),
            channels => return Err(channels_error(channels.len())),
        };
        written.map_err(|e| mp3_error("encoding", e))?;
        start = end;
    }
    bytes.reserve(mp3lame_encoder::max_required_buffer_size(0));
    encoder
        .flush_to_vec::<FlushGap>(&mut bytes)
        .map_err(|e| mp3_error("flushing", e))?;
    // LAME wrote a placeholder frame first; the info frame (lengths, delay, padding) now
    // knows the whole stream and takes its place.
    let mut info = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut info).is_some() && info.len() <= bytes.len() {
        bytes[..info.len()].copy_from_slice(&info);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::decode::{decode_audio, DecodeLimits};

    /// A second of a mono chord at 32 kHz, MusicGen's rate and layout.
    fn chord() -> Audio {
        let rate = 32_000;
        let samples = (0..rate)
            .map(|i| {
                let t = i as f32 / rate as f32;
                [220.0f32, 277.2, 329.6]
                    .iter()
                    .map(|hz| 0.2 * (std::f32::consts::TAU * hz * t).sin())
                    .sum()
            })
            .collect();
        Audio {
            sample_rate: rate,
            channels: vec![samples],
        }
    }

    #[test]
    fn mono_32khz_keeps_its_rate_channels_and_length() {
        let audio = chord();
        let file = encode_mp3(&audio).unwrap();
        let decoded = decode_audio(&file, Some("a.mp3"), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.sample_rate, 32_000);
        assert_eq!(decoded.channels.len(), 1);
        assert_eq!(decoded.frames(), audio.frames());
    }

    #[test]
    fn more_than_two_channels_are_refused_naming_the_field() {
        let audio = Audio {
            sample_rate: 32_000,
            channels: vec![vec![0.0; 100]; 3],
        };
        let error = encode_mp3(&audio).unwrap_err().to_string();
        assert!(
            error.contains("audio_format") && error.contains("3"),
            "{error}"
        );
    }
}
