"""Record transformers' EnCodec encoder, and a continuation, on the tiny parity checkpoints.

For each of tests/fixtures/musicgen-tiny-{mono,stereo} (made by tools/make_fixtures.py), this encodes a deterministic
test clip with the checkpoint's own `audio_encoder` and writes `encoder.safetensors` beside it:

* `audio`   [1, C, T] f32: the clip (T = 7013 samples, not a multiple of the 640-sample hop, so the last frame's
  padding is exercised);
* `latents` [1, D, N] f32: the SEANet encoder's output;
* `codes`   [1, K, N] i64: `EncodecModel.encode(audio).audio_codes[0]`, the residual quantizer's greedy choices.

and `continuation.safetensors`: transformers' `generate` (greedy, guidance 3.0) continuing that clip for a text prompt,
the clip given as `input_values` as the processor would (stereo checkpoints take it on both channels):

* `input_ids`, `attention_mask` [1, L] i64: the text prompt, tokenised;
* `max_new_tokens` [1] i64;
* `prompt_codes` [1, K, Tp] i64: the clip's codes as generate() fed them (K = 8 interleaved L/R for stereo);
* `codes` [1, K, F] i64: the codes generate() hands to EnCodec, the prompt's frames included;
* `audio` [1, C, F * 640] f32: the waveform generate() returns (the prompt re-synthesised, then the new frames).

How to run (from the repository root; CPU only, a few seconds), with the pinned versions of make_fixtures.py:

    python -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt && .venv/bin/python tools/make_encoder_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from safetensors.torch import save_file  # noqa: E402
from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerFast  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SAMPLES = 7013
# The continuation's text prompt and new tokens (the prompt's words are in the tiny tokenizer's vocabulary).
CONTINUATION_PROMPT = "90s rock song with loud guitars"
CONTINUATION_NEW_TOKENS = 9


def clip(channels: int, rate: int) -> torch.Tensor:
    """Two tones per channel and a little noise: a signal every codebook stage has work on."""
    rng = np.random.default_rng(7)
    t = np.arange(SAMPLES) / rate
    rows = []
    for c in range(channels):
        tone = 0.5 * np.sin(2 * np.pi * (220.0 + 110.0 * c) * t) + 0.25 * np.sin(2 * np.pi * 3100.0 * t + c)
        rows.append(tone + 0.05 * rng.standard_normal(SAMPLES))
    return torch.tensor(np.stack(rows)[None], dtype=torch.float32)


def main() -> None:
    for name in ["musicgen-tiny-mono", "musicgen-tiny-stereo"]:
        directory = FIXTURES / name
        model = MusicgenForConditionalGeneration.from_pretrained(directory).eval()
        codec = model.audio_encoder
        audio = clip(codec.config.audio_channels, codec.config.sampling_rate)
        with torch.no_grad():
            latents = codec.encoder(audio)
            codes = codec.encode(audio).audio_codes[0]
        save_file(
            {
                "audio": audio.contiguous(),
                "latents": latents.contiguous(),
                "codes": codes.to(torch.int64).contiguous(),
            },
            directory / "encoder.safetensors",
        )
        print(name, "audio", tuple(audio.shape), "codes", tuple(codes.shape), codes[0, :, :6].tolist())
        continuation(model, directory, audio)


def continuation(model, directory: Path, audio: torch.Tensor) -> None:
    """Greedy generate() from the clip as an audio prompt; records what EnCodec is handed."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    text = tokenizer(CONTINUATION_PROMPT, return_tensors="pt", return_token_type_ids=False)
    stereo = model.decoder.config.audio_channels == 2
    prompt_audio = audio.repeat(1, 2, 1) if stereo else audio
    with torch.no_grad():
        left = model.audio_encoder.encode(prompt_audio[:, :1]).audio_codes[0]
        if stereo:
            right = model.audio_encoder.encode(prompt_audio[:, 1:]).audio_codes[0]
            prompt_codes = torch.stack([left, right], dim=2).reshape(1, -1, left.shape[-1])
        else:
            prompt_codes = left
    captured: list[torch.Tensor] = []
    original = model.audio_encoder.decode

    def hooked(audio_codes, *args, **kwargs):
        captured.append(audio_codes.clone())
        return original(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = hooked
    with torch.no_grad():
        waveform = model.generate(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            input_values=prompt_audio,
            do_sample=False,
            guidance_scale=3.0,
            max_new_tokens=CONTINUATION_NEW_TOKENS,
        )
    model.audio_encoder.decode = original
    if stereo:
        left, right = captured[0][0], captured[1][0]
        codes = torch.stack([left, right], dim=2).reshape(1, -1, left.shape[-1])
    else:
        codes = captured[0][0]
    assert torch.equal(codes[..., : prompt_codes.shape[-1]], prompt_codes), "the output keeps the prompt"
    save_file(
        {
            "input_ids": text["input_ids"].to(torch.int64).contiguous(),
            "attention_mask": text["attention_mask"].to(torch.int64).contiguous(),
            "max_new_tokens": torch.tensor([CONTINUATION_NEW_TOKENS], dtype=torch.int64),
            "prompt_codes": prompt_codes.to(torch.int64).contiguous(),
            "codes": codes.to(torch.int64).contiguous(),
            "audio": waveform.float().contiguous(),
        },
        directory / "continuation.safetensors",
    )
    print(directory.name, "continuation", tuple(prompt_codes.shape), "->", tuple(codes.shape), codes[0].tolist())


if __name__ == "__main__":
    main()
