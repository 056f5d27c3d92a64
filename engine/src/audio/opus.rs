//! Ogg Opus files (RFC 7845), encoded by `opus-rs` (a Rust port of libopus): the audio
//! resampled to 48 kHz, 20 ms frames at 128 kbit/s per channel (variable bit rate, highest
//! complexity), pages of one second, and the granule positions that let a decoder drop the
//! encoder's delay at the start and the padding at the end, so the file plays exactly the
//! samples given. The header keeps the original sample rate.

use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use opus_rs::{Application, OpusEncoder};

use crate::audio::resample::resample;
use crate::audio::Audio;
use crate::error::EngineError;

/// The rate Opus runs at here (the only one every decoder plays back at).
pub const OPUS_RATE: u32 = 48_000;

/// Samples per channel in a 20 ms frame at 48 kHz.
const FRAME: usize = 960;

/// Frames on one Ogg page: one second.
const FRAMES_PER_PAGE: usize = 50;

/// The encoder's delay at 48 kHz in the `Audio` application (libopus' lookahead: 2.5 ms of
/// CELT overlap and 4 ms of delay compensation), which a decoder skips.
const PRE_SKIP: usize = 120 + 192;

/// Bits per second for each channel.
const BITRATE_PER_CHANNEL: i32 = 128_000;

/// The Ogg stream's serial number (one logical stream per file).
const SERIAL: u32 = 0x536f_6e31;

/// Largest Opus packet (RFC 6716, section 3.4).
const MAX_PACKET: usize = 1276;

/// The error of a failed encode.
fn opus_error(what: &str, error: impl std::fmt::Display) -> EngineError {
    EngineError::Output {
        path: "Opus buffer".into(),
        message: format!("{what}: {error}"),
    }
}

/// The identification header (RFC 7845, section 5.1): mapping family 0 (mono or stereo).
fn opus_head(channels: u8, input_rate: u32) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(channels);
    head.extend_from_slice(&(PRE_SKIP as u16).to_le_bytes());
    head.extend_from_slice(&input_rate.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family
    head
}

/// The comment header (RFC 7845, section 5.2): the vendor and no comments.
fn opus_tags() -> Vec<u8> {
    let vendor = concat!("son1k ", env!("CARGO_PKG_VERSION"), " (opus-rs)");
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes());
    tags
}

/// Encodes audio (one or two channels) as an Ogg Opus file in memory.
pub fn encode_opus(audio: &Audio) -> Result<Vec<u8>, EngineError> {
    let channels = audio.channels.len();
    if !(1..=2).contains(&channels) {
        return Err(EngineError::invalid(
            "audio_format",
            format!("Opus here holds one or two channels, not {channels}"),
        ));
    }
    let planar: Vec<Vec<f32>> = if audio.sample_rate == OPUS_RATE {
        audio.channels.clone()
    } else {
        audio
            .channels
            .iter()
            .map(|channel| resample(channel, audio.sample_rate, OPUS_RATE))
            .collect::<Result<_, _>>()
            .map_err(|e| opus_error("resampling to 48 kHz", e))?
    };
    let samples = planar.first().map_or(0, Vec::len);

    let mut encoder = OpusEncoder::new(OPUS_RATE as i32, channels, Application::Audio)
        .map_err(|e| opus_error("encoder setup", e))?;
    encoder.bitrate_bps = BITRATE_PER_CHANNEL * channels as i32;
    encoder.complexity = 10;
    encoder.use_cbr = false;

    let mut writer = PacketWriter::new(Vec::with_capacity(samples / 2 + 4096));
    let write_error = |e: std::io::Error| opus_error("Ogg page", e);
    writer
        .write_packet(
            opus_head(channels as u8, audio.sample_rate),
            SERIAL,
            PacketWriteEndInfo::EndPage,
            0,
        )
        .map_err(write_error)?;
    writer
        .write_packet(opus_tags(), SERIAL, PacketWriteEndInfo::EndPage, 0)
        .map_err(write_error)?;

    // Enough frames that the delayed output covers every input sample; the last granule
    // position says where the real samples end.
    let frames = (samples + PRE_SKIP).div_ceil(FRAME).max(1);
    let end_granule = (PRE_SKIP + samples) as u64;
    let mut interleaved = vec![0f32; FRAME * channels];
    let mut packet = [0u8; MAX_PACKET];
    for frame in 0..frames {
        let start = frame * FRAME;
        for i in 0..FRAME {
            for (c, channel) in planar.iter().enumerate() {
                interleaved[i * channels + c] = channel.get(start + i).copied().unwrap_or(0.0);
            }
        }
        let len = encoder
            .encode(&interleaved, FRAME, &mut packet)
            .map_err(|e| opus_error("encoding", e))?;
        let last = frame + 1 == frames;
        let end = if last {
            PacketWriteEndInfo::EndStream
        } else if (frame + 1) % FRAMES_PER_PAGE == 0 {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        let granule = if last {
            end_granule
        } else {
            ((frame + 1) * FRAME) as u64
        };
        writer
            .write_packet(packet[..len].to_vec(), SERIAL, end, granule)
            .map_err(write_error)?;
    }
    Ok(writer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The granule position of the file's last Ogg page (RFC 3533: bytes 6..14 of a page).
    fn last_granule(file: &[u8]) -> u64 {
        let at = file
            .windows(4)
            .rposition(|w| w == b"OggS")
            .expect("an Ogg page");
        u64::from_le_bytes(file[at + 6..at + 14].try_into().unwrap())
    }

    #[test]
    fn mono_32khz_is_48khz_opus_whose_last_granule_ends_at_the_last_sample() {
        let audio = Audio {
            sample_rate: 32_000,
            channels: vec![(0..32_000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect()],
        };
        let file = encode_opus(&audio).unwrap();
        assert!(file.starts_with(b"OggS"));
        let head = &file[file.windows(8).position(|w| w == b"OpusHead").unwrap()..];
        assert_eq!(head[9], 1, "channels");
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 32_000);
        // 1 s at 48 kHz after the pre-skip.
        assert_eq!(last_granule(&file), PRE_SKIP as u64 + 48_000);
    }
}
