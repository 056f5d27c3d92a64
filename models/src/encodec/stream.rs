//! Decoding while the frames still arrive: [`DecodeStream`] keeps what a decode of the
//! frames so far has computed that the next frames' audio needs, so each piece of audio is
//! decoded once, with a few frames of context, and sounds as the whole decode does.
//!
//! The decoder's layers before its LSTM are convolutions that read a few frames either
//! side; the LSTM carries its state from frame to frame; the upsampling layers after it
//! read under two frames either side. So a frame's LSTM output is final once the
//! convolutions' look-ahead has arrived, and its audio once [`CHUNK_CONTEXT_FRAMES`] more
//! LSTM outputs have: the stream runs the LSTM over each frame once, from the state the
//! frames before left, and the upsampling layers over each frame once plus that context.

use candle_core::{DType, Tensor};

use super::decoder::{bad_codes, EncodecDecoder, CHUNK_CONTEXT_FRAMES};
use super::lstm::{Lstm, LstmState};
use super::seanet::Layer;
use crate::error::Result;

/// The decoder's layers around its LSTM.
struct Head<'a> {
    /// The convolutions before the LSTM.
    convs: &'a [Layer],
    /// Frames before and after its own that their output for a frame reads.
    lookbehind: usize,
    lookahead: usize,
    lstm: &'a Lstm,
    /// The upsampling layers after the LSTM.
    tail: &'a [Layer],
}

/// The state of one batch item's decode between pieces of its frames.
#[derive(Clone, Debug, Default)]
pub struct DecodeStream {
    /// The LSTM's state after [`Self::through_lstm`] frames.
    lstm: LstmState,
    /// Frames run through the LSTM.
    through_lstm: usize,
    /// LSTM outputs `[1, C, n]` from frame `latents_from` on: the upsampling layers' input
    /// still needed (the frames not yet decoded, and their context before).
    latents: Option<Tensor>,
    latents_from: usize,
    /// Frames whose audio has been decoded.
    sent: usize,
}

impl DecodeStream {
    /// Frames whose audio has been decoded.
    pub fn sent(&self) -> usize {
        self.sent
    }
}

impl EncodecDecoder {
    /// Frames a stream holds back, at most, behind the frames it has been given: the
    /// look-ahead of the convolutions before the LSTM (or, for a piece's first frames,
    /// their look-behind, which their padding reflects), and the context the layers after
    /// it read.
    pub fn stream_delay(&self) -> Result<usize> {
        let head = self.head()?;
        // A piece's first frames wait for the `lookbehind` frames their padding reflects.
        Ok(head.lookahead.max(head.lookbehind) + CHUNK_CONTEXT_FRAMES)
    }

    /// Frames before [`DecodeStream::sent`] that the next codes given to a stream must
    /// start at or before: what the convolutions before the LSTM read behind a frame.
    pub fn stream_context(&self) -> Result<usize> {
        Ok(self.head()?.lookbehind)
    }

    /// Decodes what `codes` (`[1, Kq, n]`: frames `first..first + n` of the piece so far,
    /// from at most [`Self::stream_context`] frames before [`DecodeStream::sent`]) add to
    /// `stream`: audio `[1, audio_channels, samples]` from frame [`DecodeStream::sent`] (as
    /// it was) on, up to at most [`Self::stream_delay`] frames short of the codes' end, or
    /// to it when `done`. Empty where no frame is ready yet.
    pub fn decode_more(
        &self,
        stream: &mut DecodeStream,
        codes: &Tensor,
        first: usize,
        done: bool,
    ) -> Result<Tensor> {
        let (batch, _, n) = codes.dims3()?;
        if batch != 1 {
            return Err(bad_codes(format!(
                "a stream decodes one item, given {batch}"
            )));
        }
        let finished = first + n;
        if finished < stream.through_lstm || finished < stream.sent {
            return Err(bad_codes(format!(
                "a stream past frame {} given frames up to {finished}",
                stream.through_lstm.max(stream.sent)
            )));
        }
        let head = self.head()?;
        // Frames whose LSTM output is now final: those whose convolutions' look-ahead has
        // arrived (the first frames' padding reflects the `lookbehind` frames after them,
        // so none is final before those), or all once the piece is done (its end padded as
        // the whole decode pads it).
        let through = if done {
            finished
        } else if finished <= head.lookbehind {
            0
        } else {
            finished - head.lookahead
        };
        if through > stream.through_lstm {
            let from = stream.through_lstm.saturating_sub(head.lookbehind);
            if first > from {
                return Err(bad_codes(format!(
                    "a stream needs the codes from frame {from}, given them from {first}"
                )));
            }
            let embeddings =
                self.embed_codes(&codes.narrow(2, from - first, finished - from)?)?;
            let inputs = self
                .run(head.convs, &embeddings, self.lstm_channels())?
                .narrow(2, stream.through_lstm - from, through - stream.through_lstm)?;
            let outputs = if self.device().is_cpu() {
                super::cpu::run_lstm_from(head.lstm, &inputs, &mut stream.lstm)?
            } else {
                head.lstm.forward_stream(&inputs, &mut stream.lstm)?
            };
            stream.latents = Some(match stream.latents.take() {
                Some(kept) => Tensor::cat(&[kept, outputs], 2)?,
                None => outputs,
            });
            stream.through_lstm = through;
        }
        let through = stream.through_lstm;
        // Frames whose audio is now final: those with the upsampling layers' context after
        // them, or all once the piece is done.
        let until = if done {
            through
        } else {
            through.saturating_sub(CHUNK_CONTEXT_FRAMES)
        };
        let audio_channels = self.config.audio_channels;
        let (Some(latents), true) = (&stream.latents, until > stream.sent) else {
            return Ok(Tensor::zeros(
                (1, audio_channels, 0),
                DType::F32,
                self.device(),
            )?);
        };
        let from = stream
            .sent
            .saturating_sub(CHUNK_CONTEXT_FRAMES)
            .max(stream.latents_from);
        let to = (until + CHUNK_CONTEXT_FRAMES).min(through);
        let window = latents.narrow(2, from - stream.latents_from, to - from)?;
        let hop = self.hop_length();
        let audio = self.run(head.tail, &window, audio_channels)?.narrow(
            2,
            (stream.sent - from) * hop,
            (until - stream.sent) * hop,
        )?;
        // Keep the context the next frames' audio reads before them.
        let keep_from = until
            .saturating_sub(CHUNK_CONTEXT_FRAMES)
            .max(stream.latents_from);
        stream.latents = Some(
            latents
                .narrow(2, keep_from - stream.latents_from, through - keep_from)?
                .contiguous()?,
        );
        stream.latents_from = keep_from;
        stream.sent = until;
        Ok(audio)
    }

