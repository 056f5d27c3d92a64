"""Son1k against Hugging Face transformers on the same MusicGen shape, threads and settings.

How to run (from the repository root, after `cargo build --release`; CPU only):

    python -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt
    .venv/bin/python tools/bench_side_by_side.py --threads 2 --dtype f32

Nothing is downloaded: both engines run the preset shape (musicgen-small by default) with random weights, which
cost the same to run as the published ones. Both use classifier-free guidance 3.0 (two rows per step), top-k 250
sampling, the same 13-token prompt length, and the same thread count (`torch.set_num_threads` for transformers,
`son1k bench --threads` for Son1k).

What is measured, on each side:
- decoder step: wall time per generated step (decoder forward on both rows, guidance, sampling) over the first
  `--steps` steps after a warm-up step. transformers is timed by a logits processor that notes the time at every
  step of its own `generate`; Son1k by `son1k bench`.
- EnCodec: decoding `--duration` seconds of codes to audio.
- real-time factor: Son1k's is measured end to end by `son1k bench`. For transformers a full 10 s run takes many
  minutes, so its figure is projected from its measured parts: text encoding + steps x mean step + EnCodec (its
  steps get slower as the KV cache grows, so the projection flatters it).

The table is printed with the machine's CPU and the thread count; the README shows one such table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TOKENS = 13  # the length of `son1k bench`'s prompt
GUIDANCE = 3.0
TOP_K = 250

SHAPES = {
    # name: (hidden, layers, heads)
    "musicgen-small": (1024, 24, 16),
    "musicgen-medium": (1536, 48, 24),
    "musicgen-large": (2048, 48, 32),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_son1k(args: argparse.Namespace) -> dict:
    binary = Path(args.son1k)
    if not binary.exists():
        sys.exit(f"{binary} not found: run `cargo build --release` first, or pass --son1k")
    command = [
        str(binary), "bench", "--preset", args.preset, "--dtype", args.dtype, "--threads", str(args.threads),
        "--steps", str(args.steps), "--duration", str(args.duration), "--json",
    ]
    print("running:", " ".join(command), file=sys.stderr)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def build_transformers_model(preset: str):
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)

    hidden, layers, heads = SHAPES[preset]
    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    audio = EncodecConfig(
        sampling_rate=32000, audio_channels=1, target_bandwidths=[2.2], upsampling_ratios=[8, 5, 4, 4],
        num_filters=64, hidden_size=128, codebook_size=2048, use_causal_conv=False, pad_mode="reflect",
        norm_type="weight_norm", num_lstm_layers=2, compress=2, kernel_size=7, last_kernel_size=7,
        residual_kernel_size=3, dilation_growth_rate=2, num_residual_layers=1, normalize=False,
        trim_right_ratio=1.0, chunk_length_s=None, overlap=None,
    )
    decoder = MusicgenDecoderConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=4 * hidden,
        num_codebooks=4, audio_channels=1, vocab_size=2048, max_position_embeddings=2048, pad_token_id=2048,
        bos_token_id=2048, activation_function="gelu",
    )
    config = MusicgenConfig.from_sub_models_config(text, audio, decoder)
    config.decoder_start_token_id = 2048
    config.pad_token_id = 2048
    model = MusicgenForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 2048
    model.generation_config.decoder_start_token_id = 2048
    return model


def run_transformers(args: argparse.Namespace) -> dict:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_transformers_model(args.preset)
    load_ms = (time.perf_counter() - started) * 1e3
    input_ids = torch.randint(0, 32000, (1, PROMPT_TOKENS))
    attention_mask = torch.ones_like(input_ids)

    class StepClock(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    with torch.inference_mode():
        started = time.perf_counter()
        model.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        text_ms = (time.perf_counter() - started) * 1e3

        clock = StepClock()
        model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=TOP_K,
            guidance_scale=GUIDANCE, max_new_tokens=args.steps + 2, logits_processor=LogitsProcessorList([clock]),
        )
        # Step i's time runs from the processor's call at step i - 1 to its call at step i; the first interval
        # (after the warm-up step) and everything before it are left out.
        intervals = [(b - a) * 1e3 for a, b in zip(clock.times[1:], clock.times[2:])]

        frames = round(args.duration * 50)
        codes = torch.randint(0, 2048, (1, 1, 4, frames))
        started = time.perf_counter()
        model.audio_encoder.decode(codes, [None])
        encodec_ms = (time.perf_counter() - started) * 1e3

    intervals.sort()
    median = statistics.median(intervals)
    p95 = intervals[min(len(intervals) - 1, round(0.95 * (len(intervals) - 1)))]
    projected_total_ms = text_ms + frames * statistics.fmean(intervals) + encodec_ms
    return {
        "load_ms": load_ms,
        "text_encode_ms": text_ms,
        "step_ms_median": median,
        "step_ms_p95": p95,
        "encodec_ms": encodec_ms,
        "rtf_projected": args.duration * 1e3 / projected_total_ms,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="musicgen-small", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="f32", help="Son1k's decoder precision (transformers runs f32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="decoder steps timed on each side")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of audio")
    parser.add_argument("--son1k", default="target/release/son1k")
    parser.add_argument("--json", action="store_true", help="print both reports as one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    son1k = run_son1k(args)
    hf = run_transformers(args)
    import transformers

    if args.json:
        print(json.dumps({"son1k": son1k, "transformers": hf, "transformers_version": transformers.__version__}))
        return
    print(f"{args.preset}, guidance {GUIDANCE}, {args.duration:g} s of audio, {args.threads} threads, {cpu_name()}")
    print(f"Son1k {son1k['dtype']} against transformers {transformers.__version__} (torch {hf['torch']}) f32\n")
    rows = [
        ("decoder step, median", son1k["step_ms_median"], hf["step_ms_median"], "ms"),
        ("decoder step, p95", son1k["step_ms_p95"], hf["step_ms_p95"], "ms"),
        (f"EnCodec, {args.duration:g} s", son1k["encodec_ms"], hf["encodec_ms"], "ms"),
        ("text encoding", son1k["text_encode_ms"], hf["text_encode_ms"], "ms"),
    ]
    print(f"| {'':24} | {'Son1k':>10} | {'transformers':>13} | {'speed-up':>8} |")
    print("|---|---:|---:|---:|")
    for name, ours, theirs, unit in rows:
        if ours is None:
            continue
        print(f"| {name:24} | {ours:7.1f} {unit} | {theirs:10.1f} {unit} | {theirs / ours:7.1f}x |")
    rtf = son1k.get("rtf")
    if rtf is not None:
        print(f"| {'real-time factor':24} | {rtf:10.3f} | {hf['rtf_projected']:9.3f} (p) | "
              f"{rtf / hf['rtf_projected']:7.1f}x |")
    print("\n(p): projected from transformers' measured parts; see this script's docstring.")


if __name__ == "__main__":
    main()
