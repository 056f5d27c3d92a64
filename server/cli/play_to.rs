//! `--play-to`: a job's previews, as the server streams them, written as one WAV stream
//! (16-bit PCM) to a file or to stdout, so a player hears the music while it is made:
//! `son1k generate --server URL --play-to - "..." | ffplay -nodisp -`.
//!
//! The stream's header gives no length (players read to the end); a file gets the real
//! lengths once the job is done. Previews are not replayed after a re-attach, so a gap
//! they leave is filled with silence, and audio a later preview repeats is skipped: the
//! stream stays in time with the song.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::proto::v1 as pb;

/// Where `--play-to` writes.
pub(super) struct PlayTo {
    out: Out,
    /// The stream's rate and channels, from its first preview.
    format: Option<(u32, u16)>,
    /// Frames written so far.
    written: u64,
    /// The most frames the job can make (its duration, with a second to spare): a preview
    /// past it is an error, not a gap of silence to write.
    max_frames_per_s: f64,
}

/// A file (whose header is fixed at the end) or stdout.
enum Out {
    File(PathBuf, File),
    Stdout(std::io::Stdout),
}

impl PlayTo {
    /// Opens `target` (`-` for stdout) for a job of `duration_s` seconds.
    pub(super) fn open(target: &Path, duration_s: f64) -> anyhow::Result<Self> {
        let out = if target == Path::new("-") {
            Out::Stdout(std::io::stdout())
        } else {
            let file = File::create(target)
                .with_context(|| format!("cannot create {} (--play-to)", target.display()))?;
            Out::File(target.to_path_buf(), file)
        };
        Ok(Self {
            out,
            format: None,
            written: 0,
            max_frames_per_s: duration_s.max(0.0) + 1.0,
        })
    }

    /// Whether the stream goes to stdout (so the command's own lines must not).
    pub(super) fn is_stdout(&self) -> bool {
        matches!(self.out, Out::Stdout(_))
    }

    /// Writes one preview, after silence for any gap since the last.
    pub(super) fn chunk(&mut self, chunk: &pb::AudioChunk) -> anyhow::Result<()> {
        let channels = u16::try_from(chunk.channels)
            .ok()
            .filter(|&c| (1..=8).contains(&c));
        let Some(channels) = channels else {
            bail!("the server sent a preview of {} channels", chunk.channels);
        };
        let rate = chunk.sample_rate;
        if !(8_000..=192_000).contains(&rate) {
            bail!("the server sent a preview at {rate} Hz");
        }
        match self.format {
            None => {
                self.format = Some((rate, channels));
                self.write(&header(rate, channels, None))?;
            }
            Some(format) if format != (rate, channels) => {
                bail!("the server's previews changed format mid-stream")
            }
            Some(_) => {}
        }
        let frame_bytes = 2 * u64::from(channels);
        let frames = chunk.pcm_s16le.len() as u64 / frame_bytes;
        let max_frames = (self.max_frames_per_s * f64::from(rate)) as u64;
        let end = chunk.start_frame.saturating_add(frames);
        if end > max_frames {
            bail!("the server sent a preview ending at frame {end}, past the job's {max_frames}");
        }
        if chunk.start_frame > self.written {
            let silence = vec![0u8; ((chunk.start_frame - self.written) * frame_bytes) as usize];
            self.write(&silence)?;
            self.written = chunk.start_frame;
        }
        let skip = ((self.written - chunk.start_frame).min(frames) * frame_bytes) as usize;
        let data = &chunk.pcm_s16le[skip..(frames * frame_bytes) as usize];
        self.write(data)?;
        self.written = self.written.max(end);
        Ok(())
    }

    /// Ends the stream: a file gets its real lengths.
    pub(super) fn finish(mut self) -> anyhow::Result<()> {
        match (&mut self.out, self.format) {
            (Out::File(path, file), Some((rate, channels))) => {
                let data = self.written * 2 * u64::from(channels);
                let header = header(rate, channels, u32::try_from(data).ok());
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.write_all(&header))
                    .and_then(|()| file.flush())
                    .with_context(|| format!("cannot write {} (--play-to)", path.display()))
            }
            (Out::Stdout(stdout), _) => stdout.flush().context("cannot write stdout (--play-to)"),
            (Out::File(..), None) => Ok(()),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.out {
            Out::File(path, file) => file
                .write_all(bytes)
                .with_context(|| format!("cannot write {} (--play-to)", path.display())),
            Out::Stdout(stdout) => {
                let mut stdout = stdout.lock();
                stdout
                    .write_all(bytes)
                    .and_then(|()| stdout.flush())
                    .context("cannot write stdout (--play-to)")
            }
        }
    }
}

/// A WAV header for 16-bit PCM; `data_bytes` `None` for a stream of unknown length (the
/// largest lengths, which players read as "to the end").
fn header(rate: u32, channels: u16, data_bytes: Option<u32>) -> [u8; 44] {
    let data = data_bytes.unwrap_or(u32::MAX - 36);
    let block = 2 * channels;
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data.saturating_add(36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start_frame: u64, samples: &[i16]) -> pb::AudioChunk {
        pb::AudioChunk {
            start_frame,
            sample_rate: 32_000,
            channels: 1,
            pcm_s16le: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }

    /// Chunks in order, one after a gap and one that repeats audio make one WAV file in
    /// time with the song: silence in the gap, the repeat skipped, the lengths right.
    #[test]
    fn previews_become_one_wav_in_time_with_the_song() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.wav");
        let mut play = PlayTo::open(&path, 1.0).unwrap();
        play.chunk(&chunk(0, &[1, 2, 3])).unwrap();
        play.chunk(&chunk(5, &[6, 7])).unwrap();
        play.chunk(&chunk(6, &[70, 8, 9])).unwrap();
        play.finish().unwrap();
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().sample_rate, 32_000);
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples, [1, 2, 3, 0, 0, 6, 7, 8, 9]);
    }

    /// A preview past the job's length, or in another format, is an error, not gigabytes of
    /// silence or a garbled stream.
    #[test]
    fn previews_the_job_cannot_make_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut play = PlayTo::open(&dir.path().join("x.wav"), 1.0).unwrap();
        let far = play.chunk(&chunk(10_000_000_000, &[1])).unwrap_err();
        assert!(far.to_string().contains("past the job's 64000"), "{far}");
        play.chunk(&chunk(0, &[1])).unwrap();
        let mut stereo = chunk(1, &[1, 2]);
        stereo.channels = 2;
        assert!(play.chunk(&stereo).is_err());
    }
}
