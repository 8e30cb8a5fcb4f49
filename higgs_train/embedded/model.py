"""Build tiny ``HiggsAudioModel`` checkpoint directories with the released checkpoint's flags.

The released ``bosonai/higgs-audio-v2-generation-3B-base`` is a 28-layer Llama with an audio FFN in every layer
(``dual_ffn_fast_forward`` with all layers listed), no Whisper tower, prompt audio as codec codes and the delay
pattern. The tiny default keeps every one of those flags and shrinks only widths and depth. The ``whisper``
variant adds a small Whisper-style tower (``encode_whisper_embed=true``) so that conditioning path is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from higgs_train.embedded.marker import GENERATED_MARKER

TINY_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

HEAD_WEIGHT_SCALE = 4.0
"""Why the output heads are scaled: a random head (init std 0.02, rows of norm 0.32 at width 256) reads an
RMS-normalised hidden state of norm ~16, which caps every logit near 5 whatever the LoRA-adapted layers learn; at
width 64 (the first tiny model) the cap was 1.3 and the default job's audio loss stayed at ln 1026. A released
checkpoint's trained heads have no such cap; scaled rows let the frozen heads express what the adapters learn."""

RECOMMENDED_LEARNING_RATE = 2e-3
"""``--learning_rate 0`` (the default) takes this for the tiny model. Why 10x the released model's 2e-4: a LoRA
update's effect on a layer's output grows with the layer width (3072 released, 256 here), so the rate that adapts
the 3B model in a few hundred steps barely moves the tiny one in the default job's 30 (measured on the sample data,
3 epochs: val audio loss 7.74 -> 7.66 at 2e-4, -> 6.79 at 2e-3, accuracy 0.001 -> 0.017)."""

TINY_WHISPER_TOWER: dict[str, Any] = {
    "model_type": "higgs_audio_encoder",
    "num_mel_bins": 128,
    "encoder_layers": 1,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "d_model": 32,
    "max_source_positions": 1500,
}


def higgs_config_dict(tokenizer: Any, variant: str = "dac", text_overrides: dict[str, Any] | None = None) -> dict:
    """The HiggsAudioConfig fields for a tiny model whose token ids come from ``tokenizer``."""
    text_config = {**TINY_TEXT_CONFIG, **(text_overrides or {})}
    vocab = len(tokenizer)
    text_config["vocab_size"] = (vocab + 63) // 64 * 64
    ids = tokenizer.convert_tokens_to_ids
    text_config["bos_token_id"] = ids("<|begin_of_text|>")
    text_config["eos_token_id"] = ids("<|end_of_text|>")
    text_config["pad_token_id"] = ids("<|end_of_text|>")
    layers = text_config["num_hidden_layers"]
    whisper = variant == "whisper"
    cfg = {
        "text_config": text_config,
        "audio_adapter_type": "dual_ffn_fast_forward",
        "audio_dual_ffn_layers": list(range(layers)),
        "audio_ffn_hidden_size": text_config["hidden_size"],
        "audio_ffn_intermediate_size": text_config["intermediate_size"],
        "skip_audio_tower": not whisper,
        "encode_whisper_embed": whisper,
        "encode_audio_in_tokens": True,
        "use_delay_pattern": True,
        "audio_num_codebooks": 8,
        "audio_codebook_size": 1024,
        "audio_stream_bos_id": 1024,
        "audio_stream_eos_id": 1025,
        "audio_in_token_idx": ids("<|AUDIO|>"),
        "audio_out_token_idx": ids("<|AUDIO_OUT|>"),
        "audio_out_bos_token_id": ids("<|audio_out_bos|>"),
        "audio_eos_token_id": ids("<|audio_eos|>"),
        "pad_token_id": ids("<|end_of_text|>"),
    }
    if whisper:
        cfg["audio_encoder_config"] = dict(TINY_WHISPER_TOWER, pad_token_id=ids("<|end_of_text|>"))
    return cfg


def build_model_dir(
    out_dir: Path, tokenizer_dir: Path, variant: str = "dac", seed: int = 0, text_overrides: dict | None = None
) -> Path:
    """Initialise a seeded tiny HiggsAudioModel and save it with ``save_pretrained`` (config.json + safetensors)."""
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel
    from transformers import AutoTokenizer

    if variant not in ("dac", "whisper"):
        raise ValueError(f"model variant must be 'dac' or 'whisper', got {variant!r}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = HiggsAudioConfig(**higgs_config_dict(tokenizer, variant, text_overrides))
    torch.manual_seed(seed)
    model = HiggsAudioModel(config)
    with torch.no_grad():
        for head in (model.audio_decoder_proj.audio_lm_head, model.audio_decoder_proj.text_lm_head):
            head.weight.mul_(HEAD_WEIGHT_SCALE)
    model.save_pretrained(out_dir, safe_serialization=True)
    marker = {"variant": variant, "seed": seed, "recommended": {"learning_rate": RECOMMENDED_LEARNING_RATE}}
    (Path(out_dir) / GENERATED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    tokenizer.save_pretrained(out_dir)  # released checkpoints ship their tokenizer alongside
    return out_dir


def save_whisper_feature_extractor(out_dir: Path) -> None:
    """Save the 128-mel Whisper feature extractor the collator needs (as whisper-large-v3 uses) next to the model."""
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=128, sampling_rate=16000).save_pretrained(out_dir)
