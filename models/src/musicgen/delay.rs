//! The codebook delay pattern: codebook k of frame t is predicted at column t + 1 + delay(k),
//! delay(k) = k for mono and k / 2 for stereo (L/R pairs share a delay).

/// Where each codebook's frames sit in the decoder's column sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayPattern {
    codebooks: usize,
    channels: usize,
    frames: usize,
    pad: u32,
}

impl DelayPattern {
    /// The pattern for `frames` audio frames of `codebooks` interleaved over `channels`.
    pub fn new(codebooks: usize, channels: usize, frames: usize, pad: u32) -> Self {
        Self {
            codebooks,
            channels: channels.max(1),
            frames,
            pad,
        }
    }

    /// Audio frames this pattern holds.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The delay, in columns, of codebook `k`.
    pub fn delay(&self, k: usize) -> usize {
        k / self.channels
    }

    /// Decoder passes to generate every frame: column 0 is the start column, and pass `s`
    /// predicts column `s + 1`.
    pub fn steps(&self) -> usize {
        self.frames + self.codebooks / self.channels - 1
    }

    /// The frame codebook `k` holds at column `column`, if any (else the slot is padding).
    pub fn frame_at(&self, column: usize, k: usize) -> Option<usize> {
        let shift = 1 + self.delay(k);
        (column >= shift && column - shift < self.frames).then(|| column - shift)
    }

    /// Frames whose every codebook is among the first `columns` columns (start column
    /// included): the frames finished so far.
    pub fn finished(&self, columns: usize) -> usize {
        let last = self.delay(self.codebooks.saturating_sub(1));
        columns.saturating_sub(1 + last).min(self.frames)
    }

    /// The token fed back at `column` for codebook `k`: the sampled one inside the
    /// pattern, the pad token outside it.
    pub fn mask(&self, column: usize, k: usize, sampled: u32) -> u32 {
        if self.frame_at(column, k).is_some() {
            sampled
        } else {
            self.pad
        }
    }

    /// Reverts columns (`columns[s][k]`, column 0 the start column) into frames per codebook
    /// (`[K][frames]`).
    pub fn revert(&self, columns: &[Vec<u32>]) -> Vec<Vec<u32>> {
        (0..self.codebooks)
            .map(|k| {
                (0..self.frames)
                    .map(|t| {
                        columns
                            .get(t + 1 + self.delay(k))
                            .and_then(|c| c.get(k))
                            .copied()
                            .unwrap_or(self.pad)
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' docstring example: max_length 8 and 4 codebooks gives per codebook
    /// `[P,-1,-1,-1,-1,P,P,P]`, `[P,P,-1,-1,-1,-1,P,P]`, `[P,P,P,-1,-1,-1,-1,P]`,
    /// `[P,P,P,P,-1,-1,-1,-1]` (-1 = predicted).
    #[test]
    fn mono_pattern_matches_the_reference_docstring() {
        let p = DelayPattern::new(4, 1, 4, 2048);
        assert_eq!(p.steps(), 7);
        let rows: Vec<String> = (0..4)
            .map(|k| {
                (0..8)
                    .map(|s| if p.frame_at(s, k).is_some() { 'x' } else { 'P' })
                    .collect()
            })
            .collect();
        assert_eq!(rows, ["PxxxxPPP", "PPxxxxPP", "PPPxxxxP", "PPPPxxxx"]);
    }

    #[test]
    fn stereo_pairs_share_a_delay_and_revert_recovers_frames() {
        let p = DelayPattern::new(8, 2, 3, 99);
        assert_eq!(
            (0..8).map(|k| p.delay(k)).collect::<Vec<_>>(),
            [0, 0, 1, 1, 2, 2, 3, 3]
        );
        assert_eq!(p.steps(), 6);
        // Fill the columns with token = 10*k + frame where the pattern holds a frame.
        let columns: Vec<Vec<u32>> = (0..=p.steps())
            .map(|s| {
                (0..8)
                    .map(|k| p.mask(s, k, p.frame_at(s, k).map_or(0, |t| (10 * k + t) as u32)))
                    .collect()
            })
            .collect();
        assert!(columns[0].iter().all(|&c| c == 99));
        let frames = p.revert(&columns);
        for (k, row) in frames.iter().enumerate() {
            assert_eq!(
                row,
                &(0..3).map(|t| (10 * k + t) as u32).collect::<Vec<_>>()
            );
        }
    }
}
