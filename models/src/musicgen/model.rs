//! The MusicGen model and its step API: encode the text once, step the decoder one column
//! at a time against a per-job cache, decode frames to audio with EnCodec.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

use super::config::{Config, GenerationConfig};
use super::decoder::{self, Decoder, DecoderCache};
use super::tokenizer::PromptTokenizer;
use crate::encodec::{DecodeStream, EncodecDecoder, EncodecEncoder};
use crate::error::{ModelError, Result};
use crate::quant::WeightFormat;
use crate::t5::T5Encoder;
use crate::weights::Weights;

/// File names of a Hugging Face MusicGen checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// Default sampling settings.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The T5 prompt tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Projected text states and their mask, for the rows of one job (conditional first, then
/// the unconditional row when guidance is on).
pub struct TextConditioning {
    /// `[rows, T, decoder hidden]`, zero on padding and on the unconditional row.
    pub states: Tensor,
    /// `[rows, T]`, 1 for tokens, 0 for padding and for the unconditional row.
    pub mask: Tensor,
}

/// What a job's decoder is conditioned on, one row per guidance branch.
pub enum Conditioning {
    /// The projected text, cross-attended (MusicGen).
    CrossAttention(TextConditioning),
    /// Chroma then text, `[rows, chroma_length + T, hidden]`, run before the audio tokens
    /// (MusicGen-Melody).
    Prefix(Tensor),
}

impl Conditioning {
    /// Positions the conditioning takes in the decoder before the audio.
    pub fn prefix_positions(&self) -> Result<usize> {
        match self {
            Self::CrossAttention(_) => Ok(0),
            Self::Prefix(states) => Ok(states.dim(1)?),
        }
    }
}

/// A loaded MusicGen model. Immutable once loaded: per-job state lives in
/// [`super::Generation`] and [`DecoderCache`].
pub struct MusicGen {
    config: Config,
    generation: GenerationConfig,
    tokenizer: Option<PromptTokenizer>,
    text_encoder: T5Encoder,
    enc_to_dec_proj: Option<Linear>,
    /// Melody: `audio_enc_to_dec_proj`, the chroma's projection (`None` where the chroma is
    /// as wide as the decoder, and for plain MusicGen).
    chroma_proj: Option<Linear>,
    decoder: Decoder,
    audio: EncodecDecoder,
    /// EnCodec's encoder, for audio prompts.
    audio_in: EncodecEncoder,
    device: Device,
}

