"""Record transformers' MusicGen-Melody chroma on test songs.

Writes tests/fixtures/melody-chroma.safetensors: for each song `name` (see SONGS), `name.audio` [T] i16 (the 32 kHz mono
samples, scaled by 32768 to give the extractor's float input) and `name.chroma` [frames, 12] i64, the one-hot
`input_features` of `MusicgenMelodyFeatureExtractor` (transformers 4.47.1, default settings: n_fft 16384, hop 4096,
argmax). The songs are made here, deterministically.

How to run (from the repository root; CPU only, a few seconds), with the pinned versions of make_fixtures.py:

    python -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt && .venv/bin/python tools/make_chroma_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from safetensors.torch import save_file  # noqa: E402
from transformers import MusicgenMelodyFeatureExtractor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATE = 32000


def melody(seconds: float, notes: list[int], seed: int) -> np.ndarray:
    """Notes (MIDI numbers) of equal length with three harmonics, a soft noise floor, as int16."""
    rng = np.random.default_rng(seed)
    total = int(seconds * RATE)
    per_note = total // len(notes)
    out = np.zeros(total)
    for n, midi in enumerate(notes):
        hz = 440.0 * 2 ** ((midi - 69) / 12)
        t = np.arange(per_note) / RATE
        tone = sum(0.4 / h * np.sin(2 * np.pi * hz * h * t) for h in (1, 2, 3))
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) * 50)
        out[n * per_note : (n + 1) * per_note] = tone * fade
    out += 0.01 * rng.standard_normal(total)
    return np.round(np.clip(out, -1, 1) * 32767).astype(np.int16)


SONGS = {
    # C major up and down, then a few leaps: every frame has one clear class.
    "scale": melody(6.0, [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 61, 66], seed=1),
    # Shorter than one window: the extractor zero-pads it to 16384 samples.
    "short": melody(0.3, [57], seed=2),
    # Silence then a note: empty frames are class 0.
    "gap": np.concatenate([np.zeros(RATE, dtype=np.int16), melody(1.0, [70], seed=3)]),
}


def main() -> None:
    extractor = MusicgenMelodyFeatureExtractor()
    tensors = {}
    for name, samples in SONGS.items():
        audio = samples.astype(np.float32) / 32768.0
        chroma = extractor(audio, sampling_rate=RATE, return_tensors="pt")["input_features"][0]
        tensors[f"{name}.audio"] = torch.from_numpy(samples.copy())
        tensors[f"{name}.chroma"] = chroma.to(torch.int64).contiguous()
        print(name, len(samples), tuple(chroma.shape), chroma.argmax(-1).tolist())
    save_file(tensors, ROOT / "tests" / "fixtures" / "melody-chroma.safetensors")


if __name__ == "__main__":
    main()
