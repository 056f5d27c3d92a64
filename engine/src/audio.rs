//! Audio buffers and their file formats: WAV as 16-bit PCM (default) or 32-bit float, FLAC
//! (16-bit), MP3 and Ogg Opus.

pub mod decode;
pub mod flac;
pub mod mp3;
pub mod opus;
pub mod resample;

pub use flac::encode_flac;
pub use mp3::encode_mp3;
pub use opus::encode_opus;

use std::io::Cursor;

use crate::error::EngineError;

/// Planar audio: one sample vector per channel, all the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub sample_rate: u32,
    /// `channels[c][i]`, nominally in [-1, 1].
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / self.sample_rate as f64
    }
}

/// A piece of audio while a job runs, placed in the output.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioChunk {
    /// Index of its first frame in the output.
    pub start_frame: usize,
    /// The samples.
    pub audio: Audio,
}

/// How samples are stored in the output file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SampleFormat {
    /// 16-bit signed PCM, clipped to [-1, 1].
    #[default]
    S16,
    /// 32-bit IEEE float, unclipped.
    F32,
}

impl std::str::FromStr for SampleFormat {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "s16" => Ok(Self::S16),
            "f32" => Ok(Self::F32),
            other => Err(EngineError::invalid(
                "sample_format",
                format!("`{other}` is not one of s16, f32"),
            )),
        }
    }
}

/// The container of a final audio file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AudioFormat {
    /// RIFF WAVE (default).
    #[default]
    Wav,
    /// FLAC, lossless and about half the size; 16-bit samples only.
    Flac,
    /// MP3 (MPEG-1/2 Layer III) by LAME, 160 kbit/s per channel, at the audio's own rate
    /// where MP3 has it.
    Mp3,
    /// Opus in Ogg, 128 kbit/s per channel, at 48 kHz (the header keeps the audio's rate).
    Opus,
}

impl AudioFormat {
    /// Every format Son1k writes.
    pub const ALL: [AudioFormat; 4] = [
        AudioFormat::Wav,
        AudioFormat::Flac,
        AudioFormat::Mp3,
        AudioFormat::Opus,
    ];

    /// The format whose name or file extension is `name` (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|format| format.extension().eq_ignore_ascii_case(name))
    }

    /// The names of every format, for messages: `wav, flac, mp3, opus`.
    pub fn names() -> String {
        Self::ALL.map(Self::extension).join(", ")
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Flac => "flac",
            Self::Mp3 => "mp3",
            Self::Opus => "opus",
        }
    }
}

/// Encodes audio as a file in `format`. Only WAV stores 32-bit float samples, so `F32` is
/// refused for the others.
pub fn encode_audio(
    audio: &Audio,
    format: AudioFormat,
    sample_format: SampleFormat,
) -> Result<Vec<u8>, EngineError> {
    check_sample_format(format, sample_format)?;
    match format {
        AudioFormat::Wav => encode_wav(audio, sample_format),
        AudioFormat::Flac => flac::encode_flac(audio),
        AudioFormat::Mp3 => mp3::encode_mp3(audio),
        AudioFormat::Opus => opus::encode_opus(audio),
    }
}

/// Refuses a sample format the file format cannot store: 32-bit float is WAV's alone.
pub fn check_sample_format(
    format: AudioFormat,
    sample_format: SampleFormat,
) -> Result<(), EngineError> {
    if sample_format == SampleFormat::F32 && format != AudioFormat::Wav {
        return Err(EngineError::invalid(
            "sample_format",
            format!(
                "32-bit float is available in WAV only, not {}",
                format.extension().to_uppercase()
            ),
        ));
    }
    Ok(())
}

/// A sample as 16-bit PCM: clipped to [-1, 1], scaled by `i16::MAX`, rounded.
pub fn to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16
}

/// Encodes audio as a WAV file in memory.
pub fn encode_wav(audio: &Audio, format: SampleFormat) -> Result<Vec<u8>, EngineError> {
    let spec = hound::WavSpec {
        channels: audio.channels.len() as u16,
        sample_rate: audio.sample_rate,
        bits_per_sample: match format {
            SampleFormat::S16 => 16,
            SampleFormat::F32 => 32,
        },
        sample_format: match format {
            SampleFormat::S16 => hound::SampleFormat::Int,
            SampleFormat::F32 => hound::SampleFormat::Float,
        },
    };
    let wav_error = |e: hound::Error| EngineError::Output {
        path: "WAV buffer".into(),
        message: e.to_string(),
    };
    let mut bytes = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut bytes, spec).map_err(wav_error)?;
    for i in 0..audio.frames() {
        for channel in &audio.channels {
            let x = channel[i];
            match format {
                SampleFormat::S16 => writer.write_sample(to_i16(x)).map_err(wav_error)?,
                SampleFormat::F32 => writer.write_sample(x).map_err(wav_error)?,
            }
        }
    }
    writer.finalize().map_err(wav_error)?;
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trips_in_both_formats() {
        let audio = Audio {
            sample_rate: 32000,
            channels: vec![vec![0.0, 0.5, -1.5], vec![1.0, -0.25, 0.125]],
        };
        let bytes = encode_wav(&audio, SampleFormat::S16).unwrap();
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.spec().channels, 2);
        assert_eq!(reader.duration(), 3);
        let s: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, vec![0, 32767, 16384, -8192, -32767, 4096]);

        let bytes = encode_wav(&audio, SampleFormat::F32).unwrap();
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.spec().sample_format, hound::SampleFormat::Float);
        let s: Vec<f32> = reader.samples::<f32>().map(Result::unwrap).collect();
        assert_eq!(s, vec![0.0, 1.0, 0.5, -0.25, -1.5, 0.125]);
    }
}
