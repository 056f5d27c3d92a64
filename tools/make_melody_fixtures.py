"""Build tiny random MusicGen-Melody checkpoints and record transformers' outputs on them.

Writes tests/fixtures/musicgen-tiny-melody/ (mono, 4 codebooks) and tests/fixtures/musicgen-tiny-melody-stereo/
(8 codebooks, interleaved L/R), each a `MusicgenMelodyForConditionalGeneration` saved with `save_pretrained` exactly like
a hub checkpoint (`config.json` with `model_type "musicgen_melody"`, `generation_config.json`, `model.safetensors`,
`tokenizer.json`). The text encoder, `enc_to_dec_proj` and EnCodec are those of tests/fixtures/musicgen-tiny-mono (made
by tools/make_fixtures.py); the decoder (no cross-attention) and `audio_enc_to_dec_proj` are random, with a seed chosen
so every greedy choice has a clear top-2 gap.

`melody.safetensors` beside each holds transformers' greedy `generate` (guidance 3.0):

* `song` [T] i16: a 32 kHz mono test song made here (2.5 s of notes), scaled by 32768 for the extractor;
* `chroma` [1, F, 12] f32: `MusicgenMelodyFeatureExtractor(song)["input_features"]`;
* `input_ids` [1, L] i64 and `max_new_tokens` [1] i64;
* `melody.codes` [1, K, N] i64 and `melody.audio` [1, C, S] f32: with the song;
* `text.codes` and `text.audio`: the same prompt without a song (the one-hot-0 chroma conditions both branches).

How to run (from the repository root; CPU only, a few seconds; after tools/make_fixtures.py), with its pinned versions:

    python -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt && .venv/bin/python tools/make_melody_fixtures.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyFeatureExtractor,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedTokenizerFast,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_chroma_fixtures  # noqa: E402
import make_fixtures as base  # noqa: E402

PROMPT = "happy jazz with piano"
NEW_TOKENS = 12
MIN_GAP = 0.03
CHROMA_PROJ_STD = 1.0
SONG = make_chroma_fixtures.melody(2.5, [67, 64, 60, 62, 71, 69, 65, 72], seed=5)


def build(stereo: bool, seed: int) -> MusicgenMelodyForConditionalGeneration:
    donor = MusicgenForConditionalGeneration.from_pretrained(base.FIXTURES / "musicgen-tiny-mono").eval()
    decoder = MusicgenMelodyDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=2048,
        hidden_size=base.DEC_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=4 * base.DEC_HIDDEN,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=base.PAD,
        bos_token_id=base.PAD,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    config = MusicgenMelodyConfig.from_sub_models_config(
        donor.config.text_encoder, donor.config.audio_encoder, decoder, num_chroma=12, chroma_length=235
    )
    model = MusicgenMelodyForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_encoder.load_state_dict(donor.text_encoder.state_dict())
        model.enc_to_dec_proj.load_state_dict(donor.enc_to_dec_proj.state_dict())
        model.audio_encoder.load_state_dict(donor.audio_encoder.state_dict())
        g = torch.Generator().manual_seed(seed)
        for name, p in model.decoder.named_parameters():
            if name.endswith("embed_positions.weights"):
                continue
            if "layer_norm" in name and name.endswith(".weight"):
                v = 1.0 + torch.randn(p.shape, generator=g) * base.LN_WEIGHT_JITTER
            elif "layer_norm" in name:
                v = torch.randn(p.shape, generator=g) * base.LN_BIAS_STD
            elif "embed_tokens" in name:
                v = torch.randn(p.shape, generator=g) * base.DEC_EMB_STD
            elif "lm_heads" in name:
                v = torch.randn(p.shape, generator=g) * base.LM_HEAD_STD
            else:
                v = torch.randn(p.shape, generator=g) * base.DEC_WEIGHT_STD
            p.copy_(v)
        for p in model.audio_enc_to_dec_proj.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * CHROMA_PROJ_STD)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=base.PAD,
        pad_token_id=base.PAD,
        bos_token_id=base.PAD,
        do_sample=True,
        guidance_scale=base.GUIDANCE_SCALE,
        max_length=1500,
    )
    return model


def run(model, text, chroma):
    """Greedy generate; returns the codes handed to EnCodec ([1, K, N], interleaved for stereo), the audio and the
    smallest top-2 gap of the guided scores."""
    captured: list[torch.Tensor] = []
    original = model.audio_encoder.decode

    def hooked(audio_codes, *args, **kwargs):
        captured.append(audio_codes.clone())
        return original(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = hooked
    extra = {} if chroma is None else {"input_features": chroma}
    with torch.no_grad():
        out = model.generate(
            **text,
            **extra,
            do_sample=False,
            guidance_scale=base.GUIDANCE_SCALE,
            max_new_tokens=NEW_TOKENS,
            output_scores=True,
            return_dict_in_generate=True,
        )
    model.audio_encoder.decode = original
    if len(captured) == 2:
        left, right = captured[0][0], captured[1][0]
        codes = torch.stack([left, right], dim=2).reshape(1, -1, left.shape[-1])
    else:
        codes = captured[0][0]
    gap = min(float(base.top2_gap(s).min()) for s in out.scores)
    return codes.to(torch.int64), out.sequences.float(), gap


def main() -> None:
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(base.FIXTURES / "musicgen-tiny-mono" / "tokenizer.json"))
    text = tokenizer(PROMPT, return_tensors="pt", return_token_type_ids=False)
    song = SONG.astype(np.float32) / 32768.0
    chroma = MusicgenMelodyFeatureExtractor()(song, sampling_rate=32000, return_tensors="pt")["input_features"]
    for name, stereo in [("musicgen-tiny-melody", False), ("musicgen-tiny-melody-stereo", True)]:
        for seed in range(1, 200):
            model = build(stereo, seed)
            melody = run(model, text, chroma)
            plain = run(model, text, None)
            if min(melody[2], plain[2]) > MIN_GAP and not torch.equal(melody[0], plain[0]):
                break
        else:
            raise RuntimeError("no seed gives clear greedy choices")
        out_dir = base.FIXTURES / name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        model.save_pretrained(out_dir, safe_serialization=True)
        model.generation_config.save_pretrained(out_dir)
        shutil.copy(base.FIXTURES / "musicgen-tiny-mono" / "tokenizer.json", out_dir / "tokenizer.json")
        reloaded = MusicgenMelodyForConditionalGeneration.from_pretrained(out_dir).eval()
        assert torch.equal(run(reloaded, text, chroma)[0], melody[0]), "reload mismatch"
        save_file(
            {
                "song": torch.from_numpy(SONG.copy()),
                "chroma": chroma.float().contiguous(),
                "input_ids": text["input_ids"].to(torch.int64).contiguous(),
                "max_new_tokens": torch.tensor([NEW_TOKENS], dtype=torch.int64),
                "melody.codes": melody[0].contiguous(),
                "melody.audio": melody[1].contiguous(),
                "text.codes": plain[0].contiguous(),
                "text.audio": plain[1].contiguous(),
            },
            out_dir / "melody.safetensors",
        )
        print(name, "seed", seed, "gaps", melody[2], plain[2], "codes", tuple(melody[0].shape), melody[0][0].tolist())


if __name__ == "__main__":
    main()
