"""Build a small byte-level BPE text tokenizer with the Llama-3 chat tokens and the Higgs audio tokens.

The released Higgs tokenizer is Llama-3's (128k entries) with reserved special tokens renamed for audio. The tiny
one keeps the same special-token *names* and their relative order, placed right after a small BPE vocabulary, so
``prepare_chatml_sample`` and the collator see exactly the token strings they expect. The model config takes its
token ids from this tokenizer (see ``model.py``); nothing downstream hard-codes 128xxx ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from higgs_train.chatml import DEFAULT_SYSTEM_PROMPT as SYSTEM_PROMPT
from higgs_train.embedded.voices import SENTENCES

BASE_VOCAB_SIZE = 1024

# Order mirrors Llama-3.1 ids 128000..128016 (+ Higgs renames of reserved tokens 3..8).
SPECIAL_TOKENS: list[str] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|audio_out_bos|>",
    "<|recipient|>",
    "<|AUDIO|>",
    "<|AUDIO_OUT|>",
]


def training_corpus() -> list[str]:
    """A fixed English corpus: sample-data transcripts plus pangrams, so merges are stable across builds."""
    pangrams = [
        "The quick brown fox jumps over the lazy dog.",
        "Pack my box with five dozen liquor jugs.",
        "How vexingly quick daft zebras jump!",
        "Sphinx of black quartz, judge my vow.",
        "0123456789 , . ? ! ; : ' \" ( ) - ",
    ]
    return [SYSTEM_PROMPT, *SENTENCES, *pangrams] * 4


RELEASED_BASE_VOCAB_SIZE = 128000
RELEASED_VOCAB_SIZE = 128256


def _trained_bpe():
    """The byte-level BPE trained on ``training_corpus()`` (deterministic), without special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    return tokenizer


def _save_fast(tokenizer, out_dir: Path) -> Path:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def build_text_tokenizer_dir(out_dir: Path) -> Path:
    """Train the BPE deterministically and save it in ``AutoTokenizer`` format."""
    tokenizer = _trained_bpe()
    # Pad the base vocabulary to a fixed size so the special-token ids do not depend on how many merges exist.
    filler = [f"<|unused_{i}|>" for i in range(BASE_VOCAB_SIZE - tokenizer.get_vocab_size())]
    if filler:
        tokenizer.add_tokens(filler)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return _save_fast(tokenizer, out_dir)


def build_released_size_text_tokenizer_dir(out_dir: Path) -> Path:
    """The same BPE with the released tokenizer's size and special-token ids (``benchmarks/real_size.py``).

    The base vocabulary is padded to 128,000 with entries no merge produces (plain vocabulary, not added tokens:
    127k added tokens would make every load and every call slow), so ``<|begin_of_text|>`` is 128000 and
    ``<|AUDIO_OUT|>`` 128016 as released, and reserved special tokens fill the rest up to 128,256 entries: a model
    with the released embedding size and token ids takes it unchanged.
    """
    state = json.loads(_trained_bpe().to_str())
    vocab = state["model"]["vocab"]
    for i in range(RELEASED_BASE_VOCAB_SIZE - len(vocab)):
        vocab[f"<|unused_{i}|>"] = len(vocab)
    tokenizer = Tokenizer.from_str(json.dumps(state))
    reserved = RELEASED_VOCAB_SIZE - RELEASED_BASE_VOCAB_SIZE - len(SPECIAL_TOKENS)
    tokenizer.add_special_tokens(SPECIAL_TOKENS + [f"<|reserved_special_token_{3 + i}|>" for i in range(reserved)])
    return _save_fast(tokenizer, out_dir)