impl MusicGen {
    /// Loads a checkpoint directory in the Hugging Face layout. The decoder runs in `dtype`
    /// with its large projections stored in `format`; the text encoder and EnCodec always
    /// run in f32.
    pub fn load(dir: &Path, device: &Device, dtype: DType, format: WeightFormat) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                path: dir.to_path_buf(),
                what: "the model checkpoint directory",
            });
        }
        let config = Config::from_file(&dir.join(CONFIG_FILE))?;
        let generation_path = dir.join(GENERATION_CONFIG_FILE);
        let generation = if generation_path.is_file() {
            GenerationConfig::from_file(&generation_path)?
        } else {
            GenerationConfig::default()
        };
        let tokenizer = PromptTokenizer::from_file(&dir.join(TOKENIZER_FILE))?;
        let weights = Weights::from_dir(dir, device)?;
        Self::from_weights(config, generation, Some(tokenizer), &weights, dtype, format)
    }

    /// Builds the model from weights already opened (files, in-memory or random).
    pub fn from_weights(
        config: Config,
        generation: GenerationConfig,
        tokenizer: Option<PromptTokenizer>,
        weights: &Weights,
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self> {
        config.validate()?;
        let root = weights.root(dtype);
        let f32_root = weights.root(DType::F32);
        let text_encoder = T5Encoder::new(&config.text_encoder, f32_root.pp("text_encoder"))?;
        let h = config.decoder.hidden_size;
        let d_text = config.text_encoder.d_model;
        let enc_to_dec_proj = if config.has_enc_to_dec_proj() {
            let vb = f32_root.pp("enc_to_dec_proj");
            Some(Linear::new(
                vb.get(&[h, d_text], "weight")?,
                Some(vb.get(&[h], "bias")?),
            ))
        } else {
            None
        };
        let chroma_proj = if config.has_audio_enc_to_dec_proj() {
            let vb = f32_root.pp("audio_enc_to_dec_proj");
            Some(Linear::new(
                vb.get(&[h, config.num_chroma], "weight")?,
                Some(vb.get(&[h], "bias")?),
            ))
        } else {
            None
        };
        let cross_in = if config.is_melody() {
            None
        } else if config.has_enc_to_dec_proj() {
            Some(h)
        } else {
            Some(config.decoder.cross_attention_hidden_size.unwrap_or(d_text))
        };
        let decoder = Decoder::new(&config.decoder, cross_in, root.pp("decoder"), format)?;
        let audio = EncodecDecoder::new(&config.audio_encoder, f32_root.pp("audio_encoder"))?;
        let audio_in = EncodecEncoder::new(&config.audio_encoder, f32_root.pp("audio_encoder"))?;
        Ok(Self {
            device: weights.device().clone(),
            config,
            generation,
            tokenizer,
            text_encoder,
            enc_to_dec_proj,
            chroma_proj,
            decoder,
            audio,
            audio_in,
        })
    }

    /// The checkpoint's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The checkpoint's default sampling settings.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The dtype the decoder computes in.
    pub fn decoder_dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// The dtype the decoder's self-attention cache stores keys and values in.
    pub fn kv_cache_dtype(&self) -> DType {
        self.decoder.kv_dtype()
    }

    /// Stores the self-attention keys and values of jobs started from now on in `dtype`:
    /// the decoder's own dtype, or f16 to halve what each step reads of them. Other dtypes
    /// are refused.
    pub fn set_kv_cache_dtype(&mut self, dtype: DType) -> Result<()> {
        if dtype != self.decoder.dtype() && dtype != DType::F16 {
            return Err(ModelError::UnsupportedConfig {
                field: "kv_cache".into(),
                message: format!(
                    "a {dtype:?} cache for a {:?} decoder; use its own dtype or f16",
                    self.decoder.dtype()
                ),
            });
        }
        self.decoder.set_kv_dtype(dtype);
        Ok(())
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Output sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.config.audio_encoder.sampling_rate
    }

    /// Output channels (1, or 2 for stereo checkpoints).
    pub fn channels(&self) -> usize {
        self.config.decoder.audio_channels
    }

    /// Tokenizes a prompt; every id is checked against the text encoder's vocabulary.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::UnsupportedConfig {
                field: "tokenizer".into(),
                message: "this model was built without a tokenizer; pass token ids".into(),
            })?;
        let ids = tokenizer.encode(prompt)?;
        self.check_token_ids(&ids)?;
        Ok(ids)
    }

    fn check_token_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.text_encoder.vocab_size;
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(ModelError::UnsupportedConfig {
                field: "text_encoder.vocab_size".into(),
                message: format!(
                    "the tokenizer produced id {id}, outside the vocabulary of {vocab}"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Runs the text encoder once for a job: T5, `enc_to_dec_proj`, times the mask. With
    /// `guidance`, a second, all-zero row (zero states, zero mask) is the unconditional
    /// branch of classifier-free guidance.
    pub fn encode_text(&self, ids: &[u32], guidance: bool) -> Result<TextConditioning> {
        self.check_token_ids(ids)?;
        let t = ids.len();
        let ids_bt = Tensor::from_vec(ids.to_vec(), (1, t), &self.device)?;
        let mask_bt = Tensor::ones((1, t), DType::F32, &self.device)?;
        let mut states = self.text_encoder.forward(&ids_bt, &mask_bt)?;
        if let Some(proj) = &self.enc_to_dec_proj {
            states = proj.forward(&states)?;
        }
        // Zeroing padded positions after the projection removes its bias there, as the
        // reference does.
        states = states.broadcast_mul(&mask_bt.unsqueeze(2)?)?;
        if guidance {
            Ok(TextConditioning {
                states: Tensor::cat(&[&states, &states.zeros_like()?], 0)?,
                mask: Tensor::cat(&[&mask_bt, &mask_bt.zeros_like()?], 0)?,
            })
        } else {
            Ok(TextConditioning {
                states,
                mask: mask_bt,
            })
        }
    }

    /// A job's conditioning: the text alone for MusicGen; for MusicGen-Melody the chroma
    /// of the song (`chroma`: a class per frame, from
    /// [`melody_chroma`](super::chroma::melody_chroma); `None` for no song) projected and
    /// tiled to `chroma_length`, then the text. With `guidance`, a second row is the
    /// unconditional branch: no text, and the one-hot-0 chroma.
    pub fn condition(
        &self,
        ids: &[u32],
        chroma: Option<&[usize]>,
        guidance: bool,
    ) -> Result<Conditioning> {
        let text = self.encode_text(ids, guidance)?;
        if !self.config.is_melody() {
            return match chroma {
                Some(_) => Err(ModelError::NoMelody {
                    model_type: self.config.model_type.clone(),
                }),
                None => Ok(Conditioning::CrossAttention(text)),
            };
        }
        let silent = [0usize];
        let mut rows = vec![self.chroma_states(chroma.unwrap_or(&silent))?];
        if guidance {
            rows.push(self.chroma_states(&silent)?);
        }
        let chroma = Tensor::cat(&rows, 0)?;
        Ok(Conditioning::Prefix(Tensor::cat(
            &[&chroma, &text.states],
            1,
        )?))
    }

    /// One row of projected chroma `[1, chroma_length, hidden]`: the one-hot `classes`
    /// projected, repeated until long enough, then cut to length.
    fn chroma_states(&self, classes: &[usize]) -> Result<Tensor> {
        let bins = self.config.num_chroma;
        let length = self.config.chroma_length;
        if let Some(bad) = classes.iter().find(|&&c| c >= bins) {
            return Err(ModelError::BadPrompt(format!(
                "chroma class {bad} is past the {bins} classes"
            )));
        }
        let classes = if classes.is_empty() {
            &[0][..]
        } else {
            classes
        };
        let mut one_hot = vec![0f32; classes.len() * bins];
        for (frame, &class) in classes.iter().enumerate() {
            one_hot[frame * bins + class] = 1.0;
        }
        let one_hot = Tensor::from_vec(one_hot, (1, classes.len(), bins), &self.device)?;
        let projected = match &self.chroma_proj {
            Some(proj) => proj.forward(&one_hot)?,
            None => one_hot,
        };
        let repeats = length.div_ceil(classes.len());
        let tiled = Tensor::cat(&vec![&projected; repeats], 1)?;
        Ok(tiled.narrow(1, 0, length)?)
    }

    /// A decoder cache for a job of `columns` audio positions (after any prefix, which
    /// runs now).
    pub fn new_cache(&self, conditioning: &Conditioning, columns: usize) -> Result<DecoderCache> {
        let input = match conditioning {
            Conditioning::CrossAttention(text) => decoder::Conditioning::CrossAttention {
                states: &text.states,
                mask: &text.mask,
            },
            Conditioning::Prefix(states) => decoder::Conditioning::Prefix(states),
        };
        self.decoder.new_cache(input, columns)
    }

    /// One decoder pass: feeds `column` (one token per codebook) to every row of the cache
    /// and returns the logits of the next column, `[rows, K, vocab]`.
    pub fn step(&self, column: &[u32], cache: &mut DecoderCache, rows: usize) -> Result<Tensor> {
        self.step_columns(&[column], cache, rows)
    }

    /// One decoder pass over several columns (`columns[t][k]`), as a job's first pass
    /// feeds its start column and a continuation's prompt; returns the logits after the
    /// last, `[rows, K, vocab]`.
    pub fn step_columns(
        &self,
        columns: &[&[u32]],
        cache: &mut DecoderCache,
        rows: usize,
    ) -> Result<Tensor> {
        let k = columns.first().map_or(0, |c| c.len());
        if columns.iter().any(|c| c.len() != k) {
            return Err(ModelError::BadPrompt(
                "columns of different codebook counts".into(),
            ));
        }
        let t = columns.len();
        let one_row = (0..k).flat_map(|codebook| columns.iter().map(move |c| c[codebook]));
        let ids: Vec<u32> = (0..rows).flat_map(|_| one_row.clone()).collect();
        let ids = Tensor::from_vec(ids, (rows, k, t), &self.device)?;
        crate::kernels::on_pool(|| self.decoder.forward(&ids, cache))
    }

    /// Encodes a mono clip at the model's rate into prompt codes `[K][ceil(T / hop)]` for a
    /// continuation; a stereo model gets the clip on both channels, its codebooks
    /// interleaved L/R as the decoder reads them.
    pub fn encode_prompt(&self, mono: &[f32]) -> Result<Vec<Vec<u32>>> {
        let audio = Tensor::from_slice(mono, (1, 1, mono.len()), &self.device)?;
        let codes = crate::kernels::on_pool(|| self.audio_in.encode(&audio))?;
        let rows: Vec<Vec<u32>> = codes.squeeze(0)?.to_vec2()?;
        let channels = self.channels();
        let per_channel = self.config.decoder.channel_codebooks();
        Ok(rows
            .into_iter()
            .take(per_channel)
            .flat_map(|row| std::iter::repeat_n(row, channels))
            .collect())
    }

    /// Decodes frames (`[K][N]`, codebooks interleaved L/R for stereo) to audio
    /// `[channels, N * hop]`: stereo is two mono decodes of the even and odd codebooks.
    pub fn decode_audio(&self, frames: &[Vec<u32>]) -> Result<Tensor> {
        let per_channel: Vec<Tensor> = (0..self.channels())
            .map(|c| {
                let codes = self.channel_codes(frames, c)?;
                // [1, 1, samples] -> [1, samples]
                Ok(crate::kernels::on_pool(|| self.audio.decode(&codes))?.squeeze(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&per_channel, 0)?)
    }

    /// Decodes what more of a piece's frames add, as they arrive: `frames` (laid out as
    /// [`Self::decode_audio`] takes them) are the piece's frames from frame `first` on, which
    /// must be at most [`Self::preview_context`] frames before the audio decoded so far;
    /// `streams` holds one [`DecodeStream`] per channel (empty at the start). Returns the
    /// index of the audio's first sample in the piece and its samples, one row per channel:
    /// up to [`Self::preview_delay`] frames short of `frames`' end, or to it when `done`.
    /// Each frame's audio is decoded once, and is [`Self::decode_audio`]'s to rounding.
    /// After an error the streams are out of step: start again or stop.
    pub fn decode_more(
        &self,
        streams: &mut Vec<DecodeStream>,
        frames: &[Vec<u32>],
        first: usize,
        done: bool,
    ) -> Result<(usize, Vec<Vec<f32>>)> {
        streams.resize_with(self.channels(), DecodeStream::default);
        let start = streams.first().map_or(0, DecodeStream::sent) * self.audio.hop_length();
        let mut channels = Vec::with_capacity(streams.len());
        for (c, stream) in streams.iter_mut().enumerate() {
            let codes = self.channel_codes(frames, c)?;
            let audio =
                crate::kernels::on_pool(|| self.audio.decode_more(stream, &codes, first, done))?;
            channels.extend(audio.squeeze(0)?.to_vec2::<f32>()?);
        }
        Ok((start, channels))
    }

    /// Frames [`Self::decode_more`] holds back behind those it is given, until the piece
    /// is done.
    pub fn preview_delay(&self) -> Result<usize> {
        self.audio.stream_delay()
    }

    /// Frames before the audio decoded so far that [`Self::decode_more`]'s next frames
    /// must start at or before.
    pub fn preview_context(&self) -> Result<usize> {
        self.audio.stream_context()
    }

    /// Channel `c`'s codebooks of `frames`, `[1, K / channels, N]`.
    fn channel_codes(&self, frames: &[Vec<u32>], c: usize) -> Result<Tensor> {
        let channels = self.channels();
        let rows: Vec<u32> = frames
            .iter()
            .skip(c)
            .step_by(channels)
            .flat_map(|row| row.iter().copied())
            .collect();
        let k = frames.len() / channels;
        let n = frames.first().map_or(0, Vec::len);
        Ok(Tensor::from_vec(rows, (1, k, n), &self.device)?)
    }
}
