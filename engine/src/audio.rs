//! Audio buffers and their file formats: WAV as 16-bit PCM (default) or 32-bit float, and
//! FLAC (16-bit).

pub mod decode;
pub mod flac;
pub mod resample;

pub use flac::encode_flac;

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
}

impl AudioFormat {
    /// Every format Son1k writes.
    pub const ALL: [AudioFormat; 2] = [AudioFormat::Wav, AudioFormat::Flac];

    /// The format whose name or file extension is `name` (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|format| format.extension().eq_ignore_ascii_case(name))
    }

    /// The names of every format, for messages: `wav, flac`.
    pub fn names() -> String {
        Self::ALL.map(Self::extension).join(", ")
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Flac => "flac",
        }
    }
}

/// Encodes audio as a file in `format`; FLAC stores 16-bit samples, so `F32` is refused
/// for it.
pub fn encode_audio(
    audio: &Audio,
    format: AudioFormat,
    sample_format: SampleFormat,
) -> Result<Vec<u8>, EngineError> {
    match (format, sample_format) {
        (AudioFormat::Wav, _) => encode_wav(audio, sample_format),
        (AudioFormat::Flac, SampleFormat::S16) => flac::encode_flac(audio),
        (AudioFormat::Flac, SampleFormat::F32) => Err(EngineError::invalid(
            "sample_format",
            "32-bit float is available in WAV only; FLAC stores 16-bit",
        )),
    }
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
