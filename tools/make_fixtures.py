"""Build the tiny random MusicGen parity fixtures under tests/fixtures/.

How to run (from the repository root; CPU only, takes a few seconds):

    python -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt && .venv/bin/python tools/make_fixtures.py

Nothing is downloaded from the Hugging Face hub: the two checkpoints
(`tests/fixtures/musicgen-tiny-mono/` and `tests/fixtures/musicgen-tiny-stereo/`) are built locally with
`transformers.MusicgenForConditionalGeneration` from hand-written configs, re-initialised with a fixed seed, and saved
with `save_pretrained` exactly like a hub checkpoint (`config.json`, `generation_config.json`, `model.safetensors`,
`tokenizer.json`). A small T5-style Unigram `tokenizer.json` is built with the `tokenizers` library.

Each directory also gets the reference outputs of transformers' own `generate` (greedy, classifier-free guidance 3.0):
`expected.safetensors` (tensors) and `expected.json` (human-readable metadata). The outputs are cross-checked against
an independent, cache-free re-implementation of the generation loop (delay pattern + CFG) written in this file.

The script is deterministic (fixed seeds, single thread, CPU); rerunning it rewrites byte-identical tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# Seeds picked by scanning a few: every kept greedy slot has a top-2 logit gap > MIN_GAP, and the greedy codes are
# not degenerate (fraction of frames repeating the previous frame's token, per codebook row, <= MAX_REPEAT).
SEED_MONO = 48
SEED_STEREO = 41
MIN_GAP = 0.03
MAX_REPEAT = 0.2
PROMPTS = [
    ("90s rock song with loud guitars", 12),
    ("lofi piano", 20),
]
GUIDANCE_SCALE = 3.0
PAD = 2048  # pad == bos == decoder_start
SAMPLES_PER_FRAME = 8 * 5 * 4 * 4  # 640 -> 50 frames/s at 32 kHz

# Sizes. The decoder hidden size (16) deliberately differs from the T5 d_model (32): transformers only creates
# `enc_to_dec_proj` when the two differ, and every released MusicGen checkpoint has that projection (768 -> H).
T5_D_MODEL = 32
DEC_HIDDEN = 16
ENCODEC_HIDDEN = 8  # = codebook_dim (real: 128)
ENCODEC_FILTERS = 2  # SEANet base width; LSTM width = 2 * 16 = 32 (real: 64 -> 1024)

# Init scales (chosen so that greedy argmax has clear top-2 gaps and the audio has a sane amplitude).
T5_EMB_STD = 1.0
T5_LINEAR_STD = 0.3
T5_REL_BIAS_STD = 0.5
PROJ_STD = 0.3
DEC_EMB_STD = 1.0
DEC_WEIGHT_STD = 0.2
LM_HEAD_STD = 1.0
LN_WEIGHT_JITTER = 0.1
LN_BIAS_STD = 0.1
CONV_GAIN = 1.0
CONV_BIAS_STD = 0.05
LSTM_STD_SCALE = 1.0
CODEBOOK_STD = 1.0


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------

WORDS = ["rock", "jazz", "piano", "lofi", "drums", "with", "song", "happy", "guitar", "beat", "and", "the"]


def build_tokenizer() -> Tokenizer:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    vocab += [("\u2581" + w, -3.0 - 0.1 * i) for i, w in enumerate(WORDS)]
    vocab += [("\u2581" + c, -5.0 - 0.01 * i) for i, c in enumerate(letters)]
    vocab += [(c, -6.0 - 0.01 * i) for i, c in enumerate(letters)]
    vocab += [(str(d), -6.5 - 0.01 * d) for d in range(10)]
    vocab += [(p, -7.0 - 0.01 * i) for i, p in enumerate([".", ",", "!", "?", "-", "'"])]
    assert len({p for p, _ in vocab}) == len(vocab)

    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.add_special_tokens(
        [AddedToken("<pad>", special=True), AddedToken("</s>", special=True), AddedToken("<unk>", special=True)]
    )
    return tok


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


def build_config(vocab_size: int, stereo: bool) -> MusicgenConfig:
    text = T5Config(
        vocab_size=vocab_size,
        d_model=T5_D_MODEL,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio = EncodecConfig(
        sampling_rate=32000,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[2.2],
        num_filters=ENCODEC_FILTERS,
        hidden_size=ENCODEC_HIDDEN,
        codebook_size=2048,
        use_causal_conv=False,
        pad_mode="reflect",
        norm_type="weight_norm",
        num_lstm_layers=2,
        compress=2,
        residual_kernel_size=3,
        kernel_size=7,
        last_kernel_size=7,
        use_conv_shortcut=False,
        normalize=False,
        audio_channels=1,
        chunk_length_s=None,
        overlap=None,
    )
    assert audio.frame_rate == 50 and audio.num_quantizers == 4, (audio.frame_rate, audio.num_quantizers)
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=2048,
        hidden_size=DEC_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=4 * DEC_HIDDEN,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=PAD,
        bos_token_id=PAD,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    return MusicgenConfig.from_sub_models_config(text, audio, decoder)


@torch.no_grad()
def reinit(model: MusicgenForConditionalGeneration, seed: int) -> None:
    # one generator per top-level component, so that e.g. resizing EnCodec does not change the decoder weights
    components = ["text_encoder", "enc_to_dec_proj", "decoder", "audio_encoder"]
    gens = {c: torch.Generator().manual_seed(seed * 100 + i) for i, c in enumerate(components)}
    g = None

    def normal(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std

    for name, p in model.named_parameters():
        shape = p.shape
        g = gens[name.split(".")[0]]
        if name.endswith("embed_positions.weights"):
            continue  # deterministic sinusoid table, keep
        if name.startswith("text_encoder."):
            if "layer_norm" in name:
                v = 1.0 + normal(shape, LN_WEIGHT_JITTER)
            elif name.endswith("shared.weight") or name.endswith("embed_tokens.weight"):
                v = normal(shape, T5_EMB_STD)
            elif "relative_attention_bias" in name:
                v = normal(shape, T5_REL_BIAS_STD)
            else:
                v = normal(shape, T5_LINEAR_STD)
        elif name.startswith("enc_to_dec_proj."):
            v = normal(shape, PROJ_STD)
        elif name.startswith("decoder."):
            if "layer_norm" in name and name.endswith(".weight"):
                v = 1.0 + normal(shape, LN_WEIGHT_JITTER)
            elif "layer_norm" in name and name.endswith(".bias"):
                v = normal(shape, LN_BIAS_STD)
            elif "embed_tokens" in name:
                v = normal(shape, DEC_EMB_STD)
            elif "lm_heads" in name:
                v = normal(shape, LM_HEAD_STD)
            else:
                v = normal(shape, DEC_WEIGHT_STD)
        elif name.startswith("audio_encoder."):
            if name.endswith("original0") or name.endswith("weight_g"):
                # weight-norm magnitude g: per output channel norm of the effective weight
                v = CONV_GAIN * (0.5 + torch.rand(shape, generator=g, dtype=torch.float32))
            elif name.endswith("original1") or name.endswith("weight_v"):
                v = normal(shape, 1.0)
            elif ".lstm." in name:
                hidden = p.shape[-1] if "weight" in name else p.shape[0] // 4
                v = normal(shape, LSTM_STD_SCALE / hidden**0.5)
            elif name.endswith(".bias"):
                v = normal(shape, CONV_BIAS_STD)
            else:
                raise RuntimeError(f"unhandled audio_encoder parameter {name}")
        else:
            raise RuntimeError(f"unhandled parameter {name}")
        p.copy_(v)

    # EnCodec codebooks are buffers (inited, cluster_size, embed, embed_avg); decoding uses `embed`.
    g = gens["audio_encoder"]
    for name, b in model.named_buffers():
        if not name.startswith("audio_encoder.quantizer."):
            continue
        if name.endswith(".embed"):
            b.copy_(normal(b.shape, CODEBOOK_STD))
    for layer in model.audio_encoder.quantizer.layers:
        cb = layer.codebook
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
        cb.inited.fill_(1.0)

    # T5 ties encoder.embed_tokens to shared; make sure it still holds.
    te = model.text_encoder
    assert te.encoder.embed_tokens.weight.data_ptr() == te.shared.weight.data_ptr()


# --------------------------------------------------------------------------------------------------------------------
# Independent reference loop (no KV cache, explicit delay pattern + CFG), used to cross-check HF generate
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_generate(model, input_ids, attention_mask, max_new_tokens, guidance_scale):
    K = model.decoder.num_codebooks
    stereo = model.decoder.config.audio_channels == 2
    kp = K // 2 if stereo else K
    delay = [k // 2 if stereo else k for k in range(K)]
    frames = max_new_tokens + 1 - kp

    enc = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    enc = model.enc_to_dec_proj(enc) * attention_mask[..., None].to(enc.dtype)
    enc_cfg = torch.cat([enc, torch.zeros_like(enc)], 0)
    mask_cfg = torch.cat([attention_mask, torch.zeros_like(attention_mask)], 0)

    cols = [[PAD] * K]
    step_logits = []
    for s in range(max_new_tokens):
        seq = torch.tensor(cols, dtype=torch.long).T  # [K, s+1]
        ids = torch.cat([seq, seq], 0)  # [2K, s+1]  (cond rows, then uncond rows)
        out = model.decoder(input_ids=ids, encoder_hidden_states=enc_cfg, encoder_attention_mask=mask_cfg)
        last = out.logits[:, -1, :]  # [2K, V]
        cond, uncond = last[:K], last[K:]
        logits = uncond + (cond - uncond) * guidance_scale
        step_logits.append(logits)
        tok = logits.argmax(-1)
        col = []
        for k in range(K):
            f = s - delay[k]
            col.append(int(tok[k]) if 0 <= f < frames else PAD)
        cols.append(col)
    seqs = torch.tensor(cols, dtype=torch.long).T  # [K, N+1]
    codes = torch.stack([seqs[k, 1 + delay[k] : 1 + delay[k] + frames] for k in range(K)])  # [K, frames]
    assert not (codes == PAD).any()
    return codes[None], step_logits, delay, frames


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    t = logits.topk(2, dim=-1).values
    return t[..., 0] - t[..., 1]


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def weight_norm_naming(keys) -> str:
    if any(k.endswith("parametrizations.weight.original0") for k in keys):
        return "parametrizations (conv.parametrizations.weight.original0 = g, .original1 = v)"
    if any(k.endswith("weight_g") for k in keys):
        return "legacy (conv.weight_g, conv.weight_v)"
    return "unknown"


@torch.no_grad()
def make_checkpoint(name: str, stereo: bool, seed: int, tok: Tokenizer) -> dict:
    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    config = build_config(vocab_size=tok.get_vocab_size(), stereo=stereo)

    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(config)
    model.eval()
    reinit(model, seed)
    assert model.enc_to_dec_proj is not None

    gen_cfg = GenerationConfig(
        decoder_start_token_id=PAD,
        pad_token_id=PAD,
        bos_token_id=PAD,
        do_sample=True,
        guidance_scale=GUIDANCE_SCALE,
        max_length=1500,
    )
    model.generation_config = gen_cfg

    K = model.decoder.num_codebooks
    channels = 2 if stereo else 1
    tensors: dict[str, torch.Tensor] = {}
    meta_prompts = []
    summary = {"name": name, "min_gap_valid": float("inf"), "min_gap_all": float("inf")}

    # capture the codes that generate() hands to EnCodec
    captured: list[torch.Tensor] = []
    orig_decode = model.audio_encoder.decode

    def hooked_decode(audio_codes, *args, **kwargs):
        captured.append(audio_codes.clone())
        return orig_decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = hooked_decode

    for i, (prompt, n_new) in enumerate(PROMPTS):
        enc = fast(prompt, return_tensors="pt", return_token_type_ids=False)
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
        assert int((input_ids == 2).sum()) == 0, f"unk token in {prompt!r}: {input_ids}"
        captured.clear()
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            guidance_scale=GUIDANCE_SCALE,
            max_new_tokens=n_new,
            return_dict_in_generate=True,
            output_scores=True,
        )
        audio = out.sequences.float()
        if stereo:
            assert len(captured) == 2
            left, right = captured[0][0], captured[1][0]  # [1, K/2, F]
            codes = torch.stack([left, right], dim=2).reshape(1, K, -1)  # interleave L0,R0,L1,R1,...
        else:
            assert len(captured) == 1
            codes = captured[0][0]  # [1, K, F]
        codes = codes.to(torch.int64)
        frames = n_new - 3
        assert codes.shape == (1, K, frames), codes.shape
        assert audio.shape == (1, channels, frames * SAMPLES_PER_FRAME), audio.shape
        scores = torch.stack(out.scores)  # [N, K, V]  (CFG-combined, batch 1)
        assert scores.shape == (n_new, K, 2048), scores.shape

        # independent re-implementation
        ref_codes, ref_logits, delay, ref_frames = reference_generate(
            model, input_ids, attention_mask, n_new, GUIDANCE_SCALE
        )
        assert ref_frames == frames
        assert torch.equal(ref_codes, codes), (ref_codes, codes)
        ref_logits = torch.stack(ref_logits)
        max_logit_diff = float((ref_logits - scores).abs().max())
        assert max_logit_diff < 1e-4, max_logit_diff
        # audio: decode independently
        if stereo:
            a_l = orig_decode(codes[None, :, 0::2], [None]).audio_values
            a_r = orig_decode(codes[None, :, 1::2], [None]).audio_values
            ref_audio = torch.cat([a_l, a_r], 1)
        else:
            ref_audio = orig_decode(codes[None], [None]).audio_values
        assert torch.allclose(ref_audio, audio, atol=1e-6), float((ref_audio - audio).abs().max())

        # top-2 gaps: every step, slots that are kept (valid) and all slots
        gaps = top2_gap(scores)  # [N, K]
        valid = torch.zeros_like(gaps, dtype=torch.bool)
        for s in range(n_new):
            for k in range(K):
                valid[s, k] = 0 <= s - delay[k] < frames
        min_valid = float(gaps[valid].min())
        min_all = float(gaps.min())
        summary["min_gap_valid"] = min(summary["min_gap_valid"], min_valid)
        summary["min_gap_all"] = min(summary["min_gap_all"], min_all)
        amax = float(audio.abs().max())
        assert 0.01 < amax < 10.0, amax
        repeat = float((codes[0, :, 1:] == codes[0, :, :-1]).float().mean())
        assert repeat <= MAX_REPEAT, repeat

        tensors[f"prompt{i}.input_ids"] = input_ids.to(torch.int64).contiguous()
        tensors[f"prompt{i}.codes"] = codes.contiguous()
        tensors[f"prompt{i}.audio"] = audio.contiguous()
        tensors[f"prompt{i}.first_step_logits"] = scores[0].float().contiguous()
        meta_prompts.append(
            {
                "prompt": prompt,
                "input_ids": input_ids[0].tolist(),
                "tokens": fast.convert_ids_to_tokens(input_ids[0].tolist()),
                "max_new_tokens": n_new,
                "frames": frames,
                "samples": frames * SAMPLES_PER_FRAME,
                "audio_max_abs": amax,
                "audio_rms": float(audio.pow(2).mean().sqrt()),
                "min_top2_gap_valid_slots": min_valid,
                "min_top2_gap_all_slots": min_all,
                "first_step_logits_abs_max": float(scores[0].abs().max()),
                "first_step_logits_std": float(scores[0].std()),
                "max_abs_diff_hf_vs_reference_loop_logits": max_logit_diff,
                "codes_adjacent_repeat_fraction": repeat,
                "codes": codes[0].tolist(),
            }
        )
        print(
            f"[{name}] prompt{i} {prompt!r}: ids={input_ids[0].tolist()} codes={tuple(codes.shape)} "
            f"audio={tuple(audio.shape)} max|x|={amax:.4f} min_gap(valid)={min_valid:.4f} min_gap(all)={min_all:.4f} "
            f"repeat={repeat:.2f}"
        )

    model.audio_encoder.decode = orig_decode

    encodec_meta = None
    if not stereo:
        g = torch.Generator().manual_seed(seed + 7)
        ecodes = torch.randint(0, 2048, (1, 4, 7), generator=g, dtype=torch.int64)
        eaudio = model.audio_encoder.decode(ecodes[None], [None]).audio_values.float()
        assert eaudio.shape == (1, 1, 7 * SAMPLES_PER_FRAME), eaudio.shape
        tensors["encodec.codes"] = ecodes.contiguous()
        tensors["encodec.audio"] = eaudio.contiguous()
        encodec_meta = {
            "codes_shape": list(ecodes.shape),
            "audio_shape": list(eaudio.shape),
            "audio_max_abs": float(eaudio.abs().max()),
            "call": "model.audio_encoder.decode(codes[None], [None]).audio_values",
        }

    # ---- save checkpoint
    model.save_pretrained(out_dir, safe_serialization=True)
    gen_cfg.save_pretrained(out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    fast.save_pretrained(out_dir / "_tok_tmp")
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(out_dir / "_tok_tmp" / f, out_dir / f)
    shutil.rmtree(out_dir / "_tok_tmp")

    # ---- reload check: the saved checkpoint reproduces the outputs
    reloaded = MusicgenForConditionalGeneration.from_pretrained(out_dir)
    reloaded.eval()
    re_fast = PreTrainedTokenizerFast(tokenizer_file=str(out_dir / "tokenizer.json"))
    for i, (prompt, n_new) in enumerate(PROMPTS):
        ids = re_fast(prompt, return_tensors="pt", return_token_type_ids=False)
        assert ids["input_ids"].tolist() == tensors[f"prompt{i}.input_ids"].tolist()
        a = reloaded.generate(**ids, do_sample=False, guidance_scale=GUIDANCE_SCALE, max_new_tokens=n_new)
        assert torch.allclose(a.float(), tensors[f"prompt{i}.audio"], atol=1e-6), "reload mismatch"

    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        weight_keys = sorted(f.keys())
        weight_meta = f.metadata()
    wn = weight_norm_naming(weight_keys)
    text_emb_keys = [
        k for k in ("text_encoder.shared.weight", "text_encoder.encoder.embed_tokens.weight") if k in weight_keys
    ]
    weight_dtypes = set()
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        for k in weight_keys:
            weight_dtypes.add(str(f.get_slice(k).get_dtype()))

    meta = {
        "description": "Reference outputs of transformers MusicgenForConditionalGeneration.generate "
        "(greedy, do_sample=False, guidance_scale=3.0) for this random tiny checkpoint.",
        "generated_by": "tools/make_fixtures.py",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "seed": seed,
        "stereo": stereo,
        "num_codebooks": K,
        "audio_channels": channels,
        "delays": delay,
        "guidance_scale": GUIDANCE_SCALE,
        "sampling_rate": 32000,
        "samples_per_frame": SAMPLES_PER_FRAME,
        "prompts": meta_prompts,
        "encodec": encodec_meta,
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()},
        "codes_layout": "int64 [batch=1, K, frames], after reverting the delay pattern (pad 2048 removed); "
        + ("stereo: codebooks interleaved [L0,R0,L1,R1,L2,R2,L3,R3]" if stereo else "mono: [q0,q1,q2,q3]"),
        "audio_layout": "float32 [batch=1, channels, frames*640]",
        "first_step_logits": "float32 [K, 2048]: CFG-combined logits (uncond + 3.0*(cond-uncond)) of decoder step 0 "
        "(outputs.scores[0], before argmax)",
        "weights": {
            "weight_norm_naming": wn,
            "text_embedding_keys": text_emb_keys,
            "dtypes": sorted(weight_dtypes),
            "num_tensors": len(weight_keys),
            "safetensors_metadata": weight_meta,
        },
        "min_top2_gap_valid_slots": summary["min_gap_valid"],
        "min_top2_gap_all_slots": summary["min_gap_all"],
    }
    save_file(tensors, str(out_dir / "expected.safetensors"), metadata={"generated_by": "tools/make_fixtures.py"})
    with open(out_dir / "expected.json", "w") as fh:
        json.dump(meta, fh, indent=2, ensure_ascii=False)
        fh.write("\n")

    summary.update(
        weight_norm=wn,
        text_emb_keys=text_emb_keys,
        weight_keys=weight_keys,
        tensors={k: (str(v.dtype), tuple(v.shape)) for k, v in tensors.items()},
    )
    return summary


def main() -> None:
    transformers.logging.set_verbosity_error()
    assert transformers.__version__ == "4.47.1", transformers.__version__
    assert torch.__version__.split("+")[0] == "2.5.1", torch.__version__
    torch.manual_seed(SEED_MONO)
    tok = build_tokenizer()
    summaries = [
        make_checkpoint("musicgen-tiny-mono", stereo=False, seed=SEED_MONO, tok=tok),
        make_checkpoint("musicgen-tiny-stereo", stereo=True, seed=SEED_STEREO, tok=tok),
    ]

    print()
    for s in summaries:
        print(f"== {s['name']}")
        print(f"  min top-2 gap: valid slots {s['min_gap_valid']:.5f}, all slots {s['min_gap_all']:.5f}")
        print(f"  weight-norm naming: {s['weight_norm']}")
        print(f"  text embedding keys: {s['text_emb_keys']}")
        wn_keys = [k for k in s["weight_keys"] if "parametrizations" in k or "weight_g" in k or "weight_v" in k]
        print(f"  weight-norm keys (first 4 of {len(wn_keys)}): {wn_keys[:4]}")
        for k, (dt, sh) in s["tensors"].items():
            print(f"  expected {k}: {dt} {sh}")
        assert s["min_gap_valid"] > MIN_GAP, s["min_gap_valid"]
    print()
    total = 0
    for p in sorted(FIXTURES.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.stat().st_size:>10,d}  {p.relative_to(ROOT)}")
    print(f"  {total:>10,d}  total under {FIXTURES.relative_to(ROOT)}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
