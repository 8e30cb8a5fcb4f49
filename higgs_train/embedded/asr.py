"""A tiny, randomly initialised Whisper ASR checkpoint in the real on-disk format, for tests of ``--asr_model``.

No hub is reachable here, so the only Whisper that can be loaded is one built locally. It reuses the embedded
stack's parts: the byte-level BPE text tokenizer (as a ``WhisperTokenizerFast`` with Whisper's control tokens) and
the 128-mel feature extractor, with the tower widths of ``TINY_WHISPER_TOWER``. Its transcripts are meaningless;
it proves that the builder loads a local Whisper folder through transformers' pipeline and uses its output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from higgs_train.embedded.model import TINY_WHISPER_TOWER, save_whisper_feature_extractor
from higgs_train.embedded.text_tokenizer import build_text_tokenizer_dir

WHISPER_CONTROL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]


def build_tiny_whisper_asr(out_dir: Path, seed: int = 0) -> Path:
    """Save config, weights (safetensors), generation config, tokenizer and feature extractor to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

    out_dir = Path(out_dir)
    staging = out_dir / "_text_tokenizer"
    build_text_tokenizer_dir(staging)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(staging / "tokenizer.json"))
    shutil.rmtree(staging)
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_CONTROL_TOKENS})
    end = "<|endoftext|>"
    tokenizer.eos_token = tokenizer.pad_token = tokenizer.bos_token = tokenizer.unk_token = end
    ids = tokenizer.convert_tokens_to_ids
    tower = TINY_WHISPER_TOWER
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=tower["num_mel_bins"],
        encoder_layers=tower["encoder_layers"],
        decoder_layers=tower["encoder_layers"],
        encoder_attention_heads=tower["encoder_attention_heads"],
        decoder_attention_heads=tower["encoder_attention_heads"],
        encoder_ffn_dim=tower["encoder_ffn_dim"],
        decoder_ffn_dim=tower["encoder_ffn_dim"],
        d_model=tower["d_model"],
        max_source_positions=tower["max_source_positions"],
        max_target_positions=64,
        pad_token_id=ids(end),
        bos_token_id=ids(end),
        eos_token_id=ids(end),
        decoder_start_token_id=ids("<|startoftranscript|>"),
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids(end),
        pad_token_id=ids(end),
        no_timestamps_token_id=ids("<|notimestamps|>"),
        max_length=24,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    save_whisper_feature_extractor(out_dir)
    return out_dir