    /// The convolutions before the LSTM, the LSTM and the layers after it.
    fn head(&self) -> Result<Head<'_>> {
        let at = self.lstm_position().ok_or_else(unstreamable)?;
        let (convs, rest) = self.layers.split_at(at);
        let (mut lookbehind, mut lookahead) = (0, 0);
        for layer in convs {
            match layer {
                Layer::Conv(conv) => {
                    lookbehind += conv.lookbehind()?;
                    lookahead += conv.lookahead()?;
                }
                _ => return Err(unstreamable()),
            }
        }
        match rest.split_first() {
            Some((Layer::Lstm(lstm), tail)) => Ok(Head {
                convs,
                lookbehind,
                lookahead,
                lstm,
                tail,
            }),
            _ => Err(unstreamable()),
        }
    }
}

fn unstreamable() -> crate::error::ModelError {
    bad_codes("this decoder's layers before its LSTM are not convolutions alone".into())
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::encodec::test_util::{max_diff, tiny_config, tiny_weights};
    use crate::encodec::Config;

    /// Frames arriving one by one, five at a time or all at once give the whole decode's
    /// audio, each frame's once and in order, held back by the stream's delay until the
    /// end; with the convolutions non-causal and causal.
    #[test]
    fn pieces_decoded_as_they_arrive_are_the_whole_decode() -> Result<()> {
        for causal in [false, true] {
            let cfg = Config {
                use_causal_conv: causal,
                ..tiny_config(true)
            };
            let weights = tiny_weights(&cfg)?;
            let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
            let frames = 23;
            let ids: Vec<u32> = (0..2 * frames as u32)
                .map(|i| (i * 5 + i / 3) % 8)
                .collect();
            let codes = Tensor::from_vec(ids, (1, 2, frames), &Device::Cpu)?;
            let whole = decoder.decode(&codes)?;
            let (delay, context) = (decoder.stream_delay()?, decoder.stream_context()?);
            assert_eq!(delay, if causal { 10 } else { 7 }, "causal {causal}");
            assert_eq!(context, if causal { 6 } else { 3 }, "causal {causal}");
            let hop = decoder.hop_length();
            for every in [1, 5, frames] {
                let mut stream = DecodeStream::default();
                let mut pieces = Vec::new();
                for arrived in (every..frames).step_by(every).chain([frames]) {
                    let done = arrived == frames;
                    let before = stream.sent();
                    // Only the codes the stream still reads, as a preview sends them.
                    let first = before.saturating_sub(context);
                    let piece = codes.narrow(2, first, arrived - first)?;
                    let audio = decoder.decode_more(&mut stream, &piece, first, done)?;
                    let (behind, ahead) = if causal { (6, 0) } else { (3, 3) };
                    let expected = match (done, arrived) {
                        (true, _) => frames,
                        (false, n) if n <= behind => 0,
                        (false, n) => (n - ahead).saturating_sub(delay - behind.max(ahead)),
                    };
                    assert!(expected >= arrived.saturating_sub(delay));
                    assert_eq!(
                        stream.sent(),
                        expected.max(before),
                        "{every} a time, at {arrived}"
                    );
                    assert_eq!(audio.dim(2)?, (stream.sent() - before) * hop);
                    pieces.push(audio);
                }
                let streamed = Tensor::cat(&pieces, 2)?;
                assert_eq!(streamed.dims(), whole.dims());
                let diff = max_diff(&streamed, &whole);
                let peak = whole.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff <= 1e-6 * peak,
                    "causal {causal}, {every} a time: differs by {diff} (peak {peak})"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_stream_refuses_fewer_frames_than_it_has_seen_missing_context_and_batches() -> Result<()> {
        let cfg = tiny_config(false);
        let weights = tiny_weights(&cfg)?;
        let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
        let codes = Tensor::zeros((1, 2, 20), DType::U32, &Device::Cpu)?;
        let mut stream = DecodeStream::default();
        decoder.decode_more(&mut stream, &codes, 0, false)?;
        let fewer = codes.narrow(2, 0, 10)?;
        assert!(decoder.decode_more(&mut stream, &fewer, 0, false).is_err());
        // Through its LSTM are 17 frames, whose convolutions read from frame 14 on.
        let late = codes.narrow(2, 15, 5)?;
        assert!(decoder.decode_more(&mut stream, &late, 15, true).is_err());
        let more = Tensor::zeros((1, 2, 30), DType::U32, &Device::Cpu)?;
        assert!(decoder.decode_more(&mut stream, &more, 0, true).is_ok());
        let two = Tensor::zeros((2, 2, 20), DType::U32, &Device::Cpu)?;
        assert!(decoder
            .decode_more(&mut DecodeStream::default(), &two, 0, false)
            .is_err());
        Ok(())
    }
}
