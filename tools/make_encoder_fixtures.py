"""Record transformers' EnCodec encoder on the tiny parity checkpoints.

For each of tests/fixtures/musicgen-tiny-{mono,stereo} (made by tools/make_fixtures.py), this encodes a deterministic
test clip with the checkpoint's own `audio_encoder` and writes `encoder.safetensors` beside it:

* `audio`   [1, C, T] f32: the clip (T = 7013 samples, not a multiple of the 640-sample hop, so the last frame's
  padding is exercised);
* `latents` [1, D, N] f32: the SEANet encoder's output;
* `codes`   [1, K, N] i64: `EncodecModel.encode(audio).audio_codes[0]`, the residual quantizer's greedy choices.

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
from transformers import MusicgenForConditionalGeneration  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SAMPLES = 7013


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


if __name__ == "__main__":
    main()
